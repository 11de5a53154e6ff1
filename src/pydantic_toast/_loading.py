"""Loading: recognising references, fetching records level by level and building models bottom up.

`validate` (the model's wrap validator) recognises a reference, checks it before any I/O and
loads the record; anything else validates as ordinary pydantic data. `TreeLoader` loads a tree of
external models in one round trip per level, and `materialize` turns one fetched record into a
model; a record that does not validate is reported by `stored_data_error` without its values.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator, Mapping, Sequence
from contextvars import ContextVar
from itertools import repeat
from operator import attrgetter, is_not, itemgetter
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, cast
from uuid import UUID

import pydantic_core
from pydantic import ValidationInfo, ValidatorFunctionWrapHandler

from . import _direct, _record_state, runtime
from ._content_models import check_loaded
from ._pydantic_internals import (
    StoredReference,
    collect_placeholders,
    core_validator,
    fill_placeholders,
    holds_references,
    inner_validator,
    names_are_keys,
    runs_no_user_code,
    schema_names,
    stored_reader,
)
from ._record_state import RecordState, keep_record
from ._settings import DEFAULT_TIMEOUT, ModelSettings, resolve_class, settings_of
from ._writing import WriteSet, collecting_writes, flush_sync
from .backends.base import StoredRecord
from .exceptions import ExternalStorageError, RecordNotFoundError, StorageValidationError, StoredDataError
from .reference import ExternalReference, looks_like_reference, parse_reference, uuid_from_text
from .upgrades import upgraded_data

if TYPE_CHECKING:
    from pydantic_core import SchemaValidator

    from .base import ExternalBaseModel

__all__ = [
    "PENDING",
    "ContentReader",
    "TreeLoader",
    "fetch_record",
    "json_options",
    "load",
    "load_blocking",
    "load_many",
    "load_sync",
    "load_value_sync",
    "materialize",
    "read_value",
    "validate",
]

M = TypeVar("M", bound="ExternalBaseModel")
T = TypeVar("T")

json_options: ContextVar[dict[str, Any] | None] = ContextVar("pydantic_toast_json_options", default=None)
"""The call-time flags (strict, extra, by_alias, by_name) of an external model's own
`model_validate_json`: pydantic does not show them to a wrap validator, and JSON data is validated
again as JSON (see `validate`), so the entry point hands them over here."""


def validate(
    cls: type[ExternalBaseModel], value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
) -> Any:
    """The wrap validator of every external model."""
    loader = _tree_loader.get()
    if type(loader) is TreeLoader and type(value) is dict and len(value) == 2:
        # A reference in a record being loaded: validated again when its parent is rebuilt, so
        # it is parsed (and its class resolved) once per load; unless the parent is filled in
        # place (`_handed`), validated once, where the cache would cost more than it saves.
        name, text = value.get("class_name"), value.get("id")
        if type(name) is str and type(text) is str:
            if loader._handed is not None:
                known = loader.reference_to(cls, value, name, text)
            else:
                key = (cls, name, text)
                known = loader.references.get(key)
                if known is None:
                    known = loader.reference_to(cls, value, name, text)
                    if known is not None:
                        loader.references[key] = known
            if known is not None:
                return loader.resolve_id(cls, known[0], name, known[1])
    if _is_reference(cls, value):
        reference = parse_reference(value, expected_class=cls.__toast_settings__.storage_name)
        return load_sync(cls, reference, info.context)
    if info.mode == "json" and not isinstance(value, cls):
        # (An instance in JSON mode was built already and handed on by a validator around this
        # one, such as a Toast field's: it is not JSON input.)
        # A wrap validator hands JSON input over as Python objects, and validating those in
        # Python mode breaks JSON-only semantics (strict datetimes, base64 bytes): re-validate
        # as JSON with the schema below this hook (pydantic runs the validators above it).
        options = json_options.get() or {}
        # Data from the caller: a new, unsaved record (its state is made on first use).
        validator = core_validator(cls)
        return validator.validate_json(pydantic_core.to_json(value), context=info.context, **options)
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


# (storage URL, id as an int, class_name): UUID hashing is Python-level, int hashing is not.
_RecordKey = tuple[str, int, str]

# What loading a class's records reads from it, looked up once per class and load: an attribute
# of a pydantic model class is read through its metaclass's __getattr__ hook, several times
# slower than a dict: (settings, storage URL, holds references, validator, core validator, whether
# its records validate with no keyword: see `materialize`).
_ClassReading = tuple["ModelSettings", str, bool, "SchemaValidator", "SchemaValidator", bool]


def class_reading(cls: type[ExternalBaseModel]) -> _ClassReading:
    # Kept on the class itself (its own __dict__, never a base's): ~9,000 instructions to gather
    # on every load otherwise, and a module-level cache would keep every class alive through
    # its validators.
    reading: _ClassReading | None = cls.__dict__.get("__toast_reading__")
    if reading is None:
        settings = settings_of(cls)  # an abstract class: the error coerce_reference gives it
        holds = holds_references(cls)
        plain = names_are_keys(cls) and settings.codec is None and not settings.content_addressed
        reading = (settings, settings.url.raw, holds, inner_validator(cls), core_validator(cls), plain)
        type.__setattr__(cls, "__toast_reading__", reading)
    return reading


class _NotBuiltYetError(ValueError):
    """Raised for a nested reference whose model is not built yet.

    Pydantic records it and goes on, so one validation of a record finds every reference it holds,
    and no validator of the user's ever sees a placeholder; that validation is then discarded.
    """


_PENDING = object()
"""Returned instead of raising `_NotBuiltYetError` while validating data whose schema runs no
user code, where nobody can see it: raising costs more than the rest of resolving a reference."""


class _Placeholder:
    """What a nested reference's validator returns, in data whose schema runs no user code, for a
    model not built yet: the model built around it is kept, and each placeholder is swapped for
    its model in place once built (`TreeLoader._fill`), instead of validating the record again."""

    __slots__ = ("class_name", "cls", "id", "leaf", "model", "target")

    def __init__(
        self,
        cls: type[Any],
        target: type[Any],
        class_name: str,
        id: UUID,
        leaf: tuple[_ModelKey, _RecordKey, _ClassReading] | None,
    ) -> None:
        self.cls = cls
        self.target = target
        self.class_name = class_name
        self.id = id
        # For a class holding no references: what resolving it again looks up, kept (see _fill).
        self.leaf = leaf
        self.model: object = None


# A model to build: the record's key, and whether it is built with the validators above our hook.
# A reference validated through a field of its own class is built with the schema below our hook
# (pydantic runs the rest on the returned instance); a root of `load`/`load_many`, or a subclass
# loaded through a base-class field, is built with everything but our hook.
_ModelKey = tuple[str, int, str, bool]


# A parent's references to one leaf class, all fetched by the next fetch: (class, what loading it
# reads, ids in the order of the parent's placeholders; if fetched on their own: their records in
# that order, and the ids as ints where one repeats, else None: the records are the loader's).
_LeafBatch = tuple[
    type[Any], _ClassReading, list[UUID], "list[StoredRecord | None] | None", "list[int] | None"
]


class _Node:
    """A model whose class can hold references: it may have to wait for the models it refers to."""

    __slots__ = ("batch", "children", "cls", "key", "missing", "model", "model_key", "partial", "waiting")

    def __init__(self, cls: type[ExternalBaseModel], model_key: _ModelKey) -> None:
        self.cls = cls
        self.model_key = model_key
        self.key: _RecordKey = model_key[:3]
        self.model: ExternalBaseModel | None = None
        self.missing = False
        self.waiting = 0  # what it waits for: unbuilt nodes, unfetched records
        self.children: list[_Node] = []  # the nodes among those, for naming a cycle
        # Built around placeholders: the model and the placeholders it holds (see `_Placeholder`).
        self.partial: tuple[ExternalBaseModel, list[_Placeholder] | list[StoredReference]] | None = None
        # With `partial`, when every reference it holds is to one leaf class and was unfetched
        # (see `_want_batch`).
        self.batch: _LeafBatch | None = None


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
        self._batches: list[_Node] = []  # nodes whose `batch` the next fetch reads
        self._fetched_names: set[str] = set()  # the class names among `_records`' keys
        self._blocked: set[_Node] | None = None
        self._blocked_on_fetch = False
        self._placeholders = False  # may resolve() return _PENDING rather than raise
        # The placeholders handed out while building one node, if it may be filled in place.
        self._handed: list[_Placeholder] | None = None
        self._upgraded: dict[_RecordKey, ExternalBaseModel] = {}
        # (class validating it, class_name, id text) -> (class it loads as, id): see `validate`.
        self.references: dict[tuple[type[Any], str, str], tuple[type[Any], UUID]] = {}
        self._classes: dict[type[Any], _ClassReading] = {}
        self._roots: list[tuple[type[ExternalBaseModel], _RecordKey, _ModelKey, _Node | None]] = []
        append, wanted = self._roots.append, self._wanted
        last: type[ExternalBaseModel] | None = None
        for cls, reference, full in roots:
            if cls is not last:  # roots are mostly of one class: look its settings up once
                reading = self._reading(cls)
                last, settings, url, holds = cls, reading[0], reading[1], reading[2]
            number, name = reference.id.int, reference.class_name
            key = (url, number, name)
            if fetched is not None:
                self._records[key] = fetched
                self._fetched_names.add(name)
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
        settings = [settings for settings, _ in self._wanted.values()]
        settings.extend(cast(_LeafBatch, node.batch)[1][0] for node in self._batches)
        return max(map(_timeout, settings), default=DEFAULT_TIMEOUT)

    async def fetch_wanted(self) -> None:
        """Fetch every collected reference: one `load_records` call per backend, concurrently."""
        batches, self._batches = self._batches, []
        if len(batches) == 1 and not self._wanted and len(self._nodes) == 1:
            # One parent and its children, the whole tree: they are fetched as `load_many`
            # fetches, without the keys that share records between nodes (there is no other).
            [node] = batches
            target, reading, ids, _, _ = cast(_LeafBatch, node.batch)
            settings, name = reading[0], reading[0].storage_name
            numbers = list(map(_int, ids))
            unique = dict(zip(numbers, ids, strict=True))
            if len(unique) == len(ids):
                found = await _fetch_many(settings, list(zip(ids, repeat(name))))
                node.batch = (target, reading, ids, found, None)
            else:  # a repeated child is read once, and built once
                found = await _fetch_many(settings, list(zip(unique.values(), repeat(name))))
                by_number = dict(zip(unique, found, strict=True))
                node.batch = (target, reading, ids, list(map(by_number.__getitem__, numbers)), numbers)
        else:
            for node in batches:
                ids, settings = cast(_LeafBatch, node.batch)[2], cast(_LeafBatch, node.batch)[1][0]
                keys = self._keys(ids, settings)
                self._wanted.update(zip(keys, zip(repeat(settings), ids, strict=False), strict=True))
        if self._wanted:
            await self._fetch_keys()
        # Every record wanted so far is now fetched or known missing.
        for node in self._after_fetch:
            node.waiting -= 1
            if node.waiting == 0:
                self._ready.append(node)
        self._after_fetch = []

    async def _fetch_keys(self) -> None:
        wanted, self._wanted = self._wanted, {}
        # Per-key work in C where it can be (map, zip): a level holds many references.
        keys = list(wanted)
        groups: dict[str, list[_RecordKey]] = {}
        if len(set(map(_first, keys))) == 1:
            groups[keys[0][0]] = keys
        else:
            for key in keys:
                groups.setdefault(key[0], []).append(key)

        async def fetch_group(keys: list[_RecordKey]) -> None:
            entries = list(map(wanted.__getitem__, keys))
            settings = entries[0][0]
            self._fetched_names.update(map(_third, keys))
            pairs = list(zip(map(_second, entries), map(_third, keys), strict=True))
            timeout = max(map(_timeout, map(_first, entries)))
            found = await runtime.execute(settings.url, timeout, lambda backend: backend.load_records(pairs))
            records, unfetched = self._records, self._unfetched
            if not unfetched and all(map(is_not, found, repeat(None))):
                records.update(zip(keys, cast(list[StoredRecord], found), strict=True))
                return
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

        await runtime.gather_all(fetch_group(keys) for keys in groups.values())

    @staticmethod
    def _keys(ids: list[UUID], settings: ModelSettings) -> list[_RecordKey]:
        return list(zip(repeat(settings.url.raw), map(_int, ids), repeat(settings.storage_name)))

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
                        model = self._build_simple(cls, model_key, record, self._reading(cls))
                    models.append(model)
            else:
                return models
        finally:
            json_options.reset(options_token)
            _tree_loader.reset(loader_token)
        if not self._wanted and not self._batches:
            raise self._cycle_error()
        return None

    def _reading(self, cls: type[Any]) -> _ClassReading:
        reading = self._classes.get(cls)
        if reading is None:
            reading = self._classes[cls] = class_reading(cls)
        return reading

    def reference_to(
        self, cls: type[ExternalBaseModel], value: dict[Any, Any], name: str, text: str
    ) -> tuple[type[Any], UUID] | None:
        """(class it loads as, id) if `value`, a dict of a str class_name and id, is a reference
        when validated as `cls`; else None (it is data)."""
        reading = self._classes.get(cls)  # known once a reference of this class was resolved
        settings = getattr(cls, "__toast_settings__", None) if reading is None else reading[0]
        if settings is not None and name == settings.storage_name:
            # The common case, a reference to the field's own class: what the checks below
            # conclude for it, with the id parsed once.
            record_id = uuid_from_text(text)
            if record_id is not None:
                return cls, record_id
        if not _is_reference(cls, value):
            return None
        reference = parse_reference(value, expected_class=cls.__toast_settings__.storage_name)
        return resolve_class(cls, reference), reference.id

    def _build_simple(
        self, cls: type[ExternalBaseModel], model_key: _ModelKey, record: StoredRecord, reading: _ClassReading
    ) -> ExternalBaseModel:
        """Build a model of a class that holds no references: it never waits for anything."""
        model = materialize_checked(cls, record, model_key[3], self._context, reading)
        self._built[model_key] = model
        if record.schema_version < reading[0].schema_version:
            self._note_upgraded(cls, model_key[:3], model)
        return model

    def _build(self, node: _Node) -> None:
        record = self._records[node.key]
        partial = node.partial
        if partial is not None:
            node.partial = None
            batch, node.batch = node.batch, None
            if (
                self._fill_batch(partial[0], cast(list[StoredReference], partial[1]), batch)
                if batch is not None
                else self._fill(*partial)
            ):
                self._finish(node, record, partial[0])
                return
            # Not provably what validating it again gives: validated again, as below.
        elif runs_no_user_code(node.cls, node.model_key[3]):
            reader = stored_reader(node.cls)
            if reader is not None and self._read_stored(node, record, *reader):
                return
        blocked: set[_Node] = set()
        self._blocked = blocked
        self._blocked_on_fetch = False
        self._placeholders = runs_no_user_code(node.cls, node.model_key[3])
        self._handed = [] if self._placeholders else None
        handed: list[_Placeholder] | None = None
        failure: StoredDataError | None = None
        model: ExternalBaseModel | None = None
        try:
            model = materialize(node.cls, record, node.model_key[3], self._context, self._reading(node.cls))
        except pydantic_core.ValidationError as exc:
            if not blocked and not self._blocked_on_fetch:
                failure = stored_data_error(node.cls, record, exc)
        finally:
            self._blocked = None
            handed, self._handed = self._handed, None
        if failure is not None:
            raise failure  # outside the except block, as in materialize_checked
        if blocked or self._blocked_on_fetch:
            # Collected only, or validated around a reference pydantic skipped: build it again
            # once everything it refers to is there; or, built around placeholders only (no
            # user code saw them), fill them in then.
            if model is not None and handed:
                node.partial = (model, handed)
            node.waiting = len(blocked)
            node.children = list(blocked)
            for child in blocked:
                self._waiters.setdefault(child, []).append(node)
            if self._blocked_on_fetch:
                node.waiting += 1
                self._after_fetch.append(node)
            return
        assert model is not None
        self._finish(node, record, model)

    def _read_stored(
        self, node: _Node, record: StoredRecord, validator: SchemaValidator, names: dict[str, type[Any]]
    ) -> bool:
        """Build `node` with its class's stored reader (see `stored_reader`): its references to
        leaf classes come back as `StoredReference`s, resolved here, not through our hook once
        each. False (nothing kept) if anything is not as the validation with the hook would
        have it: that validation then runs as before and builds, waits or raises as it does."""
        self._blocked = set()
        self._blocked_on_fetch = False
        self._placeholders = False  # our hook, on input the reader leaves to it: no placeholders
        self._handed = None
        classes, built, records, wanted = self._classes, self._built, self._records, self._wanted
        pending = False
        try:
            model = materialize(
                node.cls, record, node.model_key[3], self._context, self._reading(node.cls), validator
            )
            if self._blocked or self._blocked_on_fetch:
                return False
            found = collect_placeholders(model, StoredReference)
            if len(names) == 1 and found and self._want_batch(node, model, found, names):
                return True
            last = None
            for reference in found:
                name, record_id = reference.class_name, reference.id
                if name != last:  # mostly one class: its lookups once
                    last, target = name, names[name]
                    reading = classes.get(target) or self._reading(target)
                    settings, url = reading[0], reading[1]
                # What resolve_id does for a reference to a class holding no references.
                model_key = (url, record_id.int, name, False)
                child = built.get(model_key)
                if child is None:
                    key = model_key[:3]
                    stored = records.get(key)
                    if stored is not None:
                        child = self._build_simple(target, model_key, stored, reading)
                    elif key in self._missing:
                        return False
                    else:
                        wanted[key] = (settings, record_id)
                        # What _fill reads of a placeholder still to resolve.
                        reference.leaf = (model_key, key, reading)
                        reference.cls = reference.target = target
                        pending = True
                reference.model = child
        except Exception:  # noqa: BLE001 - validating with the hook raises it where it belongs
            return False
        finally:
            self._blocked = None
        if pending:
            node.partial = (model, found)
            node.waiting = 1
            node.children = []
            self._after_fetch.append(node)
            return True
        if found and not fill_placeholders(model, StoredReference, len(found)):
            return False
        self._finish(node, record, model)
        return True

    def _want_batch(
        self, node: _Node, model: ExternalBaseModel, found: list[StoredReference], names: dict[str, type[Any]]
    ) -> bool:
        """The common first sight of a parent's children: references to one leaf class (the
        stored reader's only one), none of them built, fetched or known missing yet. They join
        the next fetch as one batch (see `fetch_wanted`), read by `_fill_batch`, where
        `_read_stored`'s loop would resolve each; False (nothing done) for anything else."""
        [(name, target)] = names.items()
        reading = self._classes.get(target) or self._reading(target)
        settings = reading[0]
        ids = list(map(_id, found))
        built, missing = self._built, self._missing
        # Keys are made only where a record of the class may be known already.
        if built or missing or name in self._fetched_names:
            keys = self._keys(ids, settings)
            if (
                any(map(self._records.__contains__, keys))
                or any(map(missing.__contains__, keys))
                or any(map(built.__contains__, [(*key, False) for key in keys]))
            ):
                return False
        node.partial = (model, found)
        node.batch = (target, reading, ids, None, None)
        self._batches.append(node)
        node.waiting = 1
        node.children = []
        self._after_fetch.append(node)
        return True

    def _fill_batch(self, model: ExternalBaseModel, found: list[StoredReference], batch: _LeafBatch) -> bool:
        """`_fill` of a parent whose references `_want_batch` sent to the fetch: each child is
        built as `_build_simple` builds it (a repeated or meanwhile built one is the built
        instance), then swapped in. False (nothing to keep) when a record is missing or a child
        fails to build: the parent is then validated again, which raises or builds as before."""
        target, reading, ids, fetched, numbers = batch
        settings = reading[0]
        keys: list[_RecordKey] | None = None
        # The models built so far, by what tells a child from the others: the loader's own (by
        # model key) when other nodes share them; by number when a child repeats and nobody else
        # shares them; none when neither.
        cache: dict[Any, ExternalBaseModel] | None = None
        cache_keys: list[Any] | None = numbers
        if fetched is None:
            keys = self._keys(ids, settings)
            fetched = list(map(self._records.get, keys))
            cache, cache_keys = self._built, [(*key, False) for key in keys]
        elif numbers is not None:
            cache = {}
        if not all(map(is_not, fetched, repeat(None))):
            if keys is None:
                self._keep_fetched(ids, settings, fetched)
            return False
        stored = cast(list[StoredRecord], fetched)
        context = self._context
        current = settings.schema_version
        # What `materialize` does for the common record, in line, as in `_load_leaves`.
        plain = reading[5] and context is None
        validate, set_state = reading[4].validate_json, _record_state._set
        children: list[ExternalBaseModel] = []
        append = children.append
        try:
            for cache_key, record in zip(
                repeat(None) if cache_keys is None else cache_keys, stored, strict=False
            ):
                if cache is not None:
                    child = cache.get(cache_key)
                    if child is not None:
                        append(child)
                        continue
                if plain and record.schema_version == current and record.encoding == "json":
                    data = record.payload
                    child = validate(data)
                    set_state(
                        child, RecordState(record.id, record.created_at, None, None, data, record.revision)
                    )
                else:
                    child = materialize(target, record, False, context, reading)
                if cache is not None:
                    cache[cache_key] = child
                append(child)
        except Exception:  # noqa: BLE001 - validating again raises it where it belongs
            if keys is None:
                self._keep_fetched(ids, settings, fetched)
            return False
        if min(map(_schema_version, stored)) < current:
            for key, record, child in zip(self._keys(ids, settings), stored, children, strict=True):
                if record.schema_version < current:
                    self._note_upgraded(target, key, child)
        return fill_placeholders(model, StoredReference, len(found), children)

    def _keep_fetched(
        self, ids: list[UUID], settings: ModelSettings, fetched: list[StoredRecord | None]
    ) -> None:
        """Records a batch fetched on its own, kept as the loader's: validating its parent again
        then finds them (or knows them missing) as it would have."""
        for key, record in zip(self._keys(ids, settings), fetched, strict=True):
            if record is None:
                self._missing.add(key)
            else:
                self._records[key] = record
        self._fetched_names.add(settings.storage_name)

    def _finish(self, node: _Node, record: StoredRecord, model: ExternalBaseModel) -> None:
        node.model = model
        if record.schema_version < node.cls.__toast_settings__.schema_version:
            self._note_upgraded(node.cls, node.key, model)
        self._settled(node)

    def _fill(self, model: ExternalBaseModel, handed: list[_Placeholder] | list[StoredReference]) -> bool:
        """Swap each placeholder in `model` for its model, now that all are fetched or built.

        Each is resolved as validating the record again would resolve it, in the same order;
        pydantic-core, running no user code, put each returned object where it now puts the
        placeholder, so the result is the same model. False (nothing to keep) when a reference
        would fail now, or a placeholder is not where the walk looks: then it is validated again,
        which raises or builds exactly as before.
        """
        self._blocked = set()
        self._blocked_on_fetch = False
        self._placeholders = True  # a reference still unbuilt gives _PENDING, not an exception
        built, records = self._built, self._records
        try:
            for placeholder in handed:
                child: object = placeholder.model  # resolved already (a stored reader's)
                leaf = placeholder.leaf if child is None else None
                if leaf is not None:
                    # What resolve_id does for a class holding no references, its keys made once.
                    model_key, key, reading = leaf
                    child = built.get(model_key)
                    if child is None and (record := records.get(key)) is not None:
                        child = self._build_simple(placeholder.target, model_key, record, reading)
                if child is None:
                    child = self.resolve_id(
                        placeholder.cls, placeholder.target, placeholder.class_name, placeholder.id
                    )
                placeholder.model = child
        except Exception:  # noqa: BLE001 - validating again raises it where it belongs
            return False
        finally:
            blocked, self._blocked = self._blocked, None
        if blocked or self._blocked_on_fetch:
            return False
        return fill_placeholders(model, type(handed[0]), len(handed))

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
        """Called by a nested reference's validator while a record of this tree is validated."""
        return self.resolve_id(cls, target, reference.class_name, reference.id)

    def resolve_id(self, cls: type[M], target: type[M], name: str, record_id: UUID) -> M:
        """`resolve` of the reference (name, record_id).

        The hot path of loading a tree: once per reference and pass, hence the inlined lookups.
        """
        reading = self._classes.get(target) or self._reading(target)
        settings, url = reading[0], reading[1]
        number = record_id.int
        model_key = (url, number, name, target is not cls)
        model = self._built.get(model_key)
        if model is not None:
            return cast(M, model)
        key = (url, number, name)
        if reading[2]:  # a node, built when everything it refers to is
            node = self._node(target, model_key)
            if node.model is not None:
                return cast(M, node.model)
            if not node.missing:
                if key not in self._records:
                    self._wanted[key] = (settings, record_id)
                assert self._blocked is not None
                self._blocked.add(node)
                if self._placeholders:
                    return self._placeholder(cls, target, name, record_id, None)
                raise _NotBuiltYetError
        else:
            record = self._records.get(key)
            if record is not None:
                return cast(M, self._build_simple(target, model_key, record, reading))
            if key not in self._missing:
                self._wanted[key] = (settings, record_id)
                self._blocked_on_fetch = True
                if self._placeholders:
                    return self._placeholder(cls, target, name, record_id, (model_key, key, reading))
                raise _NotBuiltYetError
        raise RecordNotFoundError(name, record_id)

    def _placeholder(
        self,
        cls: type[M],
        target: type[M],
        name: str,
        record_id: UUID,
        leaf: tuple[_ModelKey, _RecordKey, _ClassReading] | None,
    ) -> M:
        handed = self._handed
        if handed is None:
            return cast(M, _PENDING)
        placeholder = _Placeholder(cls, target, name, record_id, leaf)
        handed.append(placeholder)
        return cast(M, placeholder)

    def resolve_value(self, reader: ContentReader, reference: ExternalReference) -> Any:
        """Called by a `Toast` value's validator for a reference met while a record of this tree is
        validated: the value once its record is fetched; until then the reference joins the next
        fetch, one batch per backend with the models of the same level."""
        settings = reader.settings
        # A value's own constraints run on what it reads, placeholders included: a record holding
        # one is validated again, never filled in place.
        self._handed = None
        key = (settings.url.raw, reference.id.int, reference.class_name)
        record = self._records.get(key)
        if record is None:
            if key in self._missing:
                raise RecordNotFoundError(reference.class_name, reference.id)
            self._wanted[key] = (settings, reference.id)
            self._blocked_on_fetch = True
            if self._placeholders:
                return _PENDING
            raise _NotBuiltYetError
        try:
            return reader.read(record, self._context)
        except pydantic_core.ValidationError as exc:
            if self._blocked or self._blocked_on_fetch:
                # The value refers to models not built yet: validated again once they are.
                if self._placeholders:
                    return _PENDING
                raise _NotBuiltYetError from None
            failure = reader.failure(record, exc)
        raise failure

    def write_back(self) -> WriteSet | None:
        """The upgraded models of this load, to store at their new version, if any."""
        if not self._upgraded:
            return None
        models = list(self._upgraded.values())
        self._upgraded.clear()
        return _rewrite(models)

    def run(self) -> _Steps[list[ExternalBaseModel]]:
        """Build, fetching each further level of references in one batch, then write back."""
        while (models := self.build()) is None:
            yield self.fetch_wanted(), self
        write_back = self.write_back()
        if write_back is not None:
            yield write_back.flush(), write_back
        return models


