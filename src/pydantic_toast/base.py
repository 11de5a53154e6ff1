"""`ExternalBaseModel` and `ExternalConfigDict`: the pydantic hooks, nothing else.

The hooks live in the model's core schema (a wrap serializer and a wrap validator), not in
Python-level `model_dump` overrides, so an external model nested in a plain model, a list, a
`TypeAdapter` or a FastAPI body becomes a reference there too. The work they do is in
`_writing.py` (the serializer) and `_loading.py` (the validator).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, Self, TypeAlias, TypeVar, overload
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    GetJsonSchemaHandler,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticSerializationError

from . import _loading, _pydantic_internals, _record_state, _writing, lifecycle
from ._record_state import PICKLED, RecordState, attach_state, peek_state, reset_state, state_of
from ._settings import ModelSettings, coerce_reference, settings_for, storage_names
from .encryption import KeySet
from .exceptions import ExternalStorageError, StorageValidationError
from .reference import ExternalReference
from .reference import is_external_reference as _is_reference
from .upgrades import UpgradeFunction, collect_upgrades
from .url import MaskedURL

__all__ = ["ExternalBaseModel", "ExternalConfigDict", "ReferenceLike"]

ReferenceLike: TypeAlias = ExternalReference | Mapping[str, Any] | UUID | str
"""What `Model.load` / `Model.delete` accept: a reference (object or dict) or a bare id."""


class ExternalConfigDict(ConfigDict, total=False):
    """A pydantic `ConfigDict` with pydantic-toast's keys; every pydantic key still works."""

    storage: str
    """Storage URL: 'sqlite:///toast.db', 'memory://', 'postgresql://…', 'redis://…', or a
    scheme registered with `register_backend`. Required."""

    storage_name: str
    """The `class_name` written in references and stored records. Default: the class name."""

    schema_version: int
    """Written with every save. Default 1."""

    timeout: float
    """Seconds one storage operation may take before `StorageConnectionError`. Default 30."""

    ttl: timedelta | None
    """Time to live of stored records, on backends that support expiry. Default: no expiry."""

    upgrade_write_back: bool
    """Store a record again at the current schema_version after upgrading it on load. Default False."""

    compression: str | None
    """Compress stored payloads with this codec ("zlib", or "zstd" with the `[zstd]` extra).
    Default None: plain JSON."""

    compression_min_size: int
    """With `compression`: payloads under this many bytes of JSON stay uncompressed. Default 512."""

    offload_threshold: int | None
    """Bytes of the model's JSON (before compression) at or below which a dump leaves the model
    inline, as its ordinary data, and writes nothing; above it the model is stored and dumps to its
    reference. An explicit `save()` always stores. Default None: always stored."""

    optimistic_concurrency: bool
    """Keep a revision number per record and refuse a save that would overwrite a change made since
    the instance loaded (or last wrote) it: `ConcurrentUpdateError`. Default False."""

    encryption: KeySet | None
    """Encrypt stored payloads with AES-256-GCM under this key set's current key (the
    `[encryption]` extra); every key of the set decrypts. Default None. See docs/security.md."""

    encryption_required: bool
    """With `encryption`: refuse a record stored without encryption (`RecordIntegrityError`).
    Default True; False only while an existing store is being encrypted with `rotate-keys`."""
    content_addressed: bool
    """Make the record's id a hash of its data (SHA-256, a version-8 UUID): equal models share one
    record, an unchanged re-dump writes nothing, a load refuses data that does not hash to its id
    (`RecordIntegrityError`), and a changed model dumps to a new id. Not with
    optimistic_concurrency, upgrade_write_back or encryption. Default False. See docs/toast-fields.md."""

    warn_size: int | None
    """Log a WARNING (logger 'pydantic_toast') when a save stores a record whose data, as JSON before
    compression or encryption, is larger than this many bytes. Default None: no warning."""

    max_size: int | None
    """Refuse to save a record whose data, as JSON before compression or encryption, is larger than
    this many bytes: `StorageValidationError` before any I/O, and nothing of that dump is written.
    Default None: no limit."""


