"""Turning models into stored records and back, and collecting the writes of one dump.

`base.py` only hooks pydantic; everything those hooks do lives here:

* `serialize` (the model's wrap serializer) adds the model to the current `WriteSet` and returns
  its reference. A top-level dump owns the write set and flushes it before returning, so every
  external model reached by one dump, at any depth, is written in one batch per backend.
* `validate` (the model's wrap validator) recognises a reference, checks it before any I/O and
  loads the record; anything else validates as ordinary pydantic data.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast
from uuid import UUID, uuid4

import pydantic_core
from pydantic import BaseModel, TypeAdapter, ValidationInfo, ValidatorFunctionWrapHandler
from pydantic_core import PydanticSerializationError, SchemaSerializer, SchemaValidator, core_schema

from . import forksafe, runtime
from .backends.base import StoredRecord
from .exceptions import ExternalStorageError, RecordNotFoundError, StorageValidationError
from .reference import ExternalReference, looks_like_reference, parse_id, parse_reference
from .registry import backend_class, known_schemes
from .upgrades import upgraded_data
from .url import StorageURL

if TYPE_CHECKING:
    from pydantic import SerializationInfo, SerializerFunctionWrapHandler

    from .base import ExternalBaseModel

__all__ = ["CONTEXT_KEY", "ModelSettings", "RecordState", "WriteSet"]

M = TypeVar("M", bound="ExternalBaseModel")

CONTEXT_KEY = "pydantic_toast"
"""Serialization context key: {"pydantic_toast": "inline"} dumps full data without storing;
{"pydantic_toast": "reference"} returns the reference of an already stored model without writing."""

DEFAULT_TIMEOUT = 30.0
_STATE = "_toast_record"


@dataclass(slots=True, eq=False)
class RecordState:
    """Which stored record an instance is. Kept in a private attribute.

    It compares equal to any other state so that pydantic's `==` stays about field values: a
    restored model equals the one that was dumped, whatever their record bookkeeping.
    """

    id: UUID | None = None
    created_at: datetime | None = None
    _reference: ExternalReference | None = None

    def reference(self, storage_name: str) -> ExternalReference:
        """The reference to this record, built once: dumps return it on every call."""
        assert self.id is not None
        cached = self._reference
        if cached is None or cached.id != self.id or cached.class_name != storage_name:
            cached = self._reference = ExternalReference.trusted(storage_name, self.id)
        return cached

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordState)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """An external model class's validated configuration."""

    url: StorageURL
    storage_name: str
    schema_version: int
    timeout: float
    ttl: timedelta | None = None
    upgrade_write_back: bool = False
    dict_references: bool = True


def settings_for(cls: type[ExternalBaseModel]) -> ModelSettings:
    """Validate the class's `ExternalConfigDict` at class definition, naming the class on error."""
    config = cast(Mapping[str, Any], cls.model_config)
    name = cls.__qualname__
    storage = config.get("storage")
    try:
        if storage is None:
            raise StorageValidationError(
                "no storage configured; add model_config = ExternalConfigDict(storage='sqlite:///toast.db') "
                f"or another URL (known schemes: {', '.join(known_schemes())})",
                expected="storage URL",
                actual=None,
            )
        url = StorageURL.parse(storage)
        backend = backend_class(url.scheme)
        # Duck-typed backends registered without subclassing StorageBackend may lack the hook.
        check_url = getattr(backend, "check_url", None)
        if callable(check_url):
            check_url(url)
        storage_name = config.get("storage_name", cls.__name__)
        if any(storage_name == _declared_name(base) for base in cls.__mro__[1:]):
            # Inherited from a parent's config: a subclass is a class of its own in the store.
            storage_name = cls.__name__
        if (
            not isinstance(storage_name, str)
            or not storage_name
            or ":" in storage_name
            or len(storage_name) > 200
        ):
            raise StorageValidationError(
                f"storage_name {storage_name!r} must be a non-empty string of at most 200 characters "
                "without ':'",
                expected="name",
                actual=storage_name,
            )
        schema_version = config.get("schema_version", 1)
        if not isinstance(schema_version, int) or isinstance(schema_version, bool) or schema_version < 1:
            raise StorageValidationError(
                f"schema_version must be an integer >= 1, got {schema_version!r}",
                expected="int >= 1",
                actual=schema_version,
            )
        timeout = config.get("timeout", DEFAULT_TIMEOUT)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < float("inf")
        ):
            raise StorageValidationError(
                f"timeout must be a positive number of seconds, got {timeout!r}",
                expected="seconds > 0",
                actual=timeout,
            )
        ttl = config.get("ttl")
        if ttl is not None and (not isinstance(ttl, timedelta) or ttl <= timedelta(0)):
            raise StorageValidationError(
                f"ttl must be a positive datetime.timedelta or None, got {ttl!r}",
                expected="timedelta > 0",
                actual=ttl,
            )
        _claim_storage_name(cls, url, storage_name)
        write_back = config.get("upgrade_write_back", False)
        if not isinstance(write_back, bool):
            raise StorageValidationError(
                f"upgrade_write_back must be True or False, got {write_back!r}",
                expected="bool",
                actual=write_back,
            )
    except StorageValidationError as exc:
        raise StorageValidationError(f"{name}: {exc}", expected=exc.expected, actual=exc.actual) from None
    return ModelSettings(
        url=url,
        storage_name=storage_name,
        schema_version=schema_version,
        timeout=float(timeout),
        ttl=ttl,
        upgrade_write_back=write_back,
        dict_references="class_name" not in cls.__pydantic_fields__,
    )


