"""`memory://[name]`: a process-wide store in a dict, for tests and examples.

Every backend instance with the same name shares one store, whichever event loop or thread uses
it, so sync and async calls see the same records. Nothing survives the process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar
from uuid import UUID

from .. import forksafe
from ..url import StorageURL
from ._options import BackendOptions
from .base import (
    Capability,
    RecordKey,
    RecordStorageBackend,
    RevisionConflict,
    StoredRecord,
    check_revision,
    last_per_id,
    refuse_other_class,
)

__all__ = ["MemoryBackend", "MemoryOptions"]


class MemoryOptions(BackendOptions):
    """`memory://[name]` takes no options."""

    backend = "memory"


class MemoryBackend(RecordStorageBackend):
    options_model = MemoryOptions
    declared_capabilities = frozenset({Capability.TTL, Capability.UNIQUE_IDS})
    _stores: ClassVar[dict[str, dict[UUID, StoredRecord]]] = {}
    _lock: ClassVar[threading.Lock] = forksafe.Lock()

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = StorageURL.parse(url)
        self.check_url(parsed)
        self.name = (parsed.host or "") + parsed.path
        with self._lock:
            self._records = self._stores.setdefault(self.name, {})

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        self.stats.add(written=len(records))
        with self._lock:
            # Checked before anything is written: a refused batch leaves the store as it was.
            owners: dict[UUID, str] = {}
            for record in records:
                existing = self._records.get(record.id)
                owner = owners.setdefault(
                    record.id, record.class_name if existing is None else existing.class_name
                )
                if owner != record.class_name:
                    raise refuse_other_class(record.id, owner, record.class_name, batch=len(records) > 1)
            for record in records:
                self._records[record.id] = record

    async def save_records_checked(self, records: Sequence[StoredRecord]) -> list[RevisionConflict]:
        latest = last_per_id(records)
        now = datetime.now(UTC)
        with self._lock:
            conflicts: list[RevisionConflict] = []
            for record in latest:
                existing = self._records.get(record.id)
                if existing is not None and existing.class_name != record.class_name:
                    raise refuse_other_class(
                        record.id, existing.class_name, record.class_name, batch=len(latest) > 1
                    )
                found: int | None = None
                updated_at: datetime | None = None
                if existing is not None and (existing.expires_at is None or existing.expires_at > now):
                    found, updated_at = existing.revision or 0, existing.updated_at
                conflict = check_revision(record, found, updated_at)
                if conflict is not None:
                    conflicts.append(conflict)
            if conflicts:
                return conflicts
            for record in latest:
                self._records[record.id] = record
        self.stats.add(written=len(latest))
        return []

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        now = datetime.now(UTC)
        with self._lock:
            found = [self._records.get(id) for id, _ in keys]
        self.stats.add(read=sum(record is not None for record in found))
        return [
            record
            if record is not None
            and record.class_name == class_name
            and (record.expires_at is None or record.expires_at > now)
            else None
            for record, (_, class_name) in zip(found, keys, strict=True)
        ]

    async def delete(self, id: UUID, class_name: str) -> bool:
        self.stats.add()
        with self._lock:
            record = self._records.get(id)
            if record is None or record.class_name != class_name:
                return False
            del self._records[id]
        return record.expires_at is None or record.expires_at > datetime.now(UTC)

    async def scan_records(
        self, *, cursor: str | None, limit: int, class_name: str | None = None, include_expired: bool = False
    ) -> tuple[list[StoredRecord], str | None]:
        now = datetime.now(UTC)
        with self._lock:
            candidates = sorted(
                (record for record in self._records.values() if cursor is None or str(record.id) > cursor),
                key=lambda record: str(record.id),
            )
        page: list[StoredRecord] = []
        last: str | None = None
        for record in candidates:
            last = str(record.id)
            if class_name is not None and record.class_name != class_name:
                continue
            if not include_expired and record.expires_at is not None and record.expires_at <= now:
                continue
            page.append(record)
            if len(page) == limit:
                break
        self.stats.add(read=len(page))
        more = last is not None and last != str(candidates[-1].id)
        return page, (last if more else None)

    async def purge_expired(self) -> int:
        now = datetime.now(UTC)
        with self._lock:
            expired = [
                id
                for id, record in self._records.items()
                if record.expires_at is not None and record.expires_at <= now
            ]
            for id in expired:
                del self._records[id]
        self.stats.add()
        return len(expired)

    @classmethod
    def clear(cls, name: str = "") -> None:
        """Forget every record of the store called `name` (tests use this)."""
        with cls._lock:
            cls._stores.get(name, {}).clear()