_tree_loader: ContextVar[TreeLoader | None] = ContextVar("pydantic_toast_tree_loader", default=None)


def load_sync(cls: type[M], reference: ExternalReference, context: Any = None) -> M:
    target = resolve_class(cls, reference)
    loader = _tree_loader.get()
    if loader is not None:
        return loader.resolve(cls, target, reference)
    # Reached through pydantic: it runs this class's validators above our hook on the result.
    full = target is not cls
    direct = _leaf_directly(target, reference, full, context)
    if direct is not None:
        return direct
    return _drive_sync(_load_one(target, reference, full, context))


async def load(cls: type[M], reference: ExternalReference, context: Any = None) -> M:
    reading = class_reading(cls)
    target = cls if reading[0].storage_name == reference.class_name else resolve_class(cls, reference)
    if target is not cls:
        reading = class_reading(target)
    if reading[2]:
        return await _drive(_load_one(target, reference, True, context))
    # A class holding no references, the common load: its steps awaited in line.
    model, write_back = _leaf(target, await _fetch_one(reading[0], reference), True, context, reading)
    if write_back is not None:
        await write_back.flush()
    return model


def load_blocking(cls: type[M], reference: ExternalReference, context: Any = None) -> M:
    """`load` for sync callers: the same steps, driven through the library's I/O thread."""
    target = resolve_class(cls, reference)
    direct = _leaf_directly(target, reference, True, context)
    if direct is not None:
        return direct
    return _drive_sync(_load_one(target, reference, True, context))


