"""Writing: turning external models into stored records, collected per dump and written leaves first.

`serialize` (the model's wrap serializer) adds the model to the current `WriteSet` and returns
its reference. A top-level dump owns the write set and flushes it before returning, so every
external model reached by one dump, at any depth, is written in one batch per backend. A record
whose data did not change is not written again (see `RecordState.holds`). A `save_many` of models
whose classes hold no external model needs no ordering and skips the write set (`_collect_leaves`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, cast
from uuid import UUID, uuid4

from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticSerializationError

from . import _content, _content_models, _direct, codecs, observability, runtime
from ._pydantic_internals import holds_references, inner_serializer, serializer_error_fields
from ._record_state import RecordState, digest, state_of
from ._settings import DEFAULT_TIMEOUT, ModelSettings, resolve_class, settings_of
from ._stats import counters_for
from .backends.base import StoredRecord
from .exceptions import ConcurrentUpdateError, ExternalStorageError, StorageValidationError
from .reference import ExternalReference

if TYPE_CHECKING:
    from pydantic import SerializationInfo, SerializerFunctionWrapHandler

    from .base import ExternalBaseModel
    from .url import StorageURL

__all__ = [
    "CONTEXT_KEY",
    "ContentValue",
    "WriteSet",
    "adump",
    "collecting_writes",
    "context_mode",
    "delete",
    "dump",
    "save",
    "save_many",
    "save_many_shallow",
    "save_sync",
    "serialize",
    "store_value",
]

CONTEXT_KEY = "pydantic_toast"
"""Serialization context key: {"pydantic_toast": "inline"} dumps full data without storing;
{"pydantic_toast": "reference"} returns the reference of an already stored model without writing."""

_inline_model: ContextVar[object | None] = ContextVar("pydantic_toast_inline_model", default=None)
_write_set: ContextVar[WriteSet | None] = ContextVar("pydantic_toast_write_set", default=None)
_serializer_error: ContextVar[BaseException | None] = ContextVar(
    "pydantic_toast_serializer_error", default=None
)


@dataclass(slots=True, eq=False)
class _Pending:
    """One record of a write set."""

    model: ExternalBaseModel | ContentValue  # kept alive, so its id() stays unique while the set exists
    reference: ExternalReference | None  # None while inline (see `WriteSet.add`)
    settings: ModelSettings
    state: RecordState
    # id() of the models this record's data refers to: they are written before it.
    points_at: list[int]
    data: bytes | None = None  # None while the model's data is being serialized
    digest: bytes = b""
    write: bool = False
    inline: bool = False  # at or below offload_threshold: in its parent's data, never written


class ContentValue:
    """Stands for one content-addressed value (a `Toast` value) in a write set, as a model does."""

    __slots__ = ()


class _ClassWriter:
    """What storing the instances of one class takes, built once per class and looked up once
    per write set, not per instance (three lookups and two casts were ~5% of a batch's work)."""

    __slots__ = ("exact", "fields", "leaf", "name", "required", "serializer", "settings")

    def __init__(self, cls: type[ExternalBaseModel]) -> None:
        self.settings = _settings_of(cls)  # first: a class without storage is refused here
        self.name = cls.__qualname__
        self.fields = tuple(cls.__pydantic_fields__)
        self.required = frozenset(
            name for name, field in cls.__pydantic_fields__.items() if field.is_required()
        )
        self.serializer = inner_serializer(cls)
        # Its instances' records point at nothing (see `_collect_leaves`), as far as the schema
        # tells: a save still checks, with a `_LeafGuard`, that no field held a model anyway.
        self.leaf = not self.settings.content_addressed and not holds_references(cls)
        self.exact = _scalar_fields(cls)

    @staticmethod
    def of(cls: type[ExternalBaseModel]) -> _ClassWriter:
        # In the class's own __dict__: a subclass never inherits its base's writer.
        writer = cls.__dict__.get("__toast_writer__")
        if writer is None:
            writer = _ClassWriter(cls)
            type.__setattr__(cls, "__toast_writer__", writer)
        assert isinstance(writer, _ClassWriter)
        return writer

    def stored_data(self, model: ExternalBaseModel) -> bytes:
        """The model's own data as stored, refusing what would not load back."""
        # Pydantic's serializer warnings (a value that does not match its field's type) are errors
        # here. Asking for that costs pydantic-core ~9,500 instructions per call (it parses
        # warnings="error" only after failing to read it as a bool), more than serializing ten
        # fields: skipped when every field holds a value of exactly its declared scalar type,
        # which pydantic serializes without a warning; any other value takes the checked call.
        warnings: Literal["error"] | bool = "error"
        values = model.__dict__
        # Every field, in order, and no other key: the common case, so no required field is
        # missing. A tuple of the keys compares by identity; `keys() >= required` looks each
        # required name up (26,000 instructions for 100 fields against ~3,000).
        if tuple(values) == self.fields:
            exact = self.exact
            if exact is not None:
                types = tuple(map(type, values.values()))
                if types == exact[0] or all(map(operator.contains, exact[1], types)):
                    warnings = True
        elif not values.keys() >= self.required:
            missing = sorted(self.required - values.keys())
            raise _remember(
                StorageValidationError(
                    f"{self.name} cannot be stored: required field(s) {', '.join(map(repr, missing))} "
                    "have no value (built by model_construct() without them?), so the record would not "
                    "load back; set them, or build the model with validation",
                    expected="a value for every required field",
                    actual=missing,
                )
            )
        if _serializer_error.get() is not None:  # reading is cheaper than setting: set only if needed
            _serializer_error.set(None)
        try:
            # The instance's own class (a subclass instance in a base-typed field keeps its
            # subclass fields), field names rather than aliases (loading never depends on the
            # caller's alias settings), and no computed fields (they are not input).
            return self.serializer.to_json(
                model, by_alias=False, round_trip=True, exclude_computed_fields=True, warnings=warnings
            )
        except PydanticSerializationError as exc:
            if _serializer_error.get() is not None:
                raise  # a nested model's own error, unwrapped by the caller
            # The message quotes the values themselves: keep only the field names.
            fields = serializer_error_fields(exc)
            names = ", ".join(map(repr, fields)) or "(unknown)"
            raise _remember(
                StorageValidationError(
                    f"{self.name} cannot be stored: field(s) {names} hold values that do not match "
                    "their declared type, so the record would not load back; assign valid values "
                    "(validate_assignment=True checks them on assignment) or fix the field_serializer's "
                    "return type",
                    expected="values of the declared field types",
                    actual=fields,
                )
            ) from None


# Field schemas whose serializer accepts a value of exactly these types without a warning.
_SCALARS: dict[str, type] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "bytes": bytes,
    "datetime": datetime,
    "date": date,
    "time": time,
    "timedelta": timedelta,
    "uuid": UUID,
    "decimal": Decimal,
}