_M = TypeVar("_M", bound="ExternalBaseModel")


class _DeleteByReference(Protocol):
    def __call__(self, reference: ReferenceLike, /, *, cascade: bool = False) -> Awaitable[bool]: ...


class _DeleteInstance(Protocol):
    def __call__(self, *, cascade: bool = False) -> Awaitable[bool]: ...


class _DeleteMethod(Generic[_M]):
    """`await model.delete()` on an instance, `await Model.delete(ref_or_id)` on the class.

    `cascade=True` also deletes the external models the stored record refers to, at every depth
    (`lifecycle.delete_tree`).
    """

    @overload
    def __get__(self, instance: None, owner: type[_M]) -> _DeleteByReference: ...

    @overload
    def __get__(self, instance: _M, owner: type[_M]) -> _DeleteInstance: ...

    def __get__(self, instance: _M | None, owner: type[_M]) -> _DeleteByReference | _DeleteInstance:
        if instance is None:

            async def delete_by_reference(reference: ReferenceLike, *, cascade: bool = False) -> bool:
                return await lifecycle.adelete(owner, reference, cascade=cascade)

            return delete_by_reference

        async def delete_instance(*, cascade: bool = False) -> bool:
            return await lifecycle.adelete(instance, cascade=cascade)

        return delete_instance