def _leaf_directly(cls: type[M], reference: ExternalReference, full: bool, context: Any) -> M | None:
    """A sync load of a class holding no references, read in the calling thread where its
    store's sync client serves it (`_direct.py`); None, having read nothing, when the load must
    take the I/O thread instead."""
    reading = class_reading(cls)
    if reading[2]:
        return None
    record = _direct.fetch_record(reading[0], reference, runtime.in_io_thread())
    if record is None:
        return None
    model, write_back = _leaf(cls, record, full, context, reading)
    if write_back is not None:
        flush_sync(write_back)
    return model


async def load_many(cls: type[M], references: Sequence[ExternalReference], context: Any = None) -> list[M]:
    """Load models in order; every missing id is reported in one RecordNotFoundError."""
    if not references:
        return []
    reading = class_reading(cls)
    if not reading[2]:
        storage_name = reading[0].storage_name
        if all(map(storage_name.__eq__, map(_class_name, references))):
            # The common batch: one class whose data refers to no external model, so no waiting.
            return await _drive(_load_leaves(cls, references, context))
    roots: list[tuple[type[ExternalBaseModel], ExternalReference, bool]] = [
        (resolve_class(cls, reference), reference, True) for reference in references
    ]
    return cast(list[M], await _drive(TreeLoader(roots, context).run()))