# The check costs ~1,000 instructions a field where the checked call costs ~950 and parsing its
# warnings="error" ~6,500 more once (callgrind, str/int/float fields: 10 fields 17.4 k against
# 23.9 k, 30 fields 38.4 k against 42.5 k, 100 fields 109.5 k against 108.2 k): it pays up to ~85.
_EXACT_FIELDS_MAX = 64


def _scalar_fields(
    cls: type[ExternalBaseModel],
) -> tuple[tuple[type, ...], tuple[frozenset[type], ...]] | None:
    """(each field's type, each field's accepted types), in the order of `__pydantic_fields__`,
    when every field of `cls` is a plain scalar (optionally nullable, with a default) and there
    are at most `_EXACT_FIELDS_MAX` of them, else None.

    From the class's core schema: no custom serializer at any level of a field, no extra fields
    kept (they would be serialized by inference), no shared definitions. A model whose `__dict__`
    holds exactly these fields with values of these exact types cannot make pydantic warn.
    """
    node: Any = cls.__pydantic_core_schema__
    while node.get("type") != "model" and isinstance(node.get("schema"), dict):
        if node.get("type") == "definitions":
            return None
        node = node["schema"]
    fields_node = node.get("schema") if node.get("type") == "model" else None
    if (
        not isinstance(fields_node, dict)
        or fields_node.get("type") != "model-fields"
        or fields_node.get("extra_behavior") == "allow"
        or fields_node.get("extras_schema") is not None
        or (node.get("config") or {}).get("extra_fields_behavior") == "allow"
    ):
        return None
    if len(fields_node["fields"]) > _EXACT_FIELDS_MAX:
        return None
    names: list[str] = []
    firsts: list[type] = []
    accepted: list[frozenset[type]] = []
    for name, field in fields_node["fields"].items():
        if field.get("type") != "model-field" or "serialization_exclude_if" in field:
            return None
        schema = field["schema"]
        kinds: set[type] = set()
        while schema.get("type") in ("default", "nullable"):
            if "serialization" in schema:
                return None
            if schema["type"] == "nullable":
                kinds.add(type(None))
            schema = schema["schema"]
        kind = _SCALARS.get(schema.get("type"))
        if kind is None or "serialization" in schema:
            return None
        names.append(name)
        firsts.append(kind)
        accepted.append(frozenset({kind, *kinds}))
    if tuple(names) != tuple(cls.__pydantic_fields__):  # checked against the instance's keys
        return None
    return tuple(firsts), tuple(accepted)