class ExternalBaseModel(BaseModel):
    """A model whose data lives in external storage; it dumps to a small reference.

    `model_dump()` / `model_dump_json()` store the data (upsert) and return
    `{"class_name": ..., "id": ...}`; `model_validate(reference)` loads it back. The async API
    (`await m.save()`, `await Model.load(ref)`, `await m.delete()`) runs on the caller's loop.
    """

    # Stored data must round-trip exactly: arbitrary bytes as base64, non-finite floats as text.
    model_config = ExternalConfigDict(
        ser_json_bytes="base64",
        val_json_bytes="base64",
        ser_json_inf_nan="strings",
        ignored_types=(_DeleteMethod,),
    )

    __toast_settings__: ClassVar[ModelSettings]
    __toast_upgrades__: ClassVar[dict[int, UpgradeFunction]]

    # The record this instance is (see _record_state): a slot, not a private attribute, whose
    # dict would cost more per loaded model than the state it holds.
    __slots__ = ("_toast_state",)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _refuse_own_model_serializer(cls)
        if cls.model_config.get("storage") is None:
            # An abstract base (shared fields of several external models): no settings, so
            # storing or loading it raises, naming the fix.
            return
        cls.__toast_settings__ = settings_for(cls)
        cls.model_config["storage"] = MaskedURL(cls.model_config["storage"])
        try:
            cls.__toast_upgrades__ = collect_upgrades(cls, cls.__toast_settings__.schema_version)
        except StorageValidationError as exc:
            raise StorageValidationError(
                f"{cls.__qualname__}: {exc}", expected=exc.expected, actual=exc.actual
            ) from None

    @model_serializer(mode="wrap")
    def _toast_serialize(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        try:
            return _writing.serialize(self, handler, info)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                # Ctrl-C, SystemExit: pydantic would turn them into a PydanticSerializationError;
                # the entry points re-raise them as themselves.
                _writing.remember_serializer_error(exc)
            raise

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Describe the wire: a dump is a reference; validation takes a reference or full data.
        names = storage_names(cls)
        class_name: dict[str, Any] = {"type": "string"}
        if len(names) == 1:
            class_name["const"] = names[0]
        elif names:
            class_name["enum"] = names
        title = cls.model_config.get("title") or cls.__name__
        reference: dict[str, Any] = {
            "type": "object",
            "properties": {"class_name": class_name, "id": {"type": "string", "format": "uuid"}},
            "required": ["class_name", "id"],
            "additionalProperties": False,
        }
        settings: ModelSettings | None = cls.__dict__.get("__toast_settings__")
        if handler.mode == "serialization":
            if settings is None or settings.offload_threshold is None:
                return {**reference, "title": title}
            # offload_threshold: a small model dumps to its own data.
            data = handler.resolve_ref_schema(handler(_pydantic_internals.data_schema(core_schema)))
            return {"anyOf": [{**reference, "title": f"{title}Reference"}, dict(data)], "title": title}
        full = handler.resolve_ref_schema(handler(core_schema))
        if "__toast_settings__" not in cls.__dict__:
            return full  # an abstract base (no storage) validates from full data only
        return {"anyOf": [{**reference, "title": f"{title}Reference"}, dict(full)], "title": title}

    @model_validator(mode="wrap")
    @classmethod
    def _toast_validate(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        return _loading.validate(cls, value, handler, info)

    # ------------------------------------------------------------------ async API

    async def save(self) -> ExternalReference:
        """Store this model (insert or update) on the running loop; return its reference."""
        return await _writing.save(self)

    @classmethod
    async def load(cls, reference: ReferenceLike, *, context: Any = None) -> Self:
        """Load the model a reference (object, dict, UUID or id text) points at.

        `context` reaches the validators of every model loaded, as with `model_validate`.
        """
        if type(reference) is not ExternalReference:  # (an ExternalReference is taken as it is)
            reference = coerce_reference(cls, reference)
        return await _loading.load(cls, reference, context)

    @classmethod
    async def save_many(cls, models: Iterable[ExternalBaseModel]) -> list[ExternalReference]:
        """Store several models (and the external models they hold): one batch per backend."""
        batch = list(models)
        for model in batch:
            if not isinstance(model, ExternalBaseModel):
                raise StorageValidationError(
                    f"save_many() takes external models, got {type(model).__name__}",
                    expected="ExternalBaseModel",
                    actual=type(model).__name__,
                )
        return await _writing.save_many(batch)

    @classmethod
    async def load_many(cls, references: Iterable[ReferenceLike], *, context: Any = None) -> list[Self]:
        """Load several models in order, batched per backend and per level of nesting.

        Every missing id is reported together in one `RecordNotFoundError`.
        """
        batch = [ref if type(ref) is ExternalReference else coerce_reference(cls, ref) for ref in references]
        return await _loading.load_many(cls, batch, context)

    delete: ClassVar[_DeleteMethod[Any]] = _DeleteMethod()

    # ------------------------------------------------------------------ the upstream project's API
    # nurikk/pydantic-toast's explicit calls, so its users switch by changing an import. Thin
    # wrappers over save/load above; their references are plain dicts, as there.

    async def save_external(self) -> dict[str, str]:
        """Store this model (always, whatever its size) and return its reference as a plain dict:
        `{"class_name": ..., "id": "<uuid>"}`, ready for `json.dumps`."""
        return (await _writing.save(self)).as_dict()

    def save_external_sync(self) -> dict[str, str]:
        """`save_external` for sync code (also inside a running event loop)."""
        return _writing.save_sync(self).as_dict()

    @classmethod
    async def load_external(cls, reference: ReferenceLike, *, context: Any = None) -> Self:
        """Load the model a reference (dict, `ExternalReference`, UUID or id text) points at."""
        return await cls.load(reference, context=context)

    @classmethod
    def load_external_sync(cls, reference: ReferenceLike, *, context: Any = None) -> Self:
        """`load_external` for sync code (also inside a running event loop)."""
        return _loading.load_blocking(cls, coerce_reference(cls, reference), context)

    @staticmethod
    def is_external_reference(data: object) -> bool:
        """Whether `data` has a reference's shape (`pydantic_toast.is_external_reference`)."""
        return _is_reference(data)

    @property
    def external_reference(self) -> ExternalReference | None:
        """The reference of the record this instance is, or None if it was never saved or loaded."""
        record_id = state_of(self).id
        if record_id is None:
            return None
        return ExternalReference(class_name=type(self).__toast_settings__.storage_name, id=record_id)

    # ------------------------------------------------------------------ pydantic entry points
    # Only to surface the library's exceptions unwrapped; the work happens in the hooks above.

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        _writing.clear_serializer_error()
        try:
            return super().model_dump(**kwargs)
        except PydanticSerializationError:
            _raise_original()
            raise

    def model_dump_json(self, **kwargs: Any) -> str:
        _writing.clear_serializer_error()
        try:
            return super().model_dump_json(**kwargs)
        except PydanticSerializationError:
            _raise_original()
            raise

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            _raise_unwrapped(exc)
            raise

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        # Full data is validated again as JSON below our hook, out of pydantic's sight of these.
        flags = {name: kwargs[name] for name in _JSON_FLAGS if kwargs.get(name) is not None}
        token = _loading.json_options.set(flags or None)
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as exc:
            _raise_unwrapped(exc)
            raise
        finally:
            _loading.json_options.reset(token)

    @classmethod
    def model_validate_strings(cls, obj: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate_strings(obj, **kwargs)
        except ValidationError as exc:
            _raise_unwrapped(exc)
            raise

    # A copy is a new record: two instances sharing an id would silently overwrite each other.
    # Pickling keeps the id: it moves the same record to another process.

    def __copy__(self) -> Self:
        copied = super().__copy__()
        reset_state(copied)
        return copied

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        copied = super().__deepcopy__(memo)
        reset_state(copied)
        return copied

    # Pickles carry the state among the private attributes, where versions before the slot kept
    # it: a pickle of either reads in the other.

    def __getstate__(self) -> dict[Any, Any]:
        pickled = super().__getstate__()
        state = peek_state(self)
        if state is not None:
            pickled["__pydantic_private__"] = {**(pickled["__pydantic_private__"] or {}), PICKLED: state}
        return pickled

    def __setstate__(self, pickled: dict[Any, Any]) -> None:
        private = pickled.get("__pydantic_private__")
        state = None
        if private and PICKLED in private:
            private = dict(private)
            state = private.pop(PICKLED)
            if not private and not type(self).__private_attributes__:
                private = None  # as pydantic leaves a model without private attributes
            pickled = {**pickled, "__pydantic_private__": private}
        super().__setstate__(pickled)
        if isinstance(state, RecordState):
            attach_state(self, state)


_record_state.bind_slot(ExternalBaseModel)
# Lets _pydantic_internals recognise our validator among the user's own in the core schema.
ExternalBaseModel._toast_validate.__func__.__toast_hook__ = True
_pydantic_internals.install(ExternalBaseModel)


_JSON_FLAGS = ("strict", "extra", "by_alias", "by_name")


def _refuse_own_model_serializer(cls: type[ExternalBaseModel]) -> None:
    """Pydantic keeps one model serializer per class: a user's would silently replace ours."""
    ours = _pydantic_internals.model_serializers(ExternalBaseModel)["_toast_serialize"]
    for name, function in _pydantic_internals.model_serializers(cls).items():
        if function is not ours:
            raise StorageValidationError(
                f"{cls.__qualname__}: @model_serializer {name!r} would replace pydantic-toast's own "
                "serializer (which stores the data and returns the reference), so nothing would be "
                "stored; shape single fields with @field_serializer, or put the model_serializer on a "
                "plain model that holds this one",
                expected="no @model_serializer on an external model",
                actual=name,
            )


def _raise_original() -> None:
    original = _writing.take_serializer_error()
    if original is not None:
        # Keep the original's own cause (a driver error, say); drop pydantic's wrapper.
        raise original from original.__cause__


def _raise_unwrapped(exc: ValidationError) -> None:
    """A bad top-level reference is reported as the library's own exception, not wrapped."""
    errors = exc.errors()
    if len(errors) == 1 and not errors[0]["loc"]:
        original = (errors[0].get("ctx") or {}).get("error")
        if isinstance(original, ExternalStorageError):
            raise original from original.__cause__


if TYPE_CHECKING:
    _check: type[BaseModel] = ExternalBaseModel