_class_name, _id, _int = attrgetter("class_name"), attrgetter("id"), attrgetter("int")
_first, _second, _third, _timeout = itemgetter(0), itemgetter(1), itemgetter(2), attrgetter("timeout")
_schema_version = attrgetter("schema_version")


def _load_leaves(cls: type[M], references: Sequence[ExternalReference], context: Any) -> _Steps[list[M]]:
    """`load_many` of references to `cls` itself, a class that holds no references: what
    `TreeLoader` does for them (one fetch, each record once, every missing id in one error, the
    same instance for a repeated reference, upgrades written back), without its bookkeeping."""
    reading = class_reading(cls)
    settings = reading[0]
    # id as an int -> id: UUID hashing is Python-level, int hashing is not. (Per reference in C,
    # map and zip; a repeated id keeps its last UUID object, an equal one.)
    record_ids = list(map(_id, references))
    numbers = list(map(_int, record_ids))
    ids = dict(zip(numbers, record_ids, strict=True))
    del record_ids
    name = settings.storage_name
    pairs = list(zip(ids.values(), repeat(name)))
    found: list[StoredRecord | None] = yield _fetch_many(settings, pairs), settings
    del pairs
    if not all(map(is_not, found, repeat(None))):
        missing = [record_id for record_id, record in zip(ids.values(), found, strict=True) if record is None]
        raise RecordNotFoundError(name, missing)
    current = settings.schema_version
    models: list[M] = []
    append = models.append
    upgraded: list[ExternalBaseModel] = []
    # What `materialize` does for the common record, in line: a call per record less.
    plain = reading[5] and context is None
    validate, set_state = reading[3].validate_json, _record_state._set
    failure: StoredDataError | None = None
    record: StoredRecord | None = None
    try:
        for index in range(len(found)):
            record = found[index]
            assert record is not None
            # Each record goes as soon as its model is built: a batch's peak memory is its models,
            # not its models and every record's bytes.
            found[index] = None
            if plain and record.schema_version == current and record.encoding == "json":
                data = record.payload
                model: M = validate(data)
                set_state(model, RecordState(record.id, record.created_at, None, None, data, record.revision))
            else:
                model = materialize(cls, record, True, context, reading)
                if record.schema_version < current and settings.upgrade_write_back:
                    upgraded.append(model)
            append(model)
    except pydantic_core.ValidationError as exc:  # once per batch
        assert record is not None
        failure = stored_data_error(cls, record, exc)
    if failure is not None:
        raise failure  # outside the except block: the ValidationError holds stored values
    if upgraded:
        write_back = _rewrite(upgraded)
        yield write_back.flush(), write_back
    if len(models) == len(numbers):
        return models
    built = dict(zip(ids, models, strict=True))  # a repeated id: the same instance each time
    return list(map(built.__getitem__, numbers))