class WriteSet:
    """The records one dump produces, each model once, written leaves first.

    A record whose data matches what its instance last stored or loaded is not written again.
    """

    def __init__(self, *, shallow: bool = False) -> None:
        # shallow: nested external models that already have a record are referenced, not rewritten.
        self._shallow = shallow
        # One instant for the whole dump: every record it writes shares its updated_at.
        self._now = datetime.now(UTC)
        # id(model) -> entry; `_done` lists them leaves first, so a record always
        # comes after the records it points at.
        self._entries: dict[int, _Pending] = {}
        self._done: list[_Pending] = []
        self._placed: set[int] = set()  # id(model) of the entries in `_done` (or being placed)
        self._open: list[_Pending] = []  # being serialized, innermost last
        # Nested models met while serializing another one: serialized afterwards, from a loop,
        # so that how deeply models nest never becomes how deeply Python recurses.
        self._queued: list[_Pending] = []
        # id(model) -> the content-addressed models its data is waiting for (see `_defer`).
        self._needs: dict[int, list[_Pending]] = {}
        self._writers: dict[type[ExternalBaseModel], _ClassWriter] = {}

    def add(self, model: ExternalBaseModel, *, force: bool = False) -> ExternalReference | None:
        """Collect `model`'s record; `force` writes it even if its data did not change.

        None: the model stays inline, its JSON being at or below its `offload_threshold` (`force`,
        an explicit save, stores it whatever its size); nothing of it is written, but the models
        its data refers to are, before the record that holds its data.
        """
        parent = self._open[-1] if self._open else None
        entry = self._entries.get(id(model))
        if entry is not None:
            if entry is parent or (entry.reference is None and not entry.inline):
                if parent is not None and entry.settings.content_addressed and entry not in self._open:
                    return self._defer(entry, parent)  # not serialized yet: see `_settle`
                # (No reference yet: met again while its own data is being serialized.)
                raise _contains_itself(model)
            if parent is not None:
                parent.points_at.append(id(model))
            if entry.inline:
                if not force:
                    return None
                entry.inline = False
                self._identify(entry)
            entry.write = entry.write or force
            return entry.reference
        cls = type(model)
        writer = self._writers.get(cls)
        if writer is None:
            writer = self._writers[cls] = _ClassWriter.of(cls)
        settings = writer.settings
        state = state_of(model)
        if self._shallow and parent is not None and state.id is not None:
            return state.reference(settings.storage_name)
        entry = _Pending(model, None, settings, state, [])
        # Registered before serializing the data, so a model reachable from itself is caught.
        self._entries[id(model)] = entry
        if settings.offload_threshold is not None and not force:
            return self._add_measured(entry, parent)
        if settings.content_addressed:
            if parent is not None:
                return self._defer(entry, parent)
            return self._add_content(entry, force)
        self._identify(entry)
        if parent is not None:
            parent.points_at.append(id(model))
            self._queued.append(entry)
            return entry.reference
        self._serialize(entry)
        while self._queued:
            self._serialize(self._queued.pop())
        entry.write = entry.write or force
        self._place(entry)
        return entry.reference

    def store(self, model: ExternalBaseModel) -> ExternalReference:
        """Collect `model`'s record to be written whatever its size and whether it changed."""
        reference = self.add(model, force=True)
        assert reference is not None  # forced: never left inline
        return reference

    def _identify(self, entry: _Pending) -> None:
        """Give a model to be stored its record id (on its first save) and reference."""
        state = entry.state
        if entry.settings.content_addressed:
            assert entry.data is not None  # serialized first: the id is made from it
            entry.write = _content_models.identify(state, entry.settings, entry.data, entry.digest, self._now)
            entry.reference = state.reference(entry.settings.storage_name)
            return
        if state.id is None:
            state.id = uuid4()
        if state.created_at is None:
            state.created_at = self._now
        entry.reference = state.reference(entry.settings.storage_name)

    def _add_measured(self, entry: _Pending, parent: _Pending | None) -> ExternalReference | None:
        """`add` for a model with an `offload_threshold`: its size decides, so its data is
        serialized now (its parent's data holds either that data or its reference)."""
        threshold = entry.settings.offload_threshold
        assert threshold is not None
        self._serialize(entry)
        assert entry.data is not None
        if len(entry.data) <= threshold:
            entry.inline, entry.write = True, False
        else:
            self._identify(entry)
        if parent is not None:
            parent.points_at.append(id(entry.model))
            # What an inline model refers to, its parent's record refers to: written before it.
            parent.points_at.extend(entry.points_at if entry.inline else ())
        else:
            while self._queued:
                self._serialize(self._queued.pop())
            self._place(entry)
        return entry.reference

    def _add_content(self, entry: _Pending, force: bool) -> ExternalReference:
        """`add` for a content-addressed model met outside any record (a root): its id is made
        from its data, so its data is serialized before its reference is returned."""
        self._serialize(entry)
        self._identify(entry)
        entry.write = entry.write or force
        assert entry.reference is not None
        while self._queued:
            self._serialize(self._queued.pop())
        self._place(entry)
        return entry.reference

    def _defer(self, entry: _Pending, parent: _Pending) -> ExternalReference:
        """A content-addressed model met while `parent`'s data is serialized: its id, which that
        data must hold, is not known before its own data is. It is noted, `parent`'s data is
        finished with a stand-in reference and then made again once the model has its id (see
        `_settle`), so that nesting depth never becomes recursion depth."""
        parent.points_at.append(id(entry.model))
        self._needs.setdefault(id(parent.model), []).append(entry)
        return ExternalReference.trusted(entry.settings.storage_name, UUID(int=0))

    def _settle(self, entry: _Pending, run: Callable[[], None]) -> None:
        """`run` has made `entry`'s data once: run it again until the data holds no stand-in.

        An explicit stack instead of recursion: the content-addressed models a pass deferred are
        serialized (and identified) first, then the pass runs again and finds their references.
        Each record's data is thus made at most twice per content-addressed level below it.
        """
        stack: list[tuple[_Pending, Callable[[], None]]] = [(entry, run)]
        waiting: set[int] = set()  # id(model) of the entries waiting for the models they deferred
        ran = True
        while stack:
            top, again = stack[-1]
            if top is not entry and top.reference is not None:
                stack.pop()  # deferred twice, and done already
                continue
            if not ran:
                again()
            ran = False
            needed = self._needs.pop(id(top.model), None)
            if needed:
                waiting.add(id(top.model))
                for child in needed:
                    if id(child.model) in waiting:
                        raise _contains_itself(child.model)
                    stack.append((child, functools.partial(self._serialize_once, child)))
                continue
            stack.pop()
            waiting.discard(id(top.model))
            if top is not entry:
                self._identify(top)

    def add_value(
        self, settings: ModelSettings, encode: Callable[[], tuple[UUID, bytes]]
    ) -> ExternalReference:
        """Collect a content-addressed value's record; `encode` returns its id and stored data.

        Like a model's, it is written before the record that holds its reference, and after the
        external models its own data refers to. A record this process already wrote or verified
        is not written again: its id is its content.
        """
        parent = self._open[-1] if self._open else None
        holder = ContentValue()
        state = RecordState(created_at=self._now)
        entry = _Pending(
            holder, ExternalReference.trusted(settings.storage_name, UUID(int=0)), settings, state, []
        )
        self._entries[id(holder)] = entry
        if parent is not None:
            parent.points_at.append(id(holder))
        record_id, data = UUID(int=0), b""

        def run() -> None:
            nonlocal record_id, data
            # Open while encoding: external models inside the value are its children.
            self._open.append(entry)
            try:
                record_id, data = encode()
            finally:
                self._open.pop()

        run()
        if self._needs:
            self._settle(entry, run)
        state.id = record_id
        reference = entry.reference = state.reference(settings.storage_name)
        entry.data = data
        # No digest of the data: the id is the content's, and "unchanged" is "already stored".
        entry.write = not _content.is_known((settings.url.raw, record_id.int, settings.storage_name))
        if parent is None:
            while self._queued:
                self._serialize(self._queued.pop())
            self._place(entry)
        return reference

    def _serialize(self, entry: _Pending) -> None:
        self._serialize_once(entry)
        if self._needs:  # content-addressed models were deferred: their ids are needed first
            self._settle(entry, functools.partial(self._serialize_once, entry))

    def _serialize_once(self, entry: _Pending) -> None:
        model = entry.model
        assert not isinstance(model, ContentValue)  # values are encoded by add_value
        self._open.append(entry)
        try:
            data = self._writers[type(model)].stored_data(model)
        finally:
            self._open.pop()
        entry.data = data
        entry.digest = digest(data)
        entry.write = not entry.state.holds(data, entry.digest)

    def _place(self, root: _Pending) -> None:
        """Append to `_done` the records newly reached from `root`, each after every record it
        points at.

        An iterative depth-first walk: a chain of any length is ordered without recursion, and a
        record met again while its own subtree is being walked is an object cycle.
        """
        placed = self._placed
        placed.add(id(root.model))
        if not root.points_at:
            self._done.append(root)  # the common case: a model holding no external model
            return
        walking: set[int] = set()
        ordered: list[_Pending] = []  # added to `_done` once complete: a cycle found adds nothing
        stack: list[tuple[_Pending, int]] = [(root, 0)]
        walking.add(id(root.model))
        while stack:
            entry, position = stack.pop()
            if position < len(entry.points_at):
                stack.append((entry, position + 1))
                key = entry.points_at[position]
                if key in walking:
                    raise _contains_itself(self._entries[key].model)
                if key not in placed:
                    placed.add(key)
                    walking.add(key)
                    stack.append((self._entries[key], 0))
                continue
            walking.discard(id(entry.model))
            ordered.append(entry)
        self._done.extend(ordered)

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
            await runtime.gather_all(self._write(batch) for batch in stage)

    def _planned(self) -> list[_Pending]:
        # A record with a ttl must live as long as the records pointing at it: when they are
        # written, so is it. Reversed, `_done` visits parents first, so this is transitive.
        for entry in reversed(self._done):
            if entry.write:
                for key in entry.points_at:
                    child = self._entries[key]
                    if not child.write and not child.inline and child.settings.ttl is not None:
                        child.write = True
        return [entry for entry in self._done if entry.write]

    def _stages(self) -> list[list[list[_Pending]]]:
        """Batches (one backend each) by stage; a stage runs only after the previous succeeded."""
        writes = self._planned()
        groups: dict[str, list[_Pending]] = {}
        for entry in writes:  # all checked before anything is written: a refusal writes nothing
            settings = entry.settings
            if settings.warn_size is not None or settings.max_size is not None:
                assert entry.data is not None
                observability.check_size(type(entry.model).__qualname__, settings, len(entry.data))
            groups.setdefault(settings.url.raw, []).append(entry)
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
        # Two instances of one record (a revalidated copy, say) in one dump: the last one wins.
        # Keyed by the id's int: a UUID's own hash runs in Python, an int's does not.
        records: dict[int, StoredRecord] = {}
        raw: dict[int, int] = {}
        now = self._now
        checked = False
        for entry in entries:
            assert entry.data is not None
            record = _record_of(entry.state, entry.settings, entry.data, now)
            number = record.id.int
            records[number] = record
            raw[number] = len(entry.data)
            checked = checked or record.revision is not None
        url = entries[0].settings.url
        timeout = max(entry.settings.timeout for entry in entries)
        states = [entry.state for entry in entries]

        def names() -> dict[str, str]:
            return {entry.settings.storage_name: type(entry.model).__qualname__ for entry in entries}

        await _send(url, timeout, list(records.values()), sum(raw.values()), states, names, checked=checked)
        stored: list[tuple[str, int, str]] = []
        for entry in entries:
            state = entry.state
            state.wrote(entry.digest)
            if entry.settings.content_addressed or isinstance(entry.model, ContentValue):
                assert state.id is not None
                stored.append((url.raw, state.id.int, entry.settings.storage_name))
        if stored:
            _content.remember(stored)

    @property
    def timeout(self) -> float:
        return max((entry.settings.timeout for entry in self._done), default=DEFAULT_TIMEOUT)

    def write_directly(self) -> bool:
        """Write the set in the calling thread, if it is one record its store's sync client takes
        (`_direct.py`); False, having written nothing, when `flush` must write it instead."""
        writes = self._planned()
        if len(writes) != 1:
            return False
        [entry] = writes
        settings = entry.settings
        if settings.content_addressed or settings.optimistic_concurrency:
            return False  # remembered once written / a checked write: `_write`'s own steps
        if isinstance(entry.model, ContentValue):
            return False
        client = _direct.redis_client(settings.url, runtime.in_io_thread())
        if client is None:
            return False
        data = entry.data
        assert data is not None
        if settings.warn_size is not None or settings.max_size is not None:
            observability.check_size(type(entry.model).__qualname__, settings, len(data))
        record = _record_of(entry.state, settings, data, self._now)
        client.save(record, settings.timeout)
        _count_written(settings.url, [record], len(data))
        entry.state.wrote(entry.digest)
        return True


