"""Records that refer to records: finding the references a stored record holds, cascade delete, gc.

`references_in(cls, record)` is the one answer to "which records does this stored record point
at?". It reads the references with the model's own schema, not by searching the JSON for
look-alikes: the record's data is validated as it would be when loaded, while a collector stands
in for the tree loader and notes every nested reference instead of loading it. Any reference
whose validator asks the tree loader is found the same way (`_Collector`); records of kinds other
than models are made known to `gc` with `register_stored_kind`.

`delete_tree` deletes a record and everything it refers to, level by level, parents first: a
failure half-way leaves records nobody points at (orphans, which `gc` collects), never a parent
pointing at a deleted child.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pydantic_core
from pydantic import BaseModel

from . import _content, _writing, runtime
from ._loading import TreeLoader, _drive, _drive_sync, _NotBuiltYetError, _Steps, _tree_loader, json_options
from ._pydantic_internals import core_validator, holds_references
from ._record_state import state_of
from ._settings import DEFAULT_TIMEOUT, classes_in, coerce_reference, resolve_class
from .backends.base import RecordKey, StoredRecord
from .exceptions import StorageValidationError
from .reference import ExternalReference
from .upgrades import upgraded_data
from .url import StorageURL

if TYPE_CHECKING:
    from .base import ExternalBaseModel

__all__ = [
    "StoredReference",
    "adelete",
    "delete",
    "delete_tree",
    "delete_tree_sync",
    "forget",
    "collect_references",
    "follower",
    "kinds_in",
    "references_in",
    "register_stored_kind",
]


Follow = Callable[[StoredRecord], "list[StoredReference]"]
"""Reads the references a stored record holds (see `references_in`)."""


@dataclass(frozen=True, slots=True)
class StoredReference:
    """A record that a stored record points at."""

    url: StorageURL
    class_name: str
    id: UUID
    follow: Follow | None
    """How to read the references it holds in turn; None: it holds none."""
    timeout: float = DEFAULT_TIMEOUT
    """What one operation on its store may take (its model's `timeout`)."""
    shared: bool = False
    """Possibly pointed at by other records too (content-addressed values): a cascade delete leaves
    it, and only `gc`, which sees every record, may delete it."""

    @property
    def key(self) -> tuple[str, UUID, str]:
        return (self.url.raw, self.id, self.class_name)


class _Collector(TreeLoader):
    """Stands in for the tree loader while stored data is validated: notes each nested reference
    and reports it "not built yet", so pydantic goes on to the next field and finds them all.

    Every kind of reference whose validator asks the tree loader is found this way: external
    models (`resolve`) and, once `Toast(...)` fields exist, their content-addressed values, which
    call `resolve_value(reader, reference)`: those are noted as `shared`, followed by validating
    the value's record with the same collector in place.
    """

    def __init__(self) -> None:  # none of the loader's state is needed: no super().__init__()
        self.found: list[StoredReference] = []

    def resolve(self, cls: Any, target: Any, reference: ExternalReference) -> Any:
        settings = target.__toast_settings__
        self.found.append(
            StoredReference(
                settings.url,
                reference.class_name,
                reference.id,
                follower(target),
                settings.timeout,
                shared=settings.content_addressed,  # equal models elsewhere point at it too
            )
        )
        raise _NotBuiltYetError

    def resolve_value(self, reader: Any, reference: ExternalReference) -> Any:
        settings = reader.settings

        def follow(record: StoredRecord) -> list[StoredReference]:
            return collect_references(lambda: reader.read(record, None))

        self.found.append(
            StoredReference(
                settings.url, reference.class_name, reference.id, follow, settings.timeout, shared=True
            )
        )
        raise _NotBuiltYetError


def collect_references(validate: Callable[[], object]) -> list[StoredReference]:
    """The references met while `validate()` validates stored data, each once, in order."""
    collector = _Collector()
    loader_token = _tree_loader.set(collector)
    options_token = json_options.set(None)
    try:
        validate()
    except pydantic_core.ValidationError:
        pass  # expected: every reference was reported "not built yet"
    finally:
        json_options.reset(options_token)
        _tree_loader.reset(loader_token)
    found: dict[tuple[str, UUID, str], StoredReference] = {}
    for reference in collector.found:
        found.setdefault(reference.key, reference)
    return list(found.values())


def references_in(cls: type[ExternalBaseModel], record: StoredRecord) -> list[StoredReference]:
    """Every record that `record` (a stored record of `cls`) points at, each once, in order.

    Read with the class's own schema, as a load would read it (after its upgrade steps): a dict
    that merely looks like a reference in a `dict[str, Any]` field is data, not a reference.
    """
    if not holds_references(cls):
        return []
    data = upgraded_data(cls, record)
    validator = core_validator(cls)
    return collect_references(lambda: validator.validate_json(data, by_alias=False, by_name=True))


def follower(cls: type[ExternalBaseModel]) -> Follow:
    """`references_in` for records of `cls`."""
    return functools.partial(references_in, cls)


# Records that are not models' but hold references or are referred to (a Toast field's values):
# (store URL, class_name) -> how to read their references. The library's own kinds register here.
_kinds: dict[tuple[str, str], Follow | None] = {}


def register_stored_kind(url: StorageURL, class_name: str, follow: Follow | None) -> None:
    """Make `gc` recognise records of `class_name` in `url` that no model class defines."""
    _kinds[(url.raw, class_name)] = follow


def kinds_in(url: StorageURL) -> dict[str, Follow | None]:
    """Every kind of record this process knows in `url`, by class name, with how to follow it."""
    known: dict[str, Follow | None] = {
        name: follow for (raw, name), follow in _kinds.items() if raw == url.raw
    }
    for name, cls in classes_in(url).items():
        known[name] = follower(cls)
    return known


# --------------------------------------------------------------------------- cascade delete

# A delete is written as the I/O it needs, one step at a time, and driven by the loads' own
# drivers (`_loading._drive` / `_drive_sync`): one loop for the async and the sync API.


def _delete_steps(cls: type[ExternalBaseModel], reference: ExternalReference) -> _Steps[bool]:
    root = resolve_class(cls, reference)
    settings = root.__toast_settings__
    level = [
        StoredReference(settings.url, reference.class_name, reference.id, follower(root), settings.timeout)
    ]
    seen = {level[0].key}
    root_existed: bool | None = None
    while level:
        records: list[StoredRecord | None] = yield _load_level(level), _Within(_timeout(level))
        children: list[StoredReference] = []
        for item, record in zip(level, records, strict=True):
            if record is None or item.follow is None:
                continue
            for child in item.follow(record):
                if not child.shared and child.key not in seen:
                    seen.add(child.key)
                    children.append(child)
        deleted: int = yield _delete_level(level), _Within(_timeout(level))
        if root_existed is None:
            root_existed = deleted > 0
        level = children
    return bool(root_existed)


async def delete_tree(cls: type[ExternalBaseModel], reference: ExternalReference) -> bool:
    """Delete a record and, level by level, every record it refers to; whether the root existed.

    Each level costs one read and one delete per backend. Parents go first: deleting children
    first would leave, after a failure half-way, a parent that no longer loads; this order leaves
    at worst records nobody points at, which `pydantic-toast gc` collects. References marked
    `shared` (content-addressed values) are not followed.
    """
    return await _drive(_delete_steps(cls, reference))


def delete_tree_sync(cls: type[ExternalBaseModel], reference: ExternalReference) -> bool:
    """`delete_tree` for sync callers: each step on the library's I/O thread."""
    return _drive_sync(_delete_steps(cls, reference))


def _by_backend(level: Sequence[StoredReference]) -> dict[str, list[StoredReference]]:
    groups: dict[str, list[StoredReference]] = {}
    for item in level:
        groups.setdefault(item.url.raw, []).append(item)
    return groups


@dataclass(frozen=True, slots=True)
class _Within:
    timeout: float


def _timeout(items: Sequence[StoredReference]) -> float:
    return max((item.timeout for item in items), default=DEFAULT_TIMEOUT)


async def _load_level(level: list[StoredReference]) -> list[StoredRecord | None]:
    """The records of one level: one `load_records` per backend, concurrently."""
    found: dict[tuple[str, UUID, str], StoredRecord | None] = {}

    async def load(items: list[StoredReference]) -> None:
        # Records that hold no references need not be read.
        readable = [item for item in items if item.follow is not None]
        if not readable:
            return
        keys: list[RecordKey] = [(item.id, item.class_name) for item in readable]
        records = await runtime.execute(
            readable[0].url, _timeout(readable), lambda backend: backend.load_records(keys)
        )
        for item, record in zip(readable, records, strict=True):
            found[item.key] = record

    await runtime.gather_all(load(items) for items in _by_backend(level).values())
    return [found.get(item.key) for item in level]


async def _delete_level(level: list[StoredReference]) -> int:
    """Delete one level: one `delete_records` per backend; the live records deleted, in all."""
    counts: list[int] = []

    async def delete(items: list[StoredReference]) -> None:
        keys: list[RecordKey] = [(item.id, item.class_name) for item in items]
        counts.append(
            await runtime.execute(items[0].url, _timeout(items), lambda backend: backend.delete_records(keys))
        )

    await runtime.gather_all(delete(items) for items in _by_backend(level).values())
    return sum(counts)


# --------------------------------------------------------------------------- the model-side API


def forget(model: ExternalBaseModel) -> ExternalReference | None:
    """The reference of the record `model` is, its bookkeeping reset so that its next dump writes
    it again (changed or not) as a first save; None if it was never saved or loaded."""
    state = state_of(model)
    record_id = state.id
    if record_id is None:
        return None
    state.stored_digest = state.loaded_json = None
    state.revision = None  # and with optimistic_concurrency it is a first save again
    return ExternalReference(class_name=type(model).__toast_settings__.storage_name, id=record_id)


async def adelete(target: Any, reference: Any = None, *, cascade: bool = False) -> bool:
    """Delete a record: `adelete(model)` or `adelete(Model, ref_or_id)`; whether it existed.

    `cascade`: also the external models it refers to, at every depth (see `delete_tree`).
    """
    cls, key = _target(target, reference, cascade=cascade)
    if key is None:
        return False
    try:
        if cascade:
            return await delete_tree(cls, key)
        return await _writing.delete(cls, key)
    finally:
        _forget_content(cls, key)


def delete(target: Any, reference: Any = None, *, cascade: bool = False) -> bool:
    """Delete a record: `delete(model)` or `delete(Model, ref_or_id)`; return whether it existed.

    The sync form of `await model.delete()` / `await Model.delete(ref)`, usable wherever
    `model_dump()` is (inside a running event loop too). With `cascade=True` it also deletes the
    external models the stored record refers to, at any depth, parents first (see
    docs/operations.md); a model instance passed in, and the external models it holds, forget that
    they were stored, so their next dump writes them again.
    """
    cls, key = _target(target, reference, cascade=cascade)
    if key is None:
        return False
    try:
        if cascade:
            return delete_tree_sync(cls, key)
        return runtime.run_sync(_writing.delete(cls, key), cls.__toast_settings__.timeout)
    finally:
        _forget_content(cls, key)


def _forget_content(cls: type[ExternalBaseModel], reference: ExternalReference) -> None:
    """A deleted content-addressed record is no longer stored: the next dump of equal data must
    write it again (this process remembers the content records it wrote or verified)."""
    settings = resolve_class(cls, reference).__toast_settings__
    if settings.content_addressed:
        _content.forget([(settings.url.raw, reference.id.int, settings.storage_name)])


def _target(
    target: Any, reference: Any, *, cascade: bool
) -> tuple[type[ExternalBaseModel], ExternalReference | None]:
    from .base import ExternalBaseModel

    if isinstance(target, ExternalBaseModel):
        if cascade:
            # The instances it holds are deleted too: their next dump must write them again.
            for held in _held_models(target):
                forget(held)
        if reference is not None:
            raise StorageValidationError(
                "delete(model) takes no reference: the model is the record; use delete(Model, ref) "
                "to delete by reference",
                expected="delete(model) or delete(Model, reference)",
                actual="a model and a reference",
            )
        return type(target), forget(target)
    if isinstance(target, type) and issubclass(target, ExternalBaseModel) and reference is not None:
        return target, coerce_reference(target, reference)
    raise StorageValidationError(
        f"delete() takes an external model instance, or an external model class and a reference; got "
        f"{type(target).__name__}",
        expected="delete(model) or delete(Model, reference)",
        actual=type(target).__name__,
    )


def _held_models(model: BaseModel) -> list[ExternalBaseModel]:
    """The external models held by `model` at any depth (fields, containers, plain models)."""
    from .base import ExternalBaseModel

    found: list[ExternalBaseModel] = []
    seen = {id(model)}
    stack: list[object] = list(model.__dict__.values())
    while stack:
        value = stack.pop()
        if isinstance(value, str | bytes | int | float | bool | None) or id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, BaseModel):
            if isinstance(value, ExternalBaseModel):
                found.append(value)
            stack.extend(value.__dict__.values())
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend(value)
    return found