def _fetch_many(settings: ModelSettings, pairs: list[tuple[UUID, str]]) -> Coroutine[Any, Any, Any]:
    return runtime.execute(settings.url, settings.timeout, lambda backend: backend.load_records(pairs))


def _load_one(cls: type[M], reference: ExternalReference, full: bool, context: Any) -> _Steps[M]:
    """Load one model of class `cls` (`full`: with the validators above our hook)."""
    reading = class_reading(cls)
    settings = reading[0]
    record = yield _fetch_one(settings, reference), settings
    if reading[2]:
        [root] = yield from TreeLoader([(cls, reference, full)], context, fetched=record).run()
        return cast(M, root)
    # No references, so nothing to wait for: no loader needed.
    model, write_back = _leaf(cls, record, full, context, reading)
    if write_back is not None:
        yield write_back.flush(), write_back
    return model


def _leaf(
    cls: type[M], record: StoredRecord, full: bool, context: Any, reading: _ClassReading
) -> tuple[M, WriteSet | None]:
    """The model of a record of a class that holds no references, and the write storing it
    again at its current version if it was upgraded (and upgrades are written back)."""
    model = materialize_checked(cls, record, full, context, reading)
    settings = reading[0]
    if record.schema_version < settings.schema_version and settings.upgrade_write_back:
        return model, _rewrite([model])
    return model, None