def _contains_itself(model: object) -> BaseException:
    return _remember(
        StorageValidationError(
            f"this {type(model).__name__} contains itself; a stored model cannot be loaded back "
            "into an object cycle, so it is refused when dumped",
            actual=type(model).__name__,
        )
    )


def _record_of(state: RecordState, settings: ModelSettings, data: bytes, now: datetime) -> StoredRecord:
    """The stored record of one collected model, whose JSON is `data`."""
    assert state.id is not None
    assert state.created_at is not None
    # The codec stage: the one place where stored bytes are made from a model's JSON.
    if settings.codec is None:  # no pipeline: the JSON itself (codecs.encode's first case, inlined)
        payload, encoding = data, codecs.JSON
    else:
        payload, encoding = codecs.encode(
            settings.codec,
            data,
            class_name=settings.storage_name,
            id=state.id,
            schema_version=settings.schema_version,
        )
    return StoredRecord(  # positional: one is built per record written
        state.id,
        settings.storage_name,
        payload,
        settings.schema_version,
        state.created_at,
        now,
        None if settings.ttl is None else now + settings.ttl,
        encoding,
        (state.revision or 0) + 1 if settings.optimistic_concurrency else None,
    )


async def _send(
    url: StorageURL,
    seconds: float,
    batch: list[StoredRecord],
    raw_bytes: int,
    states: Sequence[RecordState],
    names: Callable[[], Mapping[str, str]],
    *,
    checked: bool,
) -> None:
    """Write one backend's batch and count it. `states`: the instances' states, whose revisions
    a checked write updates; `names`: storage name -> class name, for a conflict's message;
    `checked`: some record carries a revision (its class has optimistic_concurrency)."""
    if checked:
        await _write_checked(url, seconds, batch, states, names)
    else:
        await runtime.execute(url, seconds, lambda backend: backend.save_records(batch))
    _count_written(url, batch, raw_bytes)