_claims_lock = forksafe.Lock()
_claims: weakref.WeakValueDictionary[tuple[str, str], type[ExternalBaseModel]] = weakref.WeakValueDictionary()


def _claim_storage_name(cls: type[ExternalBaseModel], url: StorageURL, storage_name: str) -> None:
    """Refuse two different classes writing the same class name into the same store.

    References carry only the class name, so two such classes would read each other's records.
    Redefining the same class (same module and qualified name: a reload, a notebook cell) is fine.
    """
    with _claims_lock:
        holder = _claims.get((url.raw, storage_name))
        same_class = holder is not None and (holder.__module__, holder.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if holder is not None and not same_class:
            raise StorageValidationError(
                f"{holder.__module__}.{holder.__qualname__} already stores records named {storage_name!r} "
                f"in {url.masked!r}; give one of them another name with "
                f"ExternalConfigDict(storage_name='...') so their records are kept apart",
                expected="a storage name unique per store",
                actual=storage_name,
            )
        _claims[(url.raw, storage_name)] = cls


def _declared_name(base: type) -> str | None:
    settings = base.__dict__.get("__toast_settings__")
    return settings.storage_name if isinstance(settings, ModelSettings) else None


def state_of(model: ExternalBaseModel) -> RecordState:
    private = model.__pydantic_private__
    assert private is not None  # ExternalBaseModel declares a private attribute
    return cast(RecordState, private[_STATE])


def reset_state(model: ExternalBaseModel) -> None:
    """Make `model` a new, unsaved record (copies must never overwrite their original)."""
    private = model.__pydantic_private__
    assert private is not None
    private[_STATE] = RecordState()


# --------------------------------------------------------------------------- writing

_inline_model: ContextVar[object | None] = ContextVar("pydantic_toast_inline_model", default=None)
_write_set: ContextVar[WriteSet | None] = ContextVar("pydantic_toast_write_set", default=None)
_serializer_error: ContextVar[BaseException | None] = ContextVar(
    "pydantic_toast_serializer_error", default=None
)


class WriteSet:
    """The records one dump produces, grouped by storage URL, each model once."""

    def __init__(self, *, shallow: bool = False) -> None:
        # shallow: nested external models that already have a record are referenced, not rewritten.
        self._shallow = shallow
        self._depth = 0
        self._serializing: set[int] = set()
        # One instant for the whole dump: every record it writes shares its updated_at.
        self._now = datetime.now(UTC)
        self._groups: dict[str, tuple[ModelSettings, dict[UUID, StoredRecord]]] = {}
        # id(model) -> (model, reference); keeping the model alive keeps its id() unique.
        self._seen: dict[int, tuple[ExternalBaseModel, ExternalReference]] = {}

    def add(self, model: ExternalBaseModel) -> ExternalReference:
        seen = self._seen.get(id(model))
        if seen is not None:
            if id(model) in self._serializing:
                raise _remember(
                    StorageValidationError(
                        f"this {type(model).__name__} contains itself; a stored model cannot be loaded back "
                        "into an object cycle, so it is refused when dumped",
                        actual=type(model).__name__,
                    )
                )
            return seen[1]
        cls = type(model)
        settings = cls.__toast_settings__
        state = state_of(model)
        if self._shallow and self._depth > 0 and state.id is not None:
            return state.reference(settings.storage_name)
        if state.id is None:
            state.id = uuid4()
        reference = state.reference(settings.storage_name)
        # Registered before serializing the data, so a model reachable from itself ends as a reference.
        self._seen[id(model)] = (model, reference)
        self._depth += 1
        self._serializing.add(id(model))
        try:
            # The instance's own class (a subclass instance in a base-typed field keeps its
            # subclass fields), field names rather than aliases (loading never depends on the
            # caller's alias settings), and no computed fields (they are not input).
            data = inner_serializer(cls).to_json(
                model, by_alias=False, round_trip=True, exclude_computed_fields=True
            )
        finally:
            self._depth -= 1
            self._serializing.discard(id(model))
        now = self._now
        if state.created_at is None:
            state.created_at = now
        record = StoredRecord(
            id=state.id,
            class_name=settings.storage_name,
            data_json=data,
            schema_version=settings.schema_version,
            created_at=state.created_at,
            updated_at=now,
            expires_at=None if settings.ttl is None else now + settings.ttl,
        )
        group = self._groups.get(settings.url.raw)
        if group is None:
            group = self._groups[settings.url.raw] = (settings, {})
        group[1][record.id] = record
        return reference

    async def flush(self) -> None:
        """Write every collected record: one batch per backend, backends concurrently."""
        groups = list(self._groups.values())
        if len(groups) == 1:
            await _save_group(*groups[0])
        elif groups:
            runtime.running_loop()  # gather() would otherwise start a stray asyncio loop under trio
            results = await asyncio.gather(*(_save_group(*group) for group in groups), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    @property
    def timeout(self) -> float:
        return max((settings.timeout for settings, _ in self._groups.values()), default=DEFAULT_TIMEOUT)


async def _save_group(settings: ModelSettings, records: dict[UUID, StoredRecord]) -> None:
    batch = list(records.values())
    await runtime.execute(settings.url, settings.timeout, lambda backend: backend.save_records(batch))


def serialize(
    model: ExternalBaseModel, handler: SerializerFunctionWrapHandler, info: SerializationInfo
) -> Any:
    """The wrap serializer of every external model."""
    if _inline_model.get() is model:
        # Our own request for this very instance's full data; nested occurrences of the same
        # instance must become references again, hence the reset.
        token = _inline_model.set(None)
        try:
            return handler(model)
        finally:
            _inline_model.reset(token)
    mode = _context_mode(info.context)
    if mode == "inline":
        token = _inline_model.set(model)
        try:
            return type(model).__pydantic_serializer__.to_python(
                model,
                mode=info.mode,
                by_alias=info.by_alias,
                round_trip=info.round_trip,
                context=info.context,
            )
        finally:
            _inline_model.reset(token)
    if mode == "reference":
        record_id = state_of(model).id
        if record_id is None:
            raise _remember(
                StorageValidationError(
                    f"this {type(model).__name__} was never saved, so it has no reference yet; dump it "
                    "without the 'reference' context first"
                )
            )
        return {"class_name": type(model).__toast_settings__.storage_name, "id": str(record_id)}
    write_set = _write_set.get()
    if write_set is not None:
        return write_set.add(model).as_dict()
    write_set = WriteSet()
    collecting = _write_set.set(write_set)
    try:
        reference = write_set.add(model)
    finally:
        _write_set.reset(collecting)
    try:
        runtime.run_sync(write_set.flush(), write_set.timeout)
    except ExternalStorageError as exc:
        _remember(exc)
        raise
    return reference.as_dict()


def _context_mode(context: object) -> object:
    if isinstance(context, Mapping):
        mode = context.get(CONTEXT_KEY)
        if mode is not None and mode not in ("inline", "reference"):
            raise _remember(
                StorageValidationError(
                    f"serialization context {{{CONTEXT_KEY!r}: {mode!r}}} is not understood; "
                    "use 'inline' (full data, nothing stored) or 'reference' (no write)",
                    expected=["inline", "reference"],
                    actual=mode,
                )
            )
        return mode
    return None


def _remember(exc: BaseException) -> BaseException:
    """Pydantic wraps serializer errors in PydanticSerializationError; keep the original for
    `ExternalBaseModel.model_dump` to re-raise, so `except StorageConnectionError` works."""
    _serializer_error.set(exc)
    return exc


def remember_serializer_error(exc: BaseException) -> None:
    _remember(exc)


def clear_serializer_error() -> None:
    _serializer_error.set(None)


def take_serializer_error() -> BaseException | None:
    exc = _serializer_error.get()
    _serializer_error.set(None)
    return exc


async def save(model: ExternalBaseModel) -> ExternalReference:
    [reference] = await save_many([model])
    return reference


async def save_many_shallow(models: Sequence[ExternalBaseModel]) -> list[ExternalReference]:
    """Store models without rewriting the already stored external models they hold."""
    return await save_many(models, shallow=True)


async def save_many(models: Sequence[ExternalBaseModel], *, shallow: bool = False) -> list[ExternalReference]:
    """Store models and every external model they hold: one batch per backend."""
    write_set = WriteSet(shallow=shallow)
    collecting = _write_set.set(write_set)
    try:
        references = [write_set.add(model) for model in models]
    finally:
        _write_set.reset(collecting)
    await write_set.flush()
    return references


def dump(value: Any, **kwargs: Any) -> Any:
    """Dump any pydantic value; every external model inside is written in one batch per backend."""
    write_set = WriteSet()
    collecting = _write_set.set(write_set)
    try:
        result = _dump_collecting(value, kwargs)
    finally:
        _write_set.reset(collecting)
    runtime.run_sync(write_set.flush(), write_set.timeout)
    return result


async def adump(value: Any, **kwargs: Any) -> Any:
    """Async twin of `dump`: the batch is written on the running loop."""
    write_set = WriteSet()
    collecting = _write_set.set(write_set)
    try:
        result = _dump_collecting(value, kwargs)
    finally:
        _write_set.reset(collecting)
    await write_set.flush()
    return result


def _dump_collecting(value: Any, kwargs: dict[str, Any]) -> Any:
    clear_serializer_error()
    try:
        if isinstance(value, BaseModel):
            return value.model_dump(**kwargs)
        return TypeAdapter(type(value)).dump_python(value, **kwargs)
    except PydanticSerializationError:
        original = take_serializer_error()
        if original is not None:
            raise original from original.__cause__
        raise


# --------------------------------------------------------------------------- reading


def validate(
    cls: type[ExternalBaseModel], value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
) -> Any:
    """The wrap validator of every external model."""
    if _is_reference(cls, value):
        reference = parse_reference(value, expected_class=cls.__toast_settings__.storage_name)
        return load_sync(cls, reference)
    if info.mode == "json":
        # A wrap validator hands JSON input over as Python objects, and validating those in
        # Python mode breaks JSON-only semantics (strict datetimes, base64 bytes): re-validate
        # as JSON with the model's own schema instead.
        return inner_validator(cls).validate_json(pydantic_core.to_json(value), context=info.context)
    return handler(value)


def _is_reference(cls: type[ExternalBaseModel], value: object) -> bool:
    if isinstance(value, ExternalReference):
        return True
    # A model with its own 'class_name' field accepts references only as ExternalReference.
    return looks_like_reference(value) and cls.__toast_settings__.dict_references


def resolve_class(cls: type[M], reference: ExternalReference) -> type[M]:
    """The class a reference loads as: `cls` itself or one of its subclasses, by storage name."""
    if cls.__toast_settings__.storage_name == reference.class_name:
        return cls
    pending = list(cls.__subclasses__())
    while pending:
        sub = pending.pop()
        settings = sub.__dict__.get("__toast_settings__")
        if isinstance(settings, ModelSettings) and settings.storage_name == reference.class_name:
            return sub
        pending.extend(sub.__subclasses__())
    expected = cls.__toast_settings__.storage_name
    raise StorageValidationError(
        f"reference is for class {reference.class_name!r} but is being validated as {expected!r}; "
        f"pass it to the model it was dumped from",
        expected=expected,
        actual=reference.class_name,
    )


def coerce_reference(cls: type[ExternalBaseModel], value: object) -> ExternalReference:
    """Accept an ExternalReference, a reference dict, or a bare id (UUID or its text)."""
    if isinstance(value, UUID | str):
        return ExternalReference.trusted(cls.__toast_settings__.storage_name, parse_id(value))
    return parse_reference(value, expected_class=cls.__toast_settings__.storage_name)


# (storage URL, id as an int, class_name): UUID hashing is Python-level, int hashing is not.
_RecordKey = tuple[str, int, str]


_PENDING = object()
"""Stands in for a nested model whose record is not fetched yet, during a collecting pass.

Validation goes on past it, so one pass finds every reference of a level; the pass's result is
discarded and repeated once they are fetched.
"""


class TreeLoader:
    """Loads models and, level by level, the external models their data refers to.

    Each pass validates the roots with the records fetched so far; references not yet fetched
    are collected instead of loaded one by one, then fetched in one batch per backend, and the
    pass is repeated. Loading a tree of depth d costs d + 1 round trips per backend, not one
    per node.
    """

    def __init__(
        self,
        roots: Sequence[tuple[type[ExternalBaseModel], ExternalReference]],
        fetched: StoredRecord | None = None,
    ) -> None:
        """`fetched`: the record of a single root, already read by the caller."""
        self._roots = [(cls, self._key(cls, ref)) for cls, ref in roots]
        self._records: dict[_RecordKey, StoredRecord] = {}
        self._missing: set[_RecordKey] = set()
        self._wanted: dict[_RecordKey, tuple[ModelSettings, UUID]] = {}
        self._loading: set[_RecordKey] = set()
        self._upgraded: dict[_RecordKey, ExternalBaseModel] = {}
        if fetched is not None:
            self._records[self._roots[0][1]] = fetched
            return
        for (cls, key), (_, reference) in zip(self._roots, roots, strict=True):
            self._wanted[key] = (cls.__toast_settings__, reference.id)

    @staticmethod
    def _key(cls: type[ExternalBaseModel], reference: ExternalReference) -> _RecordKey:
        return (cls.__toast_settings__.url.raw, reference.id.int, reference.class_name)

    @property
    def timeout(self) -> float:
        return max((settings.timeout for settings, _ in self._wanted.values()), default=DEFAULT_TIMEOUT)

    def _raise_for_missing_roots(self) -> None:
        missing = [key for _, key in self._roots if key in self._missing]
        if missing:
            class_names = sorted({key[2] for key in missing})
            ids = [UUID(int=number) for number in dict.fromkeys(key[1] for key in missing)]
            raise RecordNotFoundError(", ".join(class_names), ids)

    async def fetch_wanted(self) -> None:
        """Fetch every collected reference: one `load_records` call per backend, concurrently."""
        groups: dict[str, list[_RecordKey]] = {}
        for key in self._wanted:
            groups.setdefault(key[0], []).append(key)
        wanted, self._wanted = self._wanted, {}

        async def fetch_group(keys: list[_RecordKey]) -> None:
            settings = wanted[keys[0]][0]
            pairs = [(wanted[key][1], key[2]) for key in keys]
            timeout = max(wanted[key][0].timeout for key in keys)
            found = await runtime.execute(settings.url, timeout, lambda backend: backend.load_records(pairs))
            for key, record in zip(keys, found, strict=True):
                if record is None:
                    self._missing.add(key)
                else:
                    self._records[key] = record

        if len(groups) == 1:
            await fetch_group(next(iter(groups.values())))
        else:
            runtime.running_loop()  # gather() would otherwise start a stray asyncio loop under trio
            results = await asyncio.gather(
                *(fetch_group(keys) for keys in groups.values()), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    def attempt(self) -> list[ExternalBaseModel] | None:
        """Materialize the roots; None when more records must be fetched first."""
        self._raise_for_missing_roots()
        token = _tree_loader.set(self)
        try:
            models: list[ExternalBaseModel] = []
            for cls, key in self._roots:
                try:
                    models.append(self._materialize(cls, key))
                except Exception:
                    # A placeholder may upset validators further up; that pass is discarded anyway.
                    if self._wanted:
                        continue
                    raise
            return None if self._wanted else models
        finally:
            _tree_loader.reset(token)

    def resolve(self, cls: type[M], reference: ExternalReference) -> M:
        """Called by a nested reference's validator during a pass."""
        key = self._key(cls, reference)
        if key in self._records:
            return self._materialize(cls, key)
        if key in self._missing:
            raise RecordNotFoundError(reference.class_name, reference.id)
        self._wanted[key] = (cls.__toast_settings__, reference.id)
        return cast(M, _PENDING)

    def _materialize(self, cls: type[M], key: _RecordKey) -> M:
        if key in self._loading:
            raise StorageValidationError(
                f"stored {key[2]} record {UUID(int=key[1])} refers to itself through its references; "
                "a cycle of stored references cannot be loaded into models",
                actual=str(UUID(int=key[1])),
            )
        self._loading.add(key)
        try:
            record = self._records[key]
            model = materialize(cls, record)
        finally:
            self._loading.discard(key)
        settings = cls.__toast_settings__
        if settings.upgrade_write_back and record.schema_version < settings.schema_version:
            self._upgraded[key] = model
        return model

    def write_back(self) -> WriteSet | None:
        """The upgraded models of the last pass, to store at their new version, if any."""
        if not self._upgraded:
            return None
        write_set = WriteSet()
        collecting = _write_set.set(write_set)
        try:
            for model in self._upgraded.values():
                write_set.add(model)
        finally:
            _write_set.reset(collecting)
        self._upgraded.clear()
        return write_set


_tree_loader: ContextVar[TreeLoader | None] = ContextVar("pydantic_toast_tree_loader", default=None)


def load_sync(cls: type[M], reference: ExternalReference) -> M:
    target = resolve_class(cls, reference)
    loader = _tree_loader.get()
    if loader is not None:
        return loader.resolve(target, reference)
    settings = target.__toast_settings__
    record = runtime.run_sync(_fetch_one(settings, reference), settings.timeout)
    loader = TreeLoader([(target, reference)], fetched=record)
    while True:
        models = loader.attempt()
        if models is not None:
            write_back = loader.write_back()
            if write_back is not None:
                runtime.run_sync(write_back.flush(), write_back.timeout)
            return cast(M, models[0])
        runtime.run_sync(loader.fetch_wanted(), loader.timeout)


async def _fetch_one(settings: ModelSettings, reference: ExternalReference) -> StoredRecord:
    pair = [(reference.id, reference.class_name)]
    [record] = await runtime.execute(
        settings.url, settings.timeout, lambda backend: backend.load_records(pair)
    )
    if record is None:
        raise RecordNotFoundError(reference.class_name, reference.id)
    return record


async def load_many(cls: type[M], references: Sequence[ExternalReference]) -> list[M]:
    """Load models in order; every missing id is reported in one RecordNotFoundError."""
    roots: list[tuple[type[ExternalBaseModel], ExternalReference]] = [
        (resolve_class(cls, reference), reference) for reference in references
    ]
    if not roots:
        return []
    loader = TreeLoader(roots)
    await loader.fetch_wanted()
    return cast(list[M], await _finish(loader))


async def load(cls: type[M], reference: ExternalReference) -> M:
    target = resolve_class(cls, reference)
    record = await _fetch_one(target.__toast_settings__, reference)
    [model] = await _finish(TreeLoader([(target, reference)], fetched=record))
    return cast(M, model)


async def _finish(loader: TreeLoader) -> list[ExternalBaseModel]:
    """Validate, fetching each further level of references in one batch, then write back."""
    while True:
        models = loader.attempt()
        if models is not None:
            write_back = loader.write_back()
            if write_back is not None:
                await write_back.flush()
            return models
        await loader.fetch_wanted()


async def delete(cls: type[ExternalBaseModel], reference: ExternalReference) -> bool:
    settings = resolve_class(cls, reference).__toast_settings__
    key = reference.id
    return await runtime.execute(
        settings.url, settings.timeout, lambda backend: backend.delete(key, reference.class_name)
    )


def materialize(cls: type[M], record: StoredRecord) -> M:
    """Validate a stored record's data into a model that remembers which record it is."""
    data_json = upgraded_data(cls, record)
    model = cast(M, inner_validator(cls).validate_json(data_json, by_alias=False, by_name=True))
    if model.__pydantic_private__ is None:
        # Built without post-init (see _build_inner): this is the only private attribute.
        object.__setattr__(model, "__pydantic_private__", {_STATE: RecordState(record.id, record.created_at)})
    else:
        state = state_of(model)
        state.id = record.id
        state.created_at = record.created_at
    return model


_build_lock = forksafe.Lock()


def inner_validator(cls: type[ExternalBaseModel]) -> SchemaValidator:
    """A validator for `cls`'s own data: its core schema minus our wrap validator at the top."""
    cached = cls.__dict__.get("__toast_inner_validator__")
    if cached is None:
        cached = _build_inner(cls)[0]
    return cast(SchemaValidator, cached)


def inner_serializer(cls: type[ExternalBaseModel]) -> SchemaSerializer:
    """A serializer of `cls`'s own data: its core schema minus our wrap serializer at the top.

    Nested external models keep theirs (they become references); only this class's own
    instance is serialized in full, without a round trip through a Python-level hook.
    """
    cached = cls.__dict__.get("__toast_inner_serializer__")
    if cached is None:
        cached = _build_inner(cls)[1]
    return cast(SchemaSerializer, cached)


def _build_inner(cls: type[ExternalBaseModel]) -> tuple[SchemaValidator, SchemaSerializer]:
    if not cls.__pydantic_complete__:
        cls.model_rebuild(raise_errors=True)
    schema = cast(dict[str, Any], cls.__pydantic_core_schema__)
    definitions: list[Any] = []
    if schema["type"] == "definitions":
        definitions = schema["definitions"]
        schema = schema["schema"]
    if schema["type"] == "definition-ref":
        schema = next(d for d in definitions if d.get("ref") == schema["schema_ref"])
    stripped = _strip_own_validator(schema)
    stripped_model = _model_node_without(stripped, "serialization")  # our wrap serializer
    if _only_our_private_state(cls):
        # materialize() sets the private state itself, once; pydantic's post-init would build a
        # default state first (twice, for subclasses of a model with private attributes).
        stripped = _model_node_without(stripped, "post_init")

    def top(node: dict[str, Any]) -> Any:
        return core_schema.definitions_schema(node, definitions) if definitions else node

    config = stripped.get("config") or schema.get("config")
    with _build_lock:
        # pydantic-core reuses a complete class's own validator and serializer for its 'model'
        # node, which would put our hooks straight back; hide completeness while building.
        type.__setattr__(cls, "__pydantic_complete__", False)
        try:
            validator = SchemaValidator(top(stripped), config)
            serializer = SchemaSerializer(top(stripped_model), config)
        finally:
            type.__setattr__(cls, "__pydantic_complete__", True)
    type.__setattr__(cls, "__toast_inner_validator__", validator)
    type.__setattr__(cls, "__toast_inner_serializer__", serializer)
    return validator, serializer


def _only_our_private_state(cls: type[ExternalBaseModel]) -> bool:
    """True when the model has no private attributes and no model_post_init of its own."""
    if set(cls.__private_attributes__) != {_STATE}:
        return False
    post_init = inspect.unwrap(cls.model_post_init)
    return getattr(post_init, "__name__", "") == "init_private_attributes" and getattr(
        post_init, "__module__", ""
    ).startswith("pydantic.")


def _model_node_without(schema: dict[str, Any], key: str) -> dict[str, Any]:
    """The same schema with `key` removed from its model node (wrappers above it are copied)."""
    if schema["type"] == "model":
        return {name: value for name, value in schema.items() if name != key}
    if "schema" in schema and isinstance(schema["schema"], dict):
        return {**schema, "schema": _model_node_without(schema["schema"], key)}
    return schema


def _strip_own_validator(schema: dict[str, Any]) -> dict[str, Any]:
    if schema["type"] == "function-wrap" and getattr(schema["function"]["function"], "__toast_hook__", False):
        return cast(dict[str, Any], schema["schema"])
    if schema["type"] in ("function-before", "function-after", "function-wrap") and "schema" in schema:
        copied = {key: value for key, value in schema.items() if key != "ref"}
        copied["schema"] = _strip_own_validator(schema["schema"])
        return copied
    return {key: value for key, value in schema.items() if key != "ref"}