async def _fetch_one(settings: ModelSettings, reference: ExternalReference) -> StoredRecord:
    pair = [(reference.id, reference.class_name)]
    [record] = await runtime.execute(
        settings.url, settings.timeout, lambda backend: backend.load_records(pair)
    )
    if record is None:
        raise RecordNotFoundError(reference.class_name, reference.id)
    return record


PENDING = _PENDING


class ContentReader(Protocol):
    """How a content-addressed value (a `Toast` field) reads its record: see `load_value_sync`."""

    @property
    def settings(self) -> ModelSettings: ...

    def read(self, record: StoredRecord, context: Any) -> Any:
        """The value a record holds, checked; raises pydantic's ValidationError for bad data."""

    def failure(self, record: StoredRecord, exc: pydantic_core.ValidationError) -> StoredDataError:
        """`exc` (from `read`) without a stored value in it."""


def load_value_sync(reader: ContentReader, reference: ExternalReference, context: Any) -> Any:
    """A content-addressed value's reference, resolved: batched with the rest of the tree when a
    record is being loaded (`PENDING` may come back then), else fetched at once."""
    loader = _tree_loader.get()
    if loader is not None:
        return loader.resolve_value(reader, reference)
    settings = reader.settings
    record = _direct.fetch_record(settings, reference, runtime.in_io_thread())
    if record is None:
        record = runtime.run_sync(fetch_record(settings, reference), settings.timeout)
    return read_value(reader, record, context)