def _count_written(url: StorageURL, batch: list[StoredRecord], raw_bytes: int) -> None:
    """The write path's share of the counters (the backend counts its round trips and records)."""
    counters_for(url).add(
        round_trips=0,
        bytes_written=sum([len(record.payload) for record in batch]),
        raw_bytes_written=raw_bytes,
    )


async def _write_checked(
    url: StorageURL,
    seconds: float,
    batch: list[StoredRecord],
    states: Sequence[RecordState],
    names: Callable[[], Mapping[str, str]],
) -> None:
    """Write a batch holding records of models with `optimistic_concurrency`: each is written only
    if the store still holds the revision its instance knows; else nothing is (where the store
    allows atomic batches) and `ConcurrentUpdateError` names the first conflict."""
    conflicts = await runtime.execute(url, seconds, lambda backend: backend.save_records_checked(batch))
    if conflicts:
        first = conflicts[0]
        model = names().get(first.class_name, first.class_name)
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
    for state in states:
        assert state.id is not None
        state.revision = revisions[state.id]


@contextmanager
def collecting_writes(*, shallow: bool = False) -> Iterator[WriteSet]:
    """A new write set that every external model serialized inside the block joins."""
    write_set = WriteSet(shallow=shallow)
    token = _write_set.set(write_set)
    try:
        yield write_set
    finally:
        _write_set.reset(token)


