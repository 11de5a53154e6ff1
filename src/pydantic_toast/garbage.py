"""Garbage collection: deleting the records of a store that no root record reaches.

Records pile up that nobody points at: a parent deleted without `cascade`, a child replaced by
another one (the old record stays), a dump that failed half-way (children are written first).
`collect` finds them by marking: every record of a root class is live, and so is every record
written within the grace period; everything they refer to, at any depth and in any store, is
live too (references are read with the models' schemas, `lifecycle.references_in`). The records
of the store that are left are garbage, and are deleted in batches when asked.

Safety against concurrent writers comes from the grace period: a record written (or rewritten)
less than `grace` ago is never deleted and counts as a root, so a dump in progress (children
written before their parent) and a parent rewritten to point at an old record keep what they
point at. Records written while the collection runs are looked at again before anything is
deleted. What it cannot see is a reference kept outside the stores (in a queue message, another
database): such a record is live only if a root reaches it. docs/operations.md tells the whole
procedure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol
from uuid import UUID

from . import runtime
from ._settings import DEFAULT_TIMEOUT, storage_names
from .backends.base import Capability, RecordKey, StoredRecord
from .exceptions import StorageValidationError, UnsupportedOperationError
from .lifecycle import Follow, StoredReference, kinds_in
from .registry import backend_class
from .url import StorageURL

if TYPE_CHECKING:
    from .base import ExternalBaseModel

__all__ = ["ClassTotals", "Collection", "collect"]

_Key = tuple[str, UUID, str]  # (store URL, id, class_name)


class _Progress(Protocol):
    def advance(self, count: int) -> None: ...


ProgressFactory = Callable[[str, "int | None"], AbstractContextManager[_Progress]]


@dataclass
class ClassTotals:
    records: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.records += 1
        self.bytes += size


@dataclass
class Collection:
    """What a collection found in the store (and, unless a dry run, deleted)."""

    url: StorageURL
    grace: timedelta
    scanned: int = 0
    roots: int = 0
    """Records of the root classes in the store."""
    young: int = 0
    """Records written within the grace period (kept, and their references followed)."""
    reached: int = 0
    """Other records of the store that a root or young record refers to."""
    garbage: dict[str, ClassTotals] = field(default_factory=dict)
    """Per class: the records no root reaches, older than the grace period."""
    unknown: dict[str, int] = field(default_factory=dict)
    """Per class name: records of classes this process does not define (what they refer to cannot
    be read, so nothing is deleted while there are any)."""
    unread: set[str] = field(default_factory=set)
    """Live records in other stores whose classes this process does not define (nothing is
    deleted while there are any)."""
    deleted: int | None = None
    """Records deleted; None for a dry run (or a refused one)."""

    @property
    def garbage_records(self) -> int:
        return sum(totals.records for totals in self.garbage.values())

    @property
    def garbage_bytes(self) -> int:
        return sum(totals.bytes for totals in self.garbage.values())


async def collect(
    url: str,
    roots: Sequence[type[ExternalBaseModel]],
    *,
    grace: timedelta,
    delete: bool = False,
    batch: int = 500,
    progress: ProgressFactory | None = None,
) -> Collection:
    """Find (and with `delete`, delete) the records of `url` that no record of `roots` reaches."""
    store = StorageURL.parse(url)
    if not roots:
        raise StorageValidationError(
            "gc needs at least one root class: the models whose records are live by themselves "
            "(e.g. --roots myapp.models:Order)",
            expected="one or more root classes",
            actual=[],
        )
    if grace < timedelta(0):
        raise StorageValidationError(
            f"the grace period cannot be negative, got {grace}", expected=">= 0", actual=str(grace)
        )
    root_names: dict[str, set[str]] = {}
    stores: dict[str, StorageURL] = {store.raw: store}
    for model in roots:
        settings = model.__toast_settings__
        # A root class's subclasses are roots too (their records load through the root class).
        root_names.setdefault(settings.url.raw, set()).update(storage_names(model))
        stores.setdefault(settings.url.raw, settings.url)
    for each in stores.values():
        _require(each, Capability.SCAN, "list its records")
    if delete:
        _require(store, Capability.DELETE, "delete records")
    marker = _Marker(batch)
    result = Collection(url=store, grace=grace)
    started = datetime.now(UTC)
    young_after = started - grace
    candidates: dict[RecordKey, int] = {}

    def live(url: StorageURL, known: dict[str, Follow | None], record: StoredRecord) -> None:
        if record.class_name in known:
            marker.follow(url, known[record.class_name], record)
        elif url.raw != store.raw:
            # Live, in another store, and what it refers to cannot be read.
            result.unread.add(f"{record.class_name} (in {url.masked})")

    # Scan: roots and young records are live, and their references are followed; the store's
    # other records are candidates.
    for each in stores.values():
        known = kinds_in(each)
        names = root_names.get(each.raw, set())
        in_store = each.raw == store.raw
        label = "scanning" if in_store else f"scanning {each.masked}"
        async for page in _pages(each, batch, progress, label):
            for record in page:
                is_root = record.class_name in names
                young = record.updated_at > young_after
                if in_store:
                    result.scanned += 1
                    result.roots += is_root
                    result.young += young and not is_root
                    if record.class_name not in known:
                        result.unknown[record.class_name] = result.unknown.get(record.class_name, 0) + 1
                if is_root or young:
                    live(each, known, record)
                elif in_store:
                    candidates[record.key] = len(record.payload)
    await marker.mark()

    # Young records again, in every store seen so far: those written while the scan and the
    # marking ran (a record rewritten meanwhile may point at something new), and those of stores
    # only reached through references (a dump in progress there, its parent not written yet).
    for each in {**stores, **marker.stores}.values():
        known = kinds_in(each)
        async for page in _pages(each, batch, progress, f"rechecking {each.masked}"):
            for record in page:
                if record.updated_at > young_after:
                    live(each, known, record)
    await marker.mark()

    garbage: list[RecordKey] = []
    for key, size in candidates.items():
        if marker.seen_key((store.raw, *key)):
            result.reached += 1
            continue
        garbage.append(key)
        result.garbage.setdefault(key[1], ClassTotals()).add(size)
    if not delete or not garbage:
        if delete:
            result.deleted = 0
        return result
    if result.unknown or result.unread:
        listed = ", ".join(
            [f"{name} ({count})" for name, count in sorted(result.unknown.items())] + sorted(result.unread)
        )
        raise StorageValidationError(
            f"gc of {store.masked} found records of classes this process does not define: {listed}; it "
            "cannot tell what they refer to, so it deletes nothing. Import the modules that define them "
            "(--import myapp.models), or pass them with --roots if they are roots",
            expected="every stored class defined",
            actual=sorted([*result.unknown, *result.unread]),
        )
    result.deleted = await _delete(store, garbage, batch, progress)
    return result


def _require(url: StorageURL, capability: Capability, purpose: str) -> None:
    backend_type = backend_class(url.scheme)
    if not backend_type.supports(capability):
        raise UnsupportedOperationError(
            f"the {backend_type.__name__} backend for {url.masked!r} cannot {purpose}, which gc needs"
        )


async def _pages(
    url: StorageURL, batch: int, progress: ProgressFactory | None, label: str
) -> AsyncIterator[list[StoredRecord]]:
    cursor: str | None = None
    with progress(label, None) if progress is not None else _NoProgress() as shown:
        while True:
            page, cursor = await _scan_page(url, cursor, batch)
            shown.advance(len(page))
            if page:
                yield page
            if cursor is None:
                return


async def _delete(
    url: StorageURL, keys: list[RecordKey], batch: int, progress: ProgressFactory | None
) -> int:
    deleted = 0
    with progress("deleting", len(keys)) if progress is not None else _NoProgress() as shown:
        for start in range(0, len(keys), batch):
            chunk = keys[start : start + batch]
            deleted += await _delete_records(url, chunk)
            shown.advance(len(chunk))
    return deleted


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, count: int) -> None:
        return None


class _Marker:
    """The live set: records followed (their references read) and the references still to load."""

    def __init__(self, batch: int) -> None:
        self._batch = batch
        self._seen: set[_Key] = set()
        self._pending: list[StoredReference] = []
        self.stores: dict[str, StorageURL] = {}
        """The stores that references led into."""

    def seen_key(self, key: _Key) -> bool:
        return key in self._seen

    def follow(self, url: StorageURL, follow: Follow | None, record: StoredRecord) -> None:
        """`record` is live: so is everything it refers to."""
        self._seen.add((url.raw, record.id, record.class_name))
        if follow is not None:
            self._pending.extend(follow(record))

    def seen(self, url: StorageURL, record: StoredRecord) -> bool:
        return (url.raw, record.id, record.class_name) in self._seen

    async def mark(self) -> None:
        """Load the pending references level by level (one batch per store) until none is left."""
        while self._pending:
            level: dict[str, list[StoredReference]] = {}
            for reference in self._pending:
                if reference.key not in self._seen:
                    self._seen.add(reference.key)
                    self.stores.setdefault(reference.url.raw, reference.url)
                    if reference.follow is not None:
                        level.setdefault(reference.url.raw, []).append(reference)
            self._pending = []
            for references in level.values():
                await self._load(references)

    async def _load(self, references: list[StoredReference]) -> None:
        url = references[0].url
        timeout = max(reference.timeout for reference in references)
        for start in range(0, len(references), self._batch):
            chunk = references[start : start + self._batch]
            keys: list[RecordKey] = [(reference.id, reference.class_name) for reference in chunk]
            records = await _load_records(url, timeout, keys)
            for reference, record in zip(chunk, records, strict=True):
                if record is not None and reference.follow is not None:
                    self._pending.extend(reference.follow(record))


async def _scan_page(
    url: StorageURL, cursor: str | None, limit: int
) -> tuple[list[StoredRecord], str | None]:
    return await runtime.execute(
        url, DEFAULT_TIMEOUT, lambda backend: backend.scan_records(cursor=cursor, limit=limit)
    )


async def _load_records(url: StorageURL, seconds: float, keys: list[RecordKey]) -> list[StoredRecord | None]:
    return await runtime.execute(url, seconds, lambda backend: backend.load_records(keys))


async def _delete_records(url: StorageURL, keys: list[RecordKey]) -> int:
    return await runtime.execute(url, DEFAULT_TIMEOUT, lambda backend: backend.delete_records(keys))