def read_value(reader: ContentReader, record: StoredRecord, context: Any) -> Any:
    failure: StoredDataError | None = None
    try:
        return reader.read(record, context)
    except pydantic_core.ValidationError as exc:
        failure = reader.failure(record, exc)
    raise failure  # outside the except block: the ValidationError holds stored values


async def fetch_record(settings: ModelSettings, reference: ExternalReference) -> StoredRecord:
    """One record, or RecordNotFoundError."""
    return await _fetch_one(settings, reference)


def _rewrite(models: list[ExternalBaseModel]) -> WriteSet:
    """Upgraded models, to store again at their current schema_version."""
    with collecting_writes() as write_set:
        for model in models:
            write_set.store(model)  # stored again whatever its offload_threshold
    return write_set


class _Timed(Protocol):
    @property
    def timeout(self) -> float: ...


_Steps: TypeAlias = Generator[tuple[Coroutine[Any, Any, Any], _Timed], Any, T]
"""A load as the I/O it needs, one step at a time: each step yields a coroutine to run (and what
bounds the sync caller's wait, read only when the step runs) and receives its result. One loop
serves both APIs: `_drive_sync` runs the steps on the I/O thread, `_drive` awaits them."""


def _drive_sync(steps: _Steps[T]) -> T:
    try:
        coroutine, bound = next(steps)
        while True:
            coroutine, bound = steps.send(runtime.run_sync(coroutine, bound.timeout))
    except StopIteration as done:
        return cast(T, done.value)