def flush_sync(write_set: WriteSet) -> None:
    if write_set.has_writes and not write_set.write_directly():
        runtime.run_sync(write_set.flush(), write_set.timeout)


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
        return _inline_data(model, info)
    if mode == "reference":
        record_id = state_of(model).id
        if record_id is None:
            raise _remember(
                StorageValidationError(
                    f"this {type(model).__name__} was never saved, so it has no reference yet; dump it "
                    "without the 'reference' context first"
                )
            )
        return {"class_name": _settings_of(type(model)).storage_name, "id": str(record_id)}
    write_set = _write_set.get()
    if write_set is not None:
        reference = write_set.add(model)
        return _inline_data(model, info) if reference is None else reference.as_dict()
    with collecting_writes() as write_set:
        reference = write_set.add(model)
        # Inline (offload_threshold): serialized inside the set, where its nested models are known.
        result = _inline_data(model, info) if reference is None else reference.as_dict()
    try:
        flush_sync(write_set)
    except ExternalStorageError as exc:
        _remember(exc)
        raise
    return result


def _inline_data(model: ExternalBaseModel, info: SerializationInfo) -> Any:
    """The model's full data where its reference would be, as the caller asked for it."""
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


def store_value(settings: ModelSettings, encode: Callable[[], tuple[UUID, bytes]]) -> ExternalReference:
    """Collect a content-addressed value in the current dump's write set, or write it now."""
    write_set = _write_set.get()
    if write_set is not None:
        return write_set.add_value(settings, encode)
    with collecting_writes() as write_set:
        reference = write_set.add_value(settings, encode)
    try:
        flush_sync(write_set)
    except ExternalStorageError as exc:
        _remember(exc)
        raise
    return reference


def context_mode(context: object) -> object:
    """The pydantic_toast serialization mode the caller asked for: 'inline', 'reference' or None."""
    return _context_mode(context)


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


