"""`Toast(...)`: offload one field's value (or any `TypeAdapter`'s) to a store, content-addressed.

`Annotated[str, Toast(storage="sqlite:///blobs.db", threshold=4096)]` in a plain model, a
dataclass or a TypedDict: a dump stores the value (when its JSON is longer than `threshold`
bytes, or always without one) and puts a reference in its place; validation resolves the
reference and still accepts the full value.

**The reference shape** is an object with the single key `"$toast"`:
`{"$toast": {"class_name": "str", "id": "<uuid>", "digest": "<64 hex>"}}`. Validation reads a
field's value as a reference exactly when it is an object whose only key is `"$toast"`; anything
else is the value itself. A value that would dump inline with that exact shape (a `dict[str, Any]`
or `Any` field holding `{"$toast": ...}`) is never written inline: it is stored whatever the
threshold, so its dump is a reference and it comes back as itself. No dump is ever misread.

**Records** are content-addressed (see `_content.py`): the id is derived from the value's JSON,
identical values share one record, and a dump of a value this process already stored or loaded
writes nothing. A record's data is `{"value_json": "<the value's JSON text>"}`: the value kept as
text, so the bytes that were hashed come back byte for byte from every store (PostgreSQL's
`jsonb` would reorder the keys of an object), whatever their type (a record's data must be an
object). Compression goes through the codec stage like a model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, cast, get_args, get_origin
from uuid import UUID

import pydantic_core
from pydantic import ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, PydanticUserError, TypeAdapter
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticSerializationError, core_schema

from . import _content, _loading, _writing, codecs, lifecycle
from ._pydantic_internals import json_schema_metadata, schema_holds_references, surrounding_json_config
from ._settings import DEFAULT_TIMEOUT, ModelSettings, check_threshold, check_timeout
from .exceptions import StorageValidationError, StoredDataError
from .reference import ExternalReference, parse_id
from .registry import backend_class
from .url import StorageURL

if TYPE_CHECKING:
    from pydantic import (
        SerializationInfo,
        SerializerFunctionWrapHandler,
        ValidationInfo,
        ValidatorFunctionWrapHandler,
    )

    from .backends.base import StoredRecord

__all__ = ["MARKER", "Toast", "ToastField", "is_marked", "is_reference", "type_name"]

MARKER = "$toast"
"""The one key of a Toast reference object."""

_VALUE_KEY = "value_json"
_MAX_NAME = 200
# Stored values must round-trip exactly: arbitrary bytes as base64, non-finite floats as text.
_ROUND_TRIP = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64", ser_json_inf_nan="strings")


@dataclass(frozen=True, slots=True)
class Toast:
    """Store a field's value (or a `TypeAdapter`'s whole value) in a store; dump a reference.

    Args:
        storage: the storage URL, as for `ExternalConfigDict(storage=...)`.
        threshold: bytes of the value's JSON at or below which it stays inline (nothing stored).
            None (default): always stored.
        compression: a compressing codec's name ("zlib", ...) applied where it makes the record
            smaller, or None.
        name: the `class_name` of its records. Default: the field type's name ("str",
            "list[Product]"); records of one name are shared by every field of that name.
        timeout: seconds one storage operation may take.
    """

    storage: str
    threshold: int | None = None
    compression: str | None = None
    name: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    _url: StorageURL = field(init=False, repr=False, compare=False)
    _codec: codecs.Pipeline | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            url = StorageURL.parse(self.storage)
            backend = backend_class(url.scheme)
            check_url = getattr(backend, "check_url", None)
            if callable(check_url):
                check_url(url)
            check_threshold("threshold", self.threshold)
            check_timeout(self.timeout)
            if self.name is not None:
                _check_name(self.name)
            codec = codecs.pipeline_for({"compression": self.compression})
        except StorageValidationError as exc:
            raise StorageValidationError(
                f"Toast(...): {exc}", expected=exc.expected, actual=exc.actual
            ) from None
        object.__setattr__(self, "_url", url)
        object.__setattr__(self, "_codec", codec)

    def __repr__(self) -> str:
        return (
            f"Toast(storage={self._url.masked!r}, threshold={self.threshold!r}, "
            f"compression={self.compression!r}, name={self.name!r})"
        )

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        inner = handler(source)
        toast_field = ToastField(self, source, surrounding_json_config(handler))
        return core_schema.with_info_wrap_validator_function(
            toast_field.validator(),
            inner,
            serialization=core_schema.wrap_serializer_function_ser_schema(
                toast_field.serialize, info_arg=True, schema=inner
            ),
            metadata=json_schema_metadata(toast_field.json_schema),
        )

    @staticmethod
    def forget_stored() -> None:
        """Forget which content records this process knows to be stored (see docs: deleting)."""
        _content.forget_stored()


def _reference_schema(name: str) -> dict[str, Any]:
    class_name: dict[str, Any] = {"type": "string", "const": name}
    return {
        "type": "object",
        "title": "ToastReference",
        "properties": {
            MARKER: {
                "type": "object",
                "properties": {
                    "class_name": class_name,
                    "id": {"type": "string", "format": "uuid"},
                    "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                },
                "required": ["class_name", "id"],
                "additionalProperties": False,
            }
        },
        "required": [MARKER],
        "additionalProperties": False,
    }


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or ":" in name or len(name) > _MAX_NAME:
        raise StorageValidationError(
            f"a Toast storage name must be a non-empty string of at most {_MAX_NAME} characters without "
            f"':', got {name!r}; pass Toast(name='...')",
            expected="name",
            actual=name,
        )
    return name


def type_name(tp: Any) -> str:
    """A readable name for a type: 'str', 'list[Product]', 'dict[str, Product]', 'int | None'."""
    if tp is None or tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Union or origin is UnionType:
        return " | ".join(type_name(arg) for arg in args)
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is None:
        return str(getattr(tp, "__name__", None) or repr(tp))
    base = str(getattr(origin, "__name__", None) or repr(origin))
    if not args:
        return base
    return f"{base}[{', '.join(type_name(arg) for arg in args)}]"


_REFERENCE_KEYS = frozenset({"class_name", "id", "digest"})


def is_marked(value: object) -> bool:
    """Whether a dumped value has the reference's shape: an object whose only key is "$toast".

    Such a value is never dumped inline (it is stored), so no dump is read back as a reference.
    """
    return isinstance(value, Mapping) and len(value) == 1 and MARKER in value


def is_reference(value: object) -> bool:
    """Whether a field's input is read as a Toast reference: an object whose only key is "$toast",
    holding an object with "class_name" and "id" (and optionally "digest") and nothing else."""
    if not is_marked(value):
        return False
    assert isinstance(value, Mapping)
    inner = value[MARKER]
    return (
        isinstance(inner, Mapping)
        and "class_name" in inner
        and "id" in inner
        and inner.keys() <= _REFERENCE_KEYS
    )


class ToastField:
    """One `Toast(...)` applied to one type: its records' settings, and the hooks pydantic calls."""

    def __init__(self, toast: Toast, source: Any, config: dict[str, Any] | None = None) -> None:
        self.toast = toast
        self.source = source
        # The config around the field: what inline values' JSON means (see `_inline_value`).
        self._config = cast(ConfigDict, dict(config or {}))
        self._inline: tuple[TypeAdapter[Any], bool] | None = None
        try:
            name = toast.name if toast.name is not None else _check_name(type_name(source))
        except StorageValidationError as exc:
            raise StorageValidationError(
                f"Toast(...) on {source!r}: {exc}", expected=exc.expected, actual=exc.actual
            ) from None
        self.name = name
        self.settings = ModelSettings(
            url=toast._url,
            storage_name=name,
            schema_version=1,
            timeout=float(toast.timeout),
            codec=toast._codec,
        )
        self._stored: tuple[TypeAdapter[Any], bool] | None = None
        self._holds: bool | None = None
        # `gc` must know these records (no model class names them) and what they refer to.
        lifecycle.register_stored_kind(self.settings.url, name, self._references_in)

    def _references_in(self, record: StoredRecord) -> list[lifecycle.StoredReference]:
        return lifecycle.collect_references(lambda: self.read(record, None))

    @property
    def adapter(self) -> TypeAdapter[Any]:
        """The field's type on its own (built on first use, when forward references resolve)."""
        return self._storage()[0]

    def _storage(self) -> tuple[TypeAdapter[Any], bool]:
        """The adapter stored values are written and read with, and whether it holds the type one
        level down (in a one-item list)."""
        storage = self._stored
        if storage is None:
            storage = self._stored = _adapter_for(self.source, _ROUND_TRIP)
        return storage

    def _inline_value(self, value: Any, context: Any) -> Any:
        """An inline value met in JSON mode, validated as JSON with the config around the field.

        A wrap validator is handed JSON input as Python objects, and validating those in Python
        mode would change what the JSON means (base64 bytes read as text, strict datetimes
        refused); the typed result then goes through the field's schema like a loaded value.
        """
        inline = self._inline
        if inline is None:
            inline = self._inline = _adapter_for(self.source, self._config)
        adapter, listed = inline
        data = pydantic_core.to_json(value)
        if listed:
            return adapter.validate_json(b"[" + data + b"]", context=context)[0]
        return adapter.validate_json(data, context=context)

    def json_schema(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # Describe the wire: a reference, or the value itself where it may travel inline.
        value = handler(schema)
        reference = _reference_schema(self.name)
        if handler.mode == "serialization" and self.toast.threshold is None:
            return reference
        return {"anyOf": [reference, value]}

    # ------------------------------------------------------------------ writing

    def _json(self, value: Any) -> bytes:
        """The value's JSON as stored; a value that does not match the type is refused."""
        _writing.clear_serializer_error()
        try:
            adapter, listed = self._storage()
            if listed:
                return adapter.serializer.to_json([value], round_trip=True, warnings="error")[1:-1]
            return adapter.serializer.to_json(value, round_trip=True, warnings="error")
        except PydanticSerializationError:
            if _writing.pending_serializer_error():
                raise  # a nested external model's own error, re-raised by the entry point
            # The message quotes the value itself: name the type only.
            raise _failed(
                StorageValidationError(
                    f"a Toast({self.name}) value does not match its declared type, so it would not load "
                    "back; assign a valid value",
                    expected=self.name,
                    actual=type(value).__name__,
                )
            ) from None

    def reference_of(self, value: Any, data: bytes | None = None, *, write: bool = True) -> dict[str, Any]:
        """Store `value` (unless `write` is False) and return its reference object."""
        digest = b""

        def encode() -> tuple[UUID, bytes]:
            nonlocal digest
            raw = data if data is not None else self._json(value)
            digest = _content.content_digest(self.name, raw)
            stored = b'{"' + _VALUE_KEY.encode() + b'":' + pydantic_core.to_json(raw.decode()) + b"}"
            return _content.content_id(digest), stored

        if write:
            reference = _writing.store_value(self.settings, encode)
        else:
            record_id, _ = encode()
            reference = ExternalReference.trusted(self.name, record_id)
        return {MARKER: {"class_name": reference.class_name, "id": str(reference.id), "digest": digest.hex()}}

    def serialize(self, value: Any, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        mode = _writing.context_mode(info.context)
        if mode == "inline":
            return handler(value)
        data: bytes | None = None
        threshold = self.toast.threshold
        if threshold is not None:
            data = self._json(value)
            if len(data) <= threshold:
                inline = handler(value)
                if not is_marked(inline):
                    return inline
                # Shaped like a reference: stored, so that it is never misread (see the module doc).
        if data is not None and self._may_hold_models():
            data = None  # encoded again inside the write set: its models are this record's children
        return self.reference_of(value, data, write=mode != "reference")

    def _may_hold_models(self) -> bool:
        if self._holds is None:
            self._holds = schema_holds_references(self.adapter.core_schema)
        return self._holds

    # ------------------------------------------------------------------ reading

    def validator(self) -> Any:
        def validate_toast(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
            if not is_reference(value):
                if info.mode == "json":
                    value = self._inline_value(value, info.context)
                return handler(value)
            reference, expected = self.parse(value[MARKER])
            loaded = _loading.load_value_sync(self.reader(expected), reference, info.context)
            if loaded is _loading.PENDING:
                return loaded
            # The stored value was read with the type alone; the constraints around it apply too.
            return handler(loaded)

        validate_toast.__toast_value_hook__ = True  # type: ignore[attr-defined]
        return validate_toast

    def parse(self, value: object) -> tuple[ExternalReference, bytes | None]:
        """Check an untrusted reference before any I/O."""
        if not isinstance(value, Mapping):
            raise StorageValidationError(
                "a Toast reference is {'class_name': ..., 'id': ..., 'digest': ...}, "
                f"got {type(value).__name__}",
                expected=sorted(_REFERENCE_KEYS),
                actual=type(value).__name__,
            )
        class_name = value["class_name"]
        if class_name != self.name:
            raise StorageValidationError(
                f"Toast reference is for {str(class_name)[:80]!r} but this field stores {self.name!r}; "
                "pass it to the field it was dumped from",
                expected=self.name,
                actual=str(class_name)[:80],
            )
        expected: bytes | None = None
        digest = value.get("digest")
        if digest is not None:
            try:
                if not isinstance(digest, str) or len(digest) != 2 * _content.DIGEST_SIZE:
                    raise ValueError
                expected = bytes.fromhex(digest)
            except ValueError:
                raise StorageValidationError(
                    "a Toast reference's digest must be 64 hexadecimal characters",
                    expected="hex digest",
                    actual=type(digest).__name__,
                ) from None
        return ExternalReference.trusted(self.name, parse_id(value["id"])), expected

    def reader(self, expected: bytes | None) -> _Reader:
        """What the loader reads one reference's record with (`expected`: the digest it carries)."""
        return _Reader(self, expected)

    def read(self, record: StoredRecord, context: Any, expected: bytes | None = None) -> Any:
        raw = self.verified_json(record, expected)
        adapter, listed = self._storage()
        if listed:
            return adapter.validate_json(b"[" + raw + b"]", by_alias=False, by_name=True, context=context)[0]
        return adapter.validate_json(raw, by_alias=False, by_name=True, context=context)

    def verified_json(self, record: StoredRecord, expected: bytes | None) -> bytes:
        """The value's JSON a record holds, checked against its content id (and digest)."""
        data = codecs.decode(record)
        try:
            text = pydantic_core.from_json(data)[_VALUE_KEY]
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            raise StoredDataError.whole_record(
                record.class_name,
                record.id,
                f"is not a Toast value record (expected {{{_VALUE_KEY!r}: <JSON text>}}); "
                "repair or delete it",
                "toast_record",
            ) from None
        raw = text.encode()
        _content.verify(self.name, record.id, raw, expected)
        _content.remember([(self.settings.url.raw, record.id.int, record.class_name)])
        return raw

    def failure(self, record: StoredRecord, exc: pydantic_core.ValidationError) -> StoredDataError:
        errors = [
            {
                "loc": tuple(part if isinstance(part, int) else "<key>" for part in line["loc"]),
                "type": line["type"],
            }
            for line in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        kinds = ", ".join(sorted({str(error["type"]) for error in errors}))
        return StoredDataError(
            f"stored {record.class_name} record {record.id} does not validate as {self.name}: "
            f"{len(errors)} error(s) ({kinds}); the field's type changed since it was stored, or the "
            "record was edited: give the new type another Toast(name=...), or repair the record",
            class_name=record.class_name,
            id=record.id,
            errors=errors,
        )


def _adapter_for(source: Any, config: ConfigDict) -> tuple[TypeAdapter[Any], bool]:
    """A TypeAdapter of `source` with `config`, and whether it holds `source` one level down.

    Models, dataclasses and TypedDicts refuse a config given for them; one level down (in a
    one-item list), dataclasses and TypedDicts without a config of their own take it, and models
    keep theirs, as they do inside any other model.
    """
    try:
        return TypeAdapter(source, config=config), False
    except PydanticUserError:
        listed: Any = list
        return TypeAdapter(listed[source], config=config), True


class _Reader:
    """A field reading one reference: the digest that reference carries goes along."""

    __slots__ = ("expected", "field")

    def __init__(self, toast_field: ToastField, expected: bytes | None) -> None:
        self.field = toast_field
        self.expected = expected

    @property
    def settings(self) -> ModelSettings:
        return self.field.settings

    def read(self, record: StoredRecord, context: Any) -> Any:
        return self.field.read(record, context, self.expected)

    def failure(self, record: StoredRecord, exc: pydantic_core.ValidationError) -> StoredDataError:
        return self.field.failure(record, exc)


def _failed(exc: BaseException) -> BaseException:
    _writing.remember_serializer_error(exc)
    return exc