async def _drive(steps: _Steps[T]) -> T:
    try:
        coroutine, _ = next(steps)
        while True:
            coroutine, _ = steps.send(await coroutine)
    except StopIteration as done:
        return cast(T, done.value)


def materialize(
    cls: type[M],
    record: StoredRecord,
    full: bool = True,
    context: Any = None,
    reading: _ClassReading | None = None,
    validator: SchemaValidator | None = None,
) -> M:
    """Validate a stored record's data into a model that remembers which record it is.

    `full`: with the class's validators above our hook too (else pydantic runs them on the
    result). `reading`: what a tree loader looked up about `cls` already. `validator`: the
    validator to use instead of those. Raises pydantic's ValidationError; `stored_data_error`
    makes it safe to show.
    """
    if reading is None:
        reading = class_reading(cls)
    settings = reading[0]
    if validator is None:
        validator = reading[3] if full else reading[4]
    current = record.schema_version == settings.schema_version
    if current and reading[5] and record.encoding == "json" and context is None:
        # The common record: data as stored, no keyword that changes what it means. (Annotated,
        # not cast(): a call per record.)
        data_json = record.payload
        model: M = validator.validate_json(data_json)
    else:
        if current and settings.codec is None and record.encoding == "json":
            data_json = record.payload  # what upgraded_data returns here, without its two calls
        else:
            data_json = upgraded_data(cls, record)
        if settings.content_addressed:
            check_loaded(cls, record, data_json)  # before any validator of the user's sees the data
        model = validator.validate_json(data_json, by_alias=False, by_name=True, context=context)
    # loaded_json: what the record holds (decoded), so that dumping the model unchanged writes
    # nothing. (Not after an upgrade: the record holds the old version.) Positional: a keyword
    # call to the dataclass's __init__ costs half as much again.
    loaded = data_json if current else None
    _record_state._set(model, RecordState(record.id, record.created_at, None, None, loaded, record.revision))
    return model


def materialize_checked(
    cls: type[M],
    record: StoredRecord,
    full: bool = True,
    context: Any = None,
    reading: _ClassReading | None = None,
) -> M:
    """`materialize`, with a record that does not validate reported as `StoredDataError`."""
    failure: StoredDataError | None = None
    try:
        return materialize(cls, record, full, context, reading)
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
    names = schema_names(cls)
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