def _settings_of(cls: type[ExternalBaseModel]) -> ModelSettings:
    try:
        return settings_of(cls)
    except StorageValidationError as exc:
        _remember(exc)
        raise


def clear_serializer_error() -> None:
    _serializer_error.set(None)


def pending_serializer_error() -> bool:
    """Whether a hook's own error is waiting for the entry point to re-raise it."""
    return _serializer_error.get() is not None


def take_serializer_error() -> BaseException | None:
    exc = _serializer_error.get()
    _serializer_error.set(None)
    return exc


async def save(model: ExternalBaseModel) -> ExternalReference:
    writer = _ClassWriter.of(type(model))
    if writer.leaf:
        leaf = _leaf_record(model, writer)
        if leaf is not None:
            record, data, state, reference = leaf
            settings = writer.settings
            names = {settings.storage_name: writer.name}
            await _send(
                settings.url,
                settings.timeout,
                [record],
                len(data),  # the JSON's size: the record's payload may be compressed or encrypted
                [state],
                lambda: names,
                checked=settings.optimistic_concurrency,
            )
            state.wrote(digest(data))
            return reference
    [reference] = await save_many([model])
    return reference


def _leaf_record(
    model: ExternalBaseModel, writer: _ClassWriter
) -> tuple[StoredRecord, bytes, RecordState, ExternalReference] | None:
    """`_collect_leaves` for one model: its record, JSON, state and reference; None if a field
    held an external model or a `Toast` value after all (the general path then saves it)."""
    settings = writer.settings
    guard = _LeafGuard()
    now = guard._now
    state = state_of(model)
    if state.id is None:  # the first save, identified before its data as `add` does
        state.id = uuid4()
    if state.created_at is None:
        state.created_at = now
    reference = state.reference(settings.storage_name)
    token = _write_set.set(guard)
    try:
        data = writer.stored_data(model)
    finally:
        _write_set.reset(token)
    if guard.met:
        return None
    if settings.warn_size is not None or settings.max_size is not None:
        observability.check_size(writer.name, settings, len(data))
    return _record_of(state, settings, data, now), data, state, reference


async def save_many_shallow(models: Sequence[ExternalBaseModel]) -> list[ExternalReference]:
    """Store models without rewriting the already stored external models they hold."""
    return await save_many(models, shallow=True)


async def save_many(models: Sequence[ExternalBaseModel], *, shallow: bool = False) -> list[ExternalReference]:
    """Store models and every external model they hold: one batch per backend.

    The models passed are always written (that refreshes their ttl); the models they hold only
    when their data changed, as in a dump.
    """
    leaves = _collect_leaves(models)
    if leaves is not None:
        batches, references = leaves
        await runtime.gather_all(batch.write() for batch in batches)
        return references
    write_set, references = _collect_saves(models, shallow)
    await write_set.flush()
    return references


# What a `_LeafGuard` gives the serializer for the model it met: the data holding it is discarded.
_STAND_IN = ExternalReference.trusted("", UUID(int=0))


class _LeafGuard(WriteSet):
    """Stands where a save of leaf models would have its write set, only noticing whether a model
    or a `Toast` value joins it: a schema tells what a field validates, not what it may hold (an
    `Any` or `object` field may hold an external model, a field_serializer may return one).

    Nothing is collected: what met it is serialized no further (a stand-in reference takes its
    place in data that is then thrown away) and the general path saves the batch instead.
    """

    def __init__(self) -> None:  # none of the write set's bookkeeping: only its instant
        self._now = datetime.now(UTC)
        self.met = False

    def add(self, model: ExternalBaseModel, *, force: bool = False) -> ExternalReference | None:
        self.met = True
        return _STAND_IN

    def add_value(
        self, settings: ModelSettings, encode: Callable[[], tuple[UUID, bytes]]
    ) -> ExternalReference:
        self.met = True
        return _STAND_IN


class _LeafBatch:
    """One backend's records of a `save_many` of leaf models: what a `WriteSet` would write for
    them, built without its bookkeeping (they point at nothing, so there is nothing to order)."""

    __slots__ = ("checked", "digests", "names", "raw", "records", "seconds", "states", "url")

    def __init__(self, settings: ModelSettings) -> None:
        self.url = settings.url
        self.seconds = settings.timeout
        # By the id's int, as `WriteSet._write` does: two instances of one record, the last wins.
        self.records: dict[int, StoredRecord] = {}
        self.states: list[RecordState] = []
        self.digests: list[bytes] = []
        self.raw: dict[int, int] = {}  # the JSON's size, before any codec
        self.names: dict[str, str] = {}
        self.checked = False  # a class of the batch has optimistic_concurrency

    async def write(self) -> None:
        batch = list(self.records.values())
        await _send(
            self.url,
            self.seconds,
            batch,
            sum(self.raw.values()),
            self.states,
            lambda: self.names,
            checked=self.checked,
        )
        for state, data_digest in zip(self.states, self.digests, strict=True):
            state.wrote(data_digest)


