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
import hashlib
import inspect
import re
import weakref
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast
from uuid import UUID, uuid4

import pydantic_core
from pydantic import BaseModel, TypeAdapter, ValidationInfo, ValidatorFunctionWrapHandler
from pydantic_core import PydanticSerializationError, SchemaSerializer, SchemaValidator, core_schema

from . import codecs, forksafe, runtime
from .backends.base import StoredRecord
from .exceptions import (
    ConcurrentUpdateError,  # wave/occ
    ExternalStorageError,
    RecordNotFoundError,
    StorageValidationError,
    StoredDataError,
)
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
    # What the record holds, as far as this instance knows: a digest of the data it last wrote,
    # or the data it was loaded from (compared once, then replaced by a digest). A dump whose
    # data matches writes nothing, so a reader's dump never reverts another writer's update.
    stored_digest: bytes | None = None
    loaded_json: bytes | None = None
    # wave/occ: the revision of the record this instance loaded or last wrote (None: none known).
    revision: int | None = None

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
    codec: codecs.Pipeline | None = None
    optimistic_concurrency: bool = False  # wave/occ


def settings_for(cls: type[ExternalBaseModel]) -> ModelSettings:
    """Validate the class's `ExternalConfigDict` at class definition, naming the class on error."""
    config = cast(Mapping[str, Any], cls.model_config)
    name = cls.__qualname__
    storage = config["storage"]
    try:
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
        codec = codecs.pipeline_for(config)
        # wave/occ
        optimistic = config.get("optimistic_concurrency", False)
        if not isinstance(optimistic, bool):
            raise StorageValidationError(
                f"optimistic_concurrency must be True or False, got {optimistic!r}",
                expected="bool",
                actual=optimistic,
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
        codec=codec,
        optimistic_concurrency=optimistic,  # wave/occ
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


@dataclass(slots=True, eq=False)
class _Pending:
    """One record of a write set."""

    model: ExternalBaseModel  # kept alive, so its id() stays unique while the set exists
    reference: ExternalReference
    settings: ModelSettings
    state: RecordState
    # id() of the models this record's data refers to: they are written before it.
    points_at: list[int]
    data: bytes | None = None  # None while the model's data is being serialized
    digest: bytes = b""
    write: bool = False


class WriteSet:
    """The records one dump produces, each model once, written leaves first.

    A record whose data matches what its instance last stored or loaded is not written again.
    """

    def __init__(self, *, shallow: bool = False) -> None:
        # shallow: nested external models that already have a record are referenced, not rewritten.
        self._shallow = shallow
        # One instant for the whole dump: every record it writes shares its updated_at.
        self._now = datetime.now(UTC)
        # id(model) -> entry; `_done` lists them as their serialization ends, so a record always
        # comes after the records it points at.
        self._entries: dict[int, _Pending] = {}
        self._done: list[_Pending] = []
        self._open: list[_Pending] = []  # being serialized, innermost last

    def add(self, model: ExternalBaseModel, *, force: bool = False) -> ExternalReference:
        """Collect `model`'s record; `force` writes it even if its data did not change."""
        parent = self._open[-1] if self._open else None
        entry = self._entries.get(id(model))
        if entry is not None:
            if entry.data is None:
                raise _remember(
                    StorageValidationError(
                        f"this {type(model).__name__} contains itself; a stored model cannot be loaded back "
                        "into an object cycle, so it is refused when dumped",
                        actual=type(model).__name__,
                    )
                )
            if parent is not None:
                parent.points_at.append(id(model))
            entry.write = entry.write or force
            return entry.reference
        cls = type(model)
        settings = settings_of(cls)
        state = state_of(model)
        if self._shallow and parent is not None and state.id is not None:
            return state.reference(settings.storage_name)
        if state.id is None:
            state.id = uuid4()
        entry = _Pending(model, state.reference(settings.storage_name), settings, state, [])
        # Registered before serializing the data, so a model reachable from itself is caught.
        self._entries[id(model)] = entry
        if parent is not None:
            parent.points_at.append(id(model))
        self._open.append(entry)
        try:
            data = _stored_data(cls, model)
        finally:
            self._open.pop()
        entry.data = data
        entry.digest = digest = hashlib.blake2b(data, digest_size=16).digest()
        if state.stored_digest == digest:
            entry.write = force
        elif state.loaded_json is not None and _same_json(state.loaded_json, data):
            state.stored_digest = digest
            state.loaded_json = None
            entry.write = force
        else:
            entry.write = True
        if state.created_at is None:
            state.created_at = self._now
        self._done.append(entry)
        return entry.reference

    @property
    def has_writes(self) -> bool:
        return any(entry.write for entry in self._done)

    async def flush(self) -> None:
        """Write the collected records that changed, never a record before those it points at.

        All in one store, or stores that point at each other in one direction only: one batch per
        backend, dependent backends after the ones they point into. Stores pointing at each other
        both ways: one batch per backend and level of nesting.
        """
        for stage in self._stages():
            if len(stage) == 1:
                await self._write(stage[0])
                continue
            runtime.running_loop()  # gather() would otherwise start a stray asyncio loop under trio
            results = await asyncio.gather(*(self._write(batch) for batch in stage), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    def _planned(self) -> list[_Pending]:
        # A record with a ttl must live as long as the records pointing at it: when they are
        # written, so is it. Reversed, `_done` visits parents first, so this is transitive.
        for entry in reversed(self._done):
            if entry.write:
                for key in entry.points_at:
                    child = self._entries[key]
                    if not child.write and child.settings.ttl is not None:
                        child.write = True
        return [entry for entry in self._done if entry.write]

    def _stages(self) -> list[list[list[_Pending]]]:
        """Batches (one backend each) by stage; a stage runs only after the previous succeeded."""
        writes = self._planned()
        groups: dict[str, list[_Pending]] = {}
        for entry in writes:
            groups.setdefault(entry.settings.url.raw, []).append(entry)
        if len(groups) <= 1:
            return [list(groups.values())] if groups else []
        needs: dict[str, set[str]] = {url: set() for url in groups}
        for entry in writes:
            url = entry.settings.url.raw
            for key in entry.points_at:
                child = self._entries[key]
                if child.write and child.settings.url.raw != url:
                    needs[url].add(child.settings.url.raw)
        stages: list[list[list[_Pending]]] = []
        done: set[str] = set()
        while needs:
            ready = [url for url, wanted in needs.items() if wanted <= done]
            if not ready:
                return self._stages_by_level(writes)
            stages.append([groups[url] for url in ready])
            done.update(ready)
            for url in ready:
                del needs[url]
        return stages

    def _stages_by_level(self, writes: list[_Pending]) -> list[list[list[_Pending]]]:
        # Stores point at each other both ways: a record's stage is one past the latest stage
        # of the records it points at in other stores (same-store ones share its batch, which
        # is ordered leaves first).
        stage_of: dict[int, int] = {}
        stages: list[dict[str, list[_Pending]]] = []
        for entry in writes:
            url = entry.settings.url.raw
            stage = 0
            for key in entry.points_at:
                child = self._entries[key]
                if child.write:
                    stage = max(stage, stage_of[key] + (child.settings.url.raw != url))
            stage_of[id(entry.model)] = stage
            while len(stages) <= stage:
                stages.append({})
            stages[stage].setdefault(url, []).append(entry)
        return [list(batches.values()) for batches in stages]

    async def _write(self, entries: list[_Pending]) -> None:
        now = self._now
        # Two instances of one record (a revalidated copy, say) in one dump: the last one wins.
        records: dict[UUID, StoredRecord] = {}
        checked = False  # wave/occ
        for entry in entries:
            state, settings = entry.state, entry.settings
            assert state.id is not None
            assert state.created_at is not None
            assert entry.data is not None
            payload, encoding = codecs.encode(settings.codec, entry.data)
            records[state.id] = StoredRecord(
                id=state.id,
                class_name=settings.storage_name,
                payload=payload,
                schema_version=settings.schema_version,
                created_at=state.created_at,
                updated_at=now,
                expires_at=None if settings.ttl is None else now + settings.ttl,
                encoding=encoding,
            )
            if settings.optimistic_concurrency:  # wave/occ
                records[state.id].revision = (state.revision or 0) + 1
                checked = True
        batch = list(records.values())
        url = entries[0].settings.url
        timeout = max(entry.settings.timeout for entry in entries)
        if checked:  # wave/occ
            await _write_checked(url, timeout, batch, entries)
        else:
            await runtime.execute(url, timeout, lambda backend: backend.save_records(batch))
        for entry in entries:
            entry.state.stored_digest = entry.digest
            entry.state.loaded_json = None

    @property
    def timeout(self) -> float:
        return max((entry.settings.timeout for entry in self._done), default=DEFAULT_TIMEOUT)


# --- wave/occ: optimistic concurrency ------------------------------------------------------


async def _write_checked(
    url: StorageURL, seconds: float, batch: list[StoredRecord], entries: list[_Pending]
) -> None:
    """Write a batch holding records of models with `optimistic_concurrency`: each is written only
    if the store still holds the revision its instance knows; else nothing is (where the store
    allows atomic batches) and `ConcurrentUpdateError` names the first conflict."""
    conflicts = await runtime.execute(url, seconds, lambda backend: backend.save_records_checked(batch))
    if conflicts:
        names = {entry.settings.storage_name: type(entry.model).__qualname__ for entry in entries}
        first = conflicts[0]
        model = names.get(first.class_name, first.class_name)
        if first.found is None:
            found = "the store holds no such record any more (deleted or expired)"
        elif first.expected == 0:
            found = f"the store already holds revision {first.found} of it"
        else:
            found = f"the store holds revision {first.found}"
        knows = (
            "knows no revision of it (a first save, or a record stored before revisions)"
            if first.expected == 0
            else f"knows revision {first.expected}"
        )
        more = f" (and {len(conflicts) - 1} more record(s) of this batch)" if len(conflicts) > 1 else ""
        raise ConcurrentUpdateError(
            f"{model} record {first.id} was changed by another writer{more}: this instance {knows}, {found}; "
            "the save was refused so that it does not overwrite that change. Load the record again, "
            "reapply your change and save it again",
            class_name=first.class_name,
            id=first.id,
            expected=first.expected,
            found=first.found,
            conflicts=[(c.class_name, c.id, c.expected, c.found) for c in conflicts],
        )
    revisions = {record.id: record.revision for record in batch}
    for entry in entries:
        assert entry.state.id is not None
        entry.state.revision = revisions[entry.state.id]


# --- end wave/occ ---------------------------------------------------------------------------


_FIELD_NAME = re.compile(r"field_name='([^']*)'")


def _required_fields(cls: type[ExternalBaseModel]) -> frozenset[str]:
    cached = cls.__dict__.get("__toast_required__")
    if cached is None:
        cached = frozenset(name for name, field in cls.__pydantic_fields__.items() if field.is_required())
        type.__setattr__(cls, "__toast_required__", cached)
    return cast(frozenset[str], cached)


def _stored_data(cls: type[ExternalBaseModel], model: ExternalBaseModel) -> bytes:
    """The model's own data as stored, refusing what would not load back."""
    missing = sorted(_required_fields(cls) - model.__dict__.keys())
    if missing:
        raise _remember(
            StorageValidationError(
                f"{cls.__qualname__} cannot be stored: required field(s) {', '.join(map(repr, missing))} "
                "have no value (built by model_construct() without them?), so the record would not load "
                "back; set them, or build the model with validation",
                expected="a value for every required field",
                actual=missing,
            )
        )
    clear_serializer_error()
    try:
        # The instance's own class (a subclass instance in a base-typed field keeps its
        # subclass fields), field names rather than aliases (loading never depends on the
        # caller's alias settings), and no computed fields (they are not input). Pydantic's
        # serializer warnings (a value that does not match its field's type) are errors here.
        return inner_serializer(cls).to_json(
            model, by_alias=False, round_trip=True, exclude_computed_fields=True, warnings="error"
        )
    except PydanticSerializationError as exc:
        if _serializer_error.get() is not None:
            raise  # a nested model's own error, unwrapped by the caller
        # The message quotes the values themselves: keep only the field names.
        fields = sorted(set(_FIELD_NAME.findall(str(exc))))
        names = ", ".join(map(repr, fields)) or "(unknown)"
        raise _remember(
            StorageValidationError(
                f"{cls.__qualname__} cannot be stored: field(s) {names} hold values that do not match "
                "their declared type, so the record would not load back; assign valid values "
                "(validate_assignment=True checks them on assignment) or fix the field_serializer's "
                "return type",
                expected="values of the declared field types",
                actual=fields,
            )
        ) from None


def _same_json(loaded: bytes, data: bytes) -> bool:
    # Stores that re-encode JSON (PostgreSQL's JSONB) return the same data as other bytes.
    return loaded == data or bool(pydantic_core.from_json(loaded) == pydantic_core.from_json(data))


def loaded_from(model: ExternalBaseModel, record: StoredRecord, data_json: bytes) -> None:
    """Remember what a just-loaded model's record holds, so dumping it unchanged writes nothing."""
    if record.schema_version == type(model).__toast_settings__.schema_version:
        state_of(model).loaded_json = data_json


def storage_names(cls: type[ExternalBaseModel]) -> list[str]:
    """The class names a reference to `cls` (or one of its subclasses) may carry, for schemas."""
    names: list[str] = []
    pending: list[type[ExternalBaseModel]] = [cls]
    while pending:
        current = pending.pop()
        settings = current.__dict__.get("__toast_settings__")
        if isinstance(settings, ModelSettings) and settings.storage_name not in names:
            names.append(settings.storage_name)
        pending.extend(reversed(current.__subclasses__()))
    return names


def keep_record(value: object, result: Any) -> Any:
    """A revalidated instance (revalidate_instances) is still the record it was validated from."""
    if isinstance(value, BaseModel) and result is not value and type(result) is type(value):
        source, target = value.__pydantic_private__, result.__pydantic_private__
        if source and target is not None and _STATE in source:
            # A copy of the state: each instance compares its own data with what was stored.
            target[_STATE] = replace(source[_STATE])
    return result


def settings_of(cls: type[ExternalBaseModel]) -> ModelSettings:
    """The class's settings; an abstract class (no storage configured) cannot store or load."""
    settings: ModelSettings | None = getattr(cls, "__toast_settings__", None)
    if settings is None:
        raise _remember(
            StorageValidationError(
                f"{cls.__qualname__} has no storage configured, so it is an abstract base: it can be "
                "subclassed and validated from full data, but not dumped, saved or loaded; use a subclass "
                "with model_config = ExternalConfigDict(storage='sqlite:///toast.db') or another URL "
                f"(known schemes: {', '.join(known_schemes())})",
                expected="storage URL",
                actual=None,
            )
        )
    return settings


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
            # The caller's filters apply to the full data exactly as to a plain model's.
            return type(model).__pydantic_serializer__.to_python(
                model,
                mode=info.mode,
                by_alias=info.by_alias,
                round_trip=info.round_trip,
                context=info.context,
                include=cast(Any, info.include),
                exclude=cast(Any, info.exclude),
                exclude_unset=info.exclude_unset,
                exclude_defaults=info.exclude_defaults,
                exclude_none=info.exclude_none,
                exclude_computed_fields=info.exclude_computed_fields,
                serialize_as_any=info.serialize_as_any,
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
        return {"class_name": settings_of(type(model)).storage_name, "id": str(record_id)}
    write_set = _write_set.get()
    if write_set is not None:
        return write_set.add(model).as_dict()
    write_set = WriteSet()
    collecting = _write_set.set(write_set)
    try:
        reference = write_set.add(model)
    finally:
        _write_set.reset(collecting)
    if write_set.has_writes:
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
    """Store models and every external model they hold: one batch per backend.

    The models passed are always written (that refreshes their ttl); the models they hold only
    when their data changed, as in a dump.
    """
    write_set = WriteSet(shallow=shallow)
    collecting = _write_set.set(write_set)
    try:
        references = [write_set.add(model, force=True) for model in models]
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
    if write_set.has_writes:
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

json_options: ContextVar[dict[str, Any] | None] = ContextVar("pydantic_toastjson_options", default=None)
"""The call-time flags (strict, extra, by_alias, by_name) of an external model's own
`model_validate_json`: pydantic does not show them to a wrap validator, and JSON data is validated
again as JSON (see `validate`), so the entry point hands them over here."""


def validate(
    cls: type[ExternalBaseModel], value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
) -> Any:
    """The wrap validator of every external model."""
    if _is_reference(cls, value):
        reference = parse_reference(value, expected_class=cls.__toast_settings__.storage_name)
        return load_sync(cls, reference, info.context)
    if info.mode == "json":
        # A wrap validator hands JSON input over as Python objects, and validating those in
        # Python mode breaks JSON-only semantics (strict datetimes, base64 bytes): re-validate
        # as JSON with the schema below this hook (pydantic runs the validators above it).
        options = json_options.get() or {}
        return core_validator(cls).validate_json(
            pydantic_core.to_json(value), context=info.context, **options
        )
    return keep_record(value, handler(value))


def _is_reference(cls: type[ExternalBaseModel], value: object) -> bool:
    if isinstance(value, ExternalReference):
        return True
    if not looks_like_reference(value):
        return False
    if settings_of(cls).dict_references:
        return True
    # A model with its own 'class_name' field: a dict is its reference only when it is exactly one
    # (the two keys, a UUID id, the storage name of this class or a subclass); else it is data.
    assert isinstance(value, Mapping)
    if len(value) != 2:
        return False
    try:
        resolve_class(cls, parse_reference(value))
    except StorageValidationError:
        return False
    return True


def resolve_class(cls: type[M], reference: ExternalReference) -> type[M]:
    """The class a reference loads as: `cls` itself or one of its subclasses, by storage name."""
    if settings_of(cls).storage_name == reference.class_name:
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
    storage_name = settings_of(cls).storage_name
    if isinstance(value, UUID | str):
        return ExternalReference.trusted(storage_name, parse_id(value))
    return parse_reference(value, expected_class=storage_name)


# (storage URL, id as an int, class_name): UUID hashing is Python-level, int hashing is not.
_RecordKey = tuple[str, int, str]


class _NotBuiltYetError(ValueError):
    """Raised for a nested reference whose model is not built yet.

    Pydantic records it and goes on, so one validation of a record finds every reference it holds,
    and no validator of the user's ever sees a placeholder; that validation is then discarded.
    """


_PENDING = object()
"""Returned instead of raising `_NotBuiltYetError` while validating data whose schema runs no
user code, where nobody can see it: raising costs more than the rest of resolving a reference."""


# A model to build: the record's key, and whether it is built with the validators above our hook.
# A reference validated through a field of its own class is built with the schema below our hook
# (pydantic runs the rest on the returned instance); a root of `load`/`load_many`, or a subclass
# loaded through a base-class field, is built with everything but our hook.
_ModelKey = tuple[str, int, str, bool]


class _Node:
    """A model whose class can hold references: it may have to wait for the models it refers to."""

    __slots__ = ("children", "cls", "key", "missing", "model", "model_key", "waiting")

    def __init__(self, cls: type[ExternalBaseModel], model_key: _ModelKey) -> None:
        self.cls = cls
        self.model_key = model_key
        self.key: _RecordKey = model_key[:3]
        self.model: ExternalBaseModel | None = None
        self.missing = False
        self.waiting = 0  # what it waits for: unbuilt nodes, unfetched records
        self.children: list[_Node] = []  # the nodes among those, for naming a cycle


class TreeLoader:
    """Loads models and, level by level, the external models their data refers to.

    Records are fetched one level per round trip (one batch per backend), and models are built
    bottom up as soon as everything they refer to is built. Validating a record that refers to a
    model not built yet only collects those references (see `_NotBuiltYetError`); it is repeated
    once they are built, and then each nested reference resolves to its built instance at once.
    A tree of depth d costs d + 1 round trips per backend, every record is validated at most
    twice (models of classes that hold no references: once), and validation never recurses more
    than one level deep, whatever the depth of the tree.
    """

    def __init__(
        self,
        roots: Sequence[tuple[type[ExternalBaseModel], ExternalReference, bool]],
        context: Any = None,
        fetched: StoredRecord | None = None,
    ) -> None:
        """roots: (class, reference, built with its full validator); `fetched`: the record of a
        single root, already read by the caller."""
        self._context = context
        self._records: dict[_RecordKey, StoredRecord] = {}
        self._missing: set[_RecordKey] = set()
        self._wanted: dict[_RecordKey, tuple[ModelSettings, UUID]] = {}
        self._built: dict[_ModelKey, ExternalBaseModel] = {}
        self._nodes: dict[_ModelKey, _Node] = {}
        self._ready: list[_Node] = []
        self._unfetched: dict[_RecordKey, list[_Node]] = {}
        self._waiters: dict[_Node, list[_Node]] = {}
        self._after_fetch: list[_Node] = []  # nodes waiting (also) for records of the next fetch
        self._blocked: set[_Node] | None = None
        self._blocked_on_fetch = False
        self._placeholders = False  # may resolve() return _PENDING rather than raise
        self._upgraded: dict[_RecordKey, ExternalBaseModel] = {}
        self._roots: list[tuple[type[ExternalBaseModel], _RecordKey, _ModelKey, _Node | None]] = []
        append, wanted = self._roots.append, self._wanted
        last: type[ExternalBaseModel] | None = None
        for cls, reference, full in roots:
            if cls is not last:  # roots are mostly of one class: look its settings up once
                last, settings, holds = cls, cls.__toast_settings__, holds_references(cls)
                url = settings.url.raw
            number, name = reference.id.int, reference.class_name
            key = (url, number, name)
            if fetched is not None:
                self._records[key] = fetched
            else:
                wanted[key] = (settings, reference.id)
            model_key = (url, number, name, full)
            append((cls, key, model_key, self._node(cls, model_key) if holds else None))

    def _node(self, cls: type[ExternalBaseModel], model_key: _ModelKey) -> _Node:
        node = self._nodes.get(model_key)
        if node is None:
            node = self._nodes[model_key] = _Node(cls, model_key)
            key = node.key
            if key in self._records:
                self._ready.append(node)
            elif key in self._missing:
                node.missing = True
            else:
                self._unfetched.setdefault(key, []).append(node)
        return node

    @property
    def timeout(self) -> float:
        return max((settings.timeout for settings, _ in self._wanted.values()), default=DEFAULT_TIMEOUT)

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
            records, unfetched = self._records, self._unfetched
            for key, record in zip(keys, found, strict=True):
                if record is None:
                    self._missing.add(key)
                else:
                    records[key] = record
                if unfetched:
                    for node in unfetched.pop(key, ()):
                        if record is None:
                            node.missing = True
                            self._settled(node)
                        else:
                            self._ready.append(node)

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
        # Every record wanted so far is now fetched or known missing.
        for node in self._after_fetch:
            node.waiting -= 1
            if node.waiting == 0:
                self._ready.append(node)
        self._after_fetch = []

    def build(self) -> list[ExternalBaseModel] | None:
        """Build every model whose references are all built; the roots' models once they are."""
        missing = self._missing and [key for _, key, _, _ in self._roots if key in self._missing]
        if missing:
            class_names = sorted({key[2] for key in missing})
            raise RecordNotFoundError(
                ", ".join(class_names), [UUID(int=n) for n in dict.fromkeys(k[1] for k in missing)]
            )
        loader_token = _tree_loader.set(self)
        options_token = json_options.set(None)  # stored data is validated by the model's config only
        try:
            while self._ready:
                self._build(self._ready.pop())
            models: list[ExternalBaseModel] = []
            for cls, key, model_key, node in self._roots:
                if node is not None:
                    if node.model is None:
                        break
                    models.append(node.model)
                else:
                    model = self._built.get(model_key)
                    if model is None:
                        record = self._records.get(key)
                        if record is None:
                            break
                        model = self._build_simple(cls, model_key, record)
                    models.append(model)
            else:
                return models
        finally:
            json_options.reset(options_token)
            _tree_loader.reset(loader_token)
        if not self._wanted:
            raise self._cycle_error()
        return None

    def _build_simple(
        self, cls: type[ExternalBaseModel], model_key: _ModelKey, record: StoredRecord
    ) -> ExternalBaseModel:
        """Build a model of a class that holds no references: it never waits for anything."""
        model = materialize_checked(cls, record, model_key[3], self._context)
        self._built[model_key] = model
        if record.schema_version < cls.__toast_settings__.schema_version:
            self._note_upgraded(cls, model_key[:3], model)
        return model

    def _build(self, node: _Node) -> None:
        record = self._records[node.key]
        blocked: set[_Node] = set()
        self._blocked = blocked
        self._blocked_on_fetch = False
        self._placeholders = runs_no_user_code(node.cls, node.model_key[3])
        failure: StoredDataError | None = None
        model: ExternalBaseModel | None = None
        try:
            model = materialize(node.cls, record, node.model_key[3], self._context)
        except pydantic_core.ValidationError as exc:
            if not blocked and not self._blocked_on_fetch:
                failure = stored_data_error(node.cls, record, exc)
        finally:
            self._blocked = None
        if failure is not None:
            raise failure  # outside the except block, as in materialize_checked
        if blocked or self._blocked_on_fetch:
            # Collected only, or validated around a reference pydantic skipped: build it again
            # once everything it refers to is there.
            node.waiting = len(blocked)
            node.children = list(blocked)
            for child in blocked:
                self._waiters.setdefault(child, []).append(node)
            if self._blocked_on_fetch:
                node.waiting += 1
                self._after_fetch.append(node)
            return
        assert model is not None
        node.model = model
        if record.schema_version < node.cls.__toast_settings__.schema_version:
            self._note_upgraded(node.cls, node.key, model)
        self._settled(node)

    def _note_upgraded(self, cls: type[ExternalBaseModel], key: _RecordKey, model: ExternalBaseModel) -> None:
        if cls.__toast_settings__.upgrade_write_back:
            self._upgraded[key] = model

    def _settled(self, node: _Node) -> None:
        """`node` is built, or its record missing: the nodes waiting for it may go again."""
        for parent in self._waiters.pop(node, ()):
            parent.waiting -= 1
            if parent.waiting == 0:
                self._ready.append(parent)

    def _cycle_error(self) -> StoredDataError:
        """Nothing left to fetch and still unbuilt models: they wait for each other."""
        seen: set[int] = set()
        node = next(node for _, _, _, node in self._roots if node is not None and node.model is None)
        while id(node) not in seen:
            seen.add(id(node))
            node = next(child for child in node.children if child.model is None)
        record_id = UUID(int=node.key[1])
        return StoredDataError(
            f"stored {node.key[2]} record {record_id} refers to itself through its references; "
            "a cycle of stored references cannot be loaded into models (a dump never writes one)",
            class_name=node.key[2],
            id=record_id,
            errors=[{"loc": (), "type": "reference_cycle"}],
        )

    def resolve(self, cls: type[M], target: type[M], reference: ExternalReference) -> M:
        """Called by a nested reference's validator while a record of this tree is validated.

        The hot path of loading a tree: once per reference and pass, hence the inlined lookups.
        """
        settings = target.__toast_settings__
        url, number, name = settings.url.raw, reference.id.int, reference.class_name
        model_key = (url, number, name, target is not cls)
        model = self._built.get(model_key)
        if model is not None:
            return cast(M, model)
        key = (url, number, name)
        traits = target.__dict__.get("__toast_read_traits__") or _read_traits(target)
        if traits[0]:  # holds references: a node, built when everything it refers to is
            node = self._node(target, model_key)
            if node.model is not None:
                return cast(M, node.model)
            if not node.missing:
                if key not in self._records:
                    self._wanted[key] = (settings, reference.id)
                assert self._blocked is not None
                self._blocked.add(node)
                if self._placeholders:
                    return cast(M, _PENDING)
                raise _NotBuiltYetError
        else:
            record = self._records.get(key)
            if record is not None:
                return cast(M, self._build_simple(target, model_key, record))
            if key not in self._missing:
                self._wanted[key] = (settings, reference.id)
                self._blocked_on_fetch = True
                if self._placeholders:
                    return cast(M, _PENDING)
                raise _NotBuiltYetError
        raise RecordNotFoundError(reference.class_name, reference.id)

    def write_back(self) -> WriteSet | None:
        """The upgraded models of this load, to store at their new version, if any."""
        if not self._upgraded:
            return None
        models = list(self._upgraded.values())
        self._upgraded.clear()
        return _write_set_of(models)


_tree_loader: ContextVar[TreeLoader | None] = ContextVar("pydantic_toast_tree_loader", default=None)


def load_sync(cls: type[M], reference: ExternalReference, context: Any = None) -> M:
    target = resolve_class(cls, reference)
    loader = _tree_loader.get()
    if loader is not None:
        return loader.resolve(cls, target, reference)
    settings = target.__toast_settings__
    record = runtime.run_sync(_fetch_one(settings, reference), settings.timeout)
    # Reached through pydantic: it runs this class's validators above our hook on the result.
    full = target is not cls
    if not holds_references(target):
        model = materialize_checked(target, record, full, context)
        write_back = _single_write_back(target, record, model)
        if write_back is not None:
            runtime.run_sync(write_back.flush(), write_back.timeout)
        return model
    loader = TreeLoader([(target, reference, full)], context, fetched=record)
    while (models := loader.build()) is None:
        runtime.run_sync(loader.fetch_wanted(), loader.timeout)
    write_back = loader.write_back()
    if write_back is not None:
        runtime.run_sync(write_back.flush(), write_back.timeout)
    return cast(M, models[0])


async def _fetch_one(settings: ModelSettings, reference: ExternalReference) -> StoredRecord:
    pair = [(reference.id, reference.class_name)]
    [record] = await runtime.execute(
        settings.url, settings.timeout, lambda backend: backend.load_records(pair)
    )
    if record is None:
        raise RecordNotFoundError(reference.class_name, reference.id)
    return record


async def load_many(cls: type[M], references: Sequence[ExternalReference], context: Any = None) -> list[M]:
    """Load models in order; every missing id is reported in one RecordNotFoundError."""
    roots: list[tuple[type[ExternalBaseModel], ExternalReference, bool]] = [
        (resolve_class(cls, reference), reference, True) for reference in references
    ]
    if not roots:
        return []
    loader = TreeLoader(roots, context)
    await loader.fetch_wanted()
    return cast(list[M], await _finish(loader))


async def load(cls: type[M], reference: ExternalReference, context: Any = None) -> M:
    target = resolve_class(cls, reference)
    record = await _fetch_one(target.__toast_settings__, reference)
    if not holds_references(target):
        model = materialize_checked(target, record, True, context)
        write_back = _single_write_back(target, record, model)
        if write_back is not None:
            await write_back.flush()
        return model
    [loaded] = await _finish(TreeLoader([(target, reference, True)], context, fetched=record))
    return cast(M, loaded)


def _single_write_back(
    cls: type[ExternalBaseModel], record: StoredRecord, model: ExternalBaseModel
) -> WriteSet | None:
    settings = cls.__toast_settings__
    if not settings.upgrade_write_back or record.schema_version >= settings.schema_version:
        return None
    return _write_set_of([model])


def _write_set_of(models: list[ExternalBaseModel]) -> WriteSet:
    """Upgraded models to store again at their current schema_version."""
    write_set = WriteSet()
    collecting = _write_set.set(write_set)
    try:
        for model in models:
            write_set.add(model)
    finally:
        _write_set.reset(collecting)
    return write_set


async def _finish(loader: TreeLoader) -> list[ExternalBaseModel]:
    """Build, fetching each further level of references in one batch, then write back."""
    while (models := loader.build()) is None:
        await loader.fetch_wanted()
    write_back = loader.write_back()
    if write_back is not None:
        await write_back.flush()
    return models


async def delete(cls: type[ExternalBaseModel], reference: ExternalReference) -> bool:
    settings = resolve_class(cls, reference).__toast_settings__
    key = reference.id
    return await runtime.execute(
        settings.url, settings.timeout, lambda backend: backend.delete(key, reference.class_name)
    )


def materialize(cls: type[M], record: StoredRecord, full: bool = True, context: Any = None) -> M:
    """Validate a stored record's data into a model that remembers which record it is.

    `full`: with the class's validators above our hook too (else pydantic runs them on the
    result). Raises pydantic's ValidationError; `stored_data_error` makes it safe to show.
    """
    data_json = upgraded_data(cls, record)
    validator = inner_validator(cls) if full else core_validator(cls)
    model = cast(M, validator.validate_json(data_json, by_alias=False, by_name=True, context=context))
    if model.__pydantic_private__ is None:
        # Built without post-init (see _build_inner): this is the only private attribute.
        object.__setattr__(
            model,
            "__pydantic_private__",
            {_STATE: RecordState(record.id, record.created_at, revision=record.revision)},  # wave/occ
        )
    else:
        state = state_of(model)
        state.id = record.id
        state.created_at = record.created_at
        state.revision = record.revision  # wave/occ
    loaded_from(model, record, data_json)
    return model


def materialize_checked(cls: type[M], record: StoredRecord, full: bool = True, context: Any = None) -> M:
    """`materialize`, with a record that does not validate reported as `StoredDataError`."""
    failure: StoredDataError | None = None
    try:
        return materialize(cls, record, full, context)
    except pydantic_core.ValidationError as exc:
        failure = stored_data_error(cls, record, exc)
    # Raised here, outside the except block: the ValidationError holds stored values and must not
    # travel along as __context__.
    raise failure


_MAX_LISTED_ERRORS = 10


def stored_data_error(
    cls: type[ExternalBaseModel], record: StoredRecord, exc: pydantic_core.ValidationError
) -> StoredDataError:
    """The failure of a stored record's validation, without a single stored value.

    Kept: where (field names, list indexes) and pydantic's error types. Dropped: inputs, messages
    (a validator's message may quote its input) and dict keys, which may be data too.
    """
    names = _schema_names(cls)
    errors: list[tuple[tuple[object, ...], str]] = []
    dangling = 0
    for line in exc.errors(include_url=False, include_input=False, include_context=True):
        loc = tuple(
            part if isinstance(part, int) or index == 0 or part in names else "<key>"
            for index, part in enumerate(line["loc"])
        )
        cause = (line.get("ctx") or {}).get("error")
        if isinstance(cause, RecordNotFoundError):
            kind = str(cause)
            dangling += 1
        elif isinstance(cause, ExternalStorageError):
            kind = type(cause).__name__
        else:
            kind = line["type"]
        errors.append((loc, kind))
    listed = "; ".join(
        f"{'.'.join(str(part) for part in loc) or '(the data)'}: {kind}"
        for loc, kind in errors[:_MAX_LISTED_ERRORS]
    )
    if len(errors) > _MAX_LISTED_ERRORS:
        listed += f"; and {len(errors) - _MAX_LISTED_ERRORS} more"
    if dangling == len(errors):
        fix = "a record it refers to was deleted: restore it, or save the parent again without it"
    else:
        fix = (
            "the model changed without an upgrade step, or the record was edited: register "
            "@upgrade(from_version=...) and raise schema_version, or repair the record"
        )
    return StoredDataError(
        f"stored {record.class_name} record {record.id} (schema_version {record.schema_version}) does not "
        f"validate as {cls.__qualname__}: {len(errors)} error(s): {listed}; {fix}",
        class_name=record.class_name,
        id=record.id,
        errors=[{"loc": loc, "type": kind} for loc, kind in errors],
    )


def _flatten(parts: list[Any]) -> list[object]:
    flat: list[object] = []
    for part in parts:
        flat.extend(_flatten(part) if isinstance(part, list) else [part])
    return flat


def _schema_names(cls: type[ExternalBaseModel]) -> frozenset[object]:
    """Field names, aliases and union tags of `cls`'s schema: the parts of an error location that
    are not data."""
    cached = cls.__dict__.get("__toast_schema_names__")
    if cached is not None:
        return cast(frozenset[object], cached)
    names: set[object] = set()
    pending: list[object] = [cls.__pydantic_core_schema__]
    while pending:
        node = pending.pop()
        if isinstance(node, list | tuple):
            pending.extend(node)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in ("model-fields", "typed-dict") and isinstance(node.get("fields"), dict):
                names.update(node["fields"])
            elif kind == "dataclass-args":
                names.update(field.get("name") for field in node.get("fields", ()))
            elif kind == "tagged-union" and isinstance(node.get("choices"), dict):
                names.update(node["choices"])
            alias = node.get("validation_alias")
            if isinstance(alias, str):
                names.add(alias)
            elif isinstance(alias, list):  # alias paths: their parts are names too
                names.update(_flatten(alias))
            pending.extend(value for key, value in node.items() if key != "metadata")
    frozen = frozenset(names)
    type.__setattr__(cls, "__toast_schema_names__", frozen)
    return frozen


_build_lock = forksafe.Lock()


def inner_validator(cls: type[ExternalBaseModel]) -> SchemaValidator:
    """A validator for `cls`'s own data: its core schema minus our wrap validator at the top."""
    cached = cls.__dict__.get("__toast_inner_validator__")
    if cached is None:
        cached = _build_inner(cls)[0]
    return cast(SchemaValidator, cached)


def holds_references(cls: type[ExternalBaseModel]) -> bool:
    """Whether `cls`'s own data can refer to external models (its schema holds our hook)."""
    return _read_traits(cls)[0]


def runs_no_user_code(cls: type[ExternalBaseModel], full: bool) -> bool:
    """Whether validating `cls`'s data (with the validators above our hook: `full`) calls no code
    but pydantic-core's and our hook's: no validator, no custom __init__, no post-init."""
    return _read_traits(cls)[2 if full else 1]


def _read_traits(cls: type[ExternalBaseModel]) -> tuple[bool, bool, bool]:
    cached = cls.__dict__.get("__toast_read_traits__")
    if cached is None:
        _build_inner(cls)
        cached = cls.__dict__["__toast_read_traits__"]
    return cast(tuple[bool, bool, bool], cached)


def core_validator(cls: type[ExternalBaseModel]) -> SchemaValidator:
    """A validator for `cls`'s own data with only the schema below our wrap validator.

    Used where pydantic itself goes on to run the validators above our hook on what it returns
    (the user's `mode="after"` and `mode="wrap"` model validators), so they run once, not twice.
    """
    cached = cls.__dict__.get("__toast_core_validator__")
    if cached is None:
        _build_inner(cls)
        cached = cls.__dict__["__toast_core_validator__"]
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
    below = _below_own_validator(schema)
    stripped_model = _model_node_without(stripped, "serialization")  # our wrap serializer
    if _only_our_private_state(cls):
        # materialize() sets the private state itself, once; pydantic's post-init would build a
        # default state first (twice, for subclasses of a model with private attributes).
        stripped = _model_node_without(stripped, "post_init")
        below = _model_node_without(below, "post_init")

    def top(node: dict[str, Any]) -> Any:
        return core_schema.definitions_schema(node, definitions) if definitions else node

    config = stripped.get("config") or schema.get("config")
    with _build_lock:
        # pydantic-core reuses a complete class's own validator and serializer for its 'model'
        # node, which would put our hooks straight back; hide completeness while building.
        type.__setattr__(cls, "__pydantic_complete__", False)
        try:
            validator = SchemaValidator(top(stripped), config)
            core = SchemaValidator(top(below), config)
            serializer = SchemaSerializer(top(stripped_model), config)
        finally:
            type.__setattr__(cls, "__pydantic_complete__", True)
    type.__setattr__(cls, "__toast_inner_validator__", validator)
    type.__setattr__(cls, "__toast_core_validator__", core)
    holds, user_code_below = _scan([below, definitions])
    user_code_above = _scan([stripped, definitions])[1]
    type.__setattr__(cls, "__toast_read_traits__", (holds, not user_code_below, not user_code_above))
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


_USER_CODE_KEYS = ("post_init", "custom_init", "default_factory_takes_data")


def _scan(schema: object) -> tuple[bool, bool]:
    """(our hook occurs in `schema`, code other than pydantic-core's runs on validating it).

    A nested external model's hook returns a built model, so the scan does not look below it.
    """
    holds_hook = runs_code = False
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            function = node.get("function")
            if isinstance(function, dict) and getattr(function.get("function"), "__toast_hook__", False):
                holds_hook = True
                continue
            if (
                callable(function)
                or isinstance(function, dict)
                or any(node.get(key) for key in _USER_CODE_KEYS)
            ):
                runs_code = True
            pending.extend(
                value for key, value in node.items() if key not in ("metadata", "serialization", "function")
            )
        elif isinstance(node, list | tuple):
            pending.extend(node)
    return holds_hook, runs_code


def _below_own_validator(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema our wrap validator hands on to (the whole schema, should it be missing)."""
    node = schema
    while node["type"] in ("function-before", "function-after", "function-wrap") and "schema" in node:
        if node["type"] == "function-wrap" and getattr(node["function"]["function"], "__toast_hook__", False):
            return {key: value for key, value in node["schema"].items() if key != "ref"}
        node = node["schema"]
    return {key: value for key, value in schema.items() if key != "ref"}


def _strip_own_validator(schema: dict[str, Any]) -> dict[str, Any]:
    if schema["type"] == "function-wrap" and getattr(schema["function"]["function"], "__toast_hook__", False):
        return cast(dict[str, Any], schema["schema"])
    if schema["type"] in ("function-before", "function-after", "function-wrap") and "schema" in schema:
        copied = {key: value for key, value in schema.items() if key != "ref"}
        copied["schema"] = _strip_own_validator(schema["schema"])
        return copied
    return {key: value for key, value in schema.items() if key != "ref"}