def _collect_leaves(
    models: Sequence[ExternalBaseModel],
) -> tuple[Iterable[_LeafBatch], list[ExternalReference]] | None:
    """The batches and references of a `save_many` whose models are all of leaf classes, or None.

    A leaf class holds no external model and no `Toast` value (decided once per class, from its
    schema) and is not content-addressed: its instances' records point at nothing, so a save of
    them needs no `WriteSet` (no per-model entry, no ordering, no stages). The behaviour is the
    write set's: every model passed is written (so unchanged ones too, refreshing their ttl), a
    record that would not load back is refused and sizes are checked before anything is sent.
    """
    writers: dict[type[ExternalBaseModel], tuple[_ClassWriter, _LeafBatch]] = {}
    batches: dict[str, _LeafBatch] = {}
    for cls in set(map(type, models)):
        writer = _ClassWriter.of(cls)
        settings = writer.settings
        if not writer.leaf:
            return None
        batch = batches.get(settings.url.raw)
        if batch is None:
            batch = batches[settings.url.raw] = _LeafBatch(settings)
        batch.seconds = max(batch.seconds, settings.timeout)
        batch.checked = batch.checked or settings.optimistic_concurrency
        batch.names[settings.storage_name] = writer.name
        writers[cls] = (writer, batch)
    guard = _LeafGuard()
    now = guard._now
    references: list[ExternalReference] = []
    current: type[ExternalBaseModel] | None = None
    token = _write_set.set(guard)
    try:
        for model in models:
            if type(model) is not current:  # per run of one class, not per model: hoisted
                current = type(model)
                writer, batch = writers[current]
                settings = writer.settings
                stored_data, name, version = (
                    writer.stored_data,
                    settings.storage_name,
                    settings.schema_version,
                )
                expires = None if settings.ttl is None else now + settings.ttl
                plain = settings.codec is None and not settings.optimistic_concurrency
                sized = settings.warn_size is not None or settings.max_size is not None
                records, raw, states, digests = batch.records, batch.raw, batch.states, batch.digests
            state = state_of(model)
            record_id = state.id
            if record_id is None:  # the first save, identified before its data as `add` does
                record_id = state.id = uuid4()
            created = state.created_at
            if created is None:
                created = state.created_at = now
            references.append(state.reference(name))
            data = stored_data(model)
            if sized:
                observability.check_size(writer.name, settings, len(data))
            if plain:  # `_record_of` without its codec stage and revision
                record = StoredRecord(
                    record_id, name, data, version, created, now, expires, codecs.JSON, None
                )
            else:
                record = _record_of(state, settings, data, now)
            number = record_id.int
            records[number] = record
            raw[number] = len(data)
            states.append(state)
            digests.append(digest(data))
    finally:
        _write_set.reset(token)
    if guard.met:
        return None
    return batches.values(), references


def save_sync(model: ExternalBaseModel) -> ExternalReference:
    """`save` for sync callers: collected here, written by the library's I/O thread."""
    write_set, [reference] = _collect_saves([model], False)
    flush_sync(write_set)
    return reference


def _collect_saves(
    models: Sequence[ExternalBaseModel], shallow: bool
) -> tuple[WriteSet, list[ExternalReference]]:
    # collecting_writes() without the generator-based context manager: this is every save's path.
    write_set = WriteSet(shallow=shallow)
    token = _write_set.set(write_set)
    try:
        references = [write_set.store(model) for model in models]
    finally:
        _write_set.reset(token)
    return write_set, references


def dump(value: Any, **kwargs: Any) -> Any:
    """Dump any pydantic value; every external model inside is written in one batch per backend."""
    with collecting_writes() as write_set:
        result = _dump_collecting(value, kwargs)
    flush_sync(write_set)
    return result


async def adump(value: Any, **kwargs: Any) -> Any:
    """Async twin of `dump`: the batch is written on the running loop."""
    with collecting_writes() as write_set:
        result = _dump_collecting(value, kwargs)
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


async def delete(cls: type[ExternalBaseModel], reference: ExternalReference) -> bool:
    settings = resolve_class(cls, reference).__toast_settings__
    key = reference.id
    return await runtime.execute(
        settings.url, settings.timeout, lambda backend: backend.delete(key, reference.class_name)
    )
