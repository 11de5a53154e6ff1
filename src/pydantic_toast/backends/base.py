"""The backend interface: four required async methods, optional fast paths with defaults.

A backend moves envelopes; it knows nothing about pydantic. The contract (DESIGN.md §1) is the
four abstract methods below, and a backend that implements only those must keep working forever.
Built-in backends also override the record-level methods (`save_records`, `load_records`,
`delete`) which take pre-encoded JSON and whole batches, so the hot path never re-encodes data.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeAlias, cast
from uuid import UUID

import pydantic_core

from .. import forksafe
from ..exceptions import StorageValidationError, UnsupportedOperationError
from ..url import StorageURL

__all__ = [
    "BackendStats",
    "RecordKey",
    "RecordStorageBackend",
    "StorageBackend",
    "StoredRecord",
    "format_timestamp",
    "parse_timestamp",
]

RecordKey: TypeAlias = tuple[UUID, str]
"""(id, class_name): what identifies a record. A load never returns a record of another class."""


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z` suffix, as the envelope stores it.

    Always with microseconds, so the text sorts like the instant (SQLite compares it as text).
    """
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(slots=True)
class StoredRecord:
    """One stored model: its data as JSON bytes plus the envelope's metadata.

    Treat it as immutable. (Not `frozen=True`: that makes every construction several times
    slower, and one is built per save and per load.)
    """

    id: UUID
    class_name: str
    data_json: bytes
    schema_version: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None

    @property
    def key(self) -> RecordKey:
        return (self.id, self.class_name)

    def envelope(self) -> dict[str, Any]:
        """The contract's envelope dict: what `StorageBackend.save` receives."""
        return {
            "data": pydantic_core.from_json(self.data_json),
            "schema_version": self.schema_version,
            "created_at": format_timestamp(self.created_at),
            "updated_at": format_timestamp(self.updated_at),
        }

    @classmethod
    def from_envelope(cls, id: UUID, class_name: str, envelope: Mapping[str, Any]) -> StoredRecord:
        """Rebuild a record from what a backend's `load` returned, refusing malformed envelopes."""
        try:
            data = envelope["data"]
            schema_version = envelope.get("schema_version", 1)
            if not isinstance(data, dict) or not isinstance(schema_version, int):
                raise TypeError("'data' must be an object and 'schema_version' an integer")
            created_at = envelope.get("created_at")
            updated_at = envelope.get("updated_at", created_at)
            now = datetime.now(UTC)
            return cls(
                id=id,
                class_name=class_name,
                data_json=pydantic_core.to_json(data),
                schema_version=schema_version,
                created_at=_as_datetime(created_at) if created_at is not None else now,
                updated_at=_as_datetime(updated_at) if updated_at is not None else now,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageValidationError(
                f"the stored {class_name} record {id} is not a valid envelope ({exc}); "
                "expected {'data': {...}, 'schema_version': int, 'created_at': ..., 'updated_at': ...}",
                expected="envelope",
                actual=type(envelope).__name__,
            ) from None


def _as_datetime(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        return parse_timestamp(value)
    raise TypeError(f"timestamps must be ISO 8601 strings, not {type(value).__name__}")


class BackendStats:
    """Counters a backend keeps about its own traffic, shared by every instance of one URL.

    `round_trips` counts requests that waited for the server (a pipeline or a multi-row statement
    is one), so N+1 patterns show up as counts, not as timings.
    """

    __slots__ = ("_lock", "records_read", "records_written", "round_trips")

    def __init__(self) -> None:
        self._lock = forksafe.Lock()
        self.round_trips = 0
        self.records_written = 0
        self.records_read = 0

    def add(self, *, round_trips: int = 1, written: int = 0, read: int = 0) -> None:
        # Sync calls count on the I/O thread while async calls count on the caller's.
        with self._lock:
            self.round_trips += round_trips
            self.records_written += written
            self.records_read += read

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "round_trips": self.round_trips,
                "records_written": self.records_written,
                "records_read": self.records_read,
            }


class StorageBackend(ABC):
    """Base class of every backend. Subclass it and implement the four abstract methods.

    One instance serves one storage URL on one event loop: the runtime creates it, calls
    `connect()` once before first use and `disconnect()` on `pydantic_toast.aclose()` or at exit.
    """

    #: Names this backend's `check_url` accepts as query options; used in error messages only.
    url_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def stats(self) -> BackendStats:
        """This backend's traffic counters (the runtime shares one per URL across loops)."""
        # Created on demand: contract backends need not call StorageBackend.__init__.
        stats = self.__dict__.get("_toast_stats")
        if stats is None:
            stats = self.__dict__["_toast_stats"] = BackendStats()
        return cast(BackendStats, stats)

    @stats.setter
    def stats(self, value: BackendStats) -> None:
        self.__dict__["_toast_stats"] = value

    @abstractmethod
    async def connect(self) -> None:
        """Open connections / create tables. Must be idempotent."""

    @abstractmethod
    async def disconnect(self) -> None:
        """Release everything `connect` acquired. Must be idempotent."""

    @abstractmethod
    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        """Store (insert or replace) the envelope `data` for (id, class_name)."""

    @abstractmethod
    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        """Return the envelope saved for (id, class_name), or None."""

    # Optional capabilities. Defaults are built on the four methods above.

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        """Validate backend options in `url` without connecting; raise `StorageValidationError`.

        Runs when a model class is defined, so a typo fails at import time, not at first save.
        The default accepts every URL.
        """
        return

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        """Store several records. Default: one `save` per record, concurrently."""
        for record in records:
            if record.expires_at is not None:
                raise UnsupportedOperationError(
                    f"{type(self).__name__} cannot expire records; remove 'ttl' from the model's "
                    "configuration or implement save_records() with expiry in the backend"
                )
        await asyncio.gather(*(self.save(r.id, r.class_name, r.envelope()) for r in records))
        self.stats.add(round_trips=len(records), written=len(records))

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Load several records, in order, None where missing. Default: concurrent `load`s."""
        envelopes = await asyncio.gather(*(self.load(id, class_name) for id, class_name in keys))
        self.stats.add(round_trips=len(keys), read=sum(envelope is not None for envelope in envelopes))
        return [
            None if envelope is None else StoredRecord.from_envelope(id, class_name, envelope)
            for (id, class_name), envelope in zip(keys, envelopes, strict=True)
        ]

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete one record; return whether it existed."""
        raise UnsupportedOperationError(
            f"{type(self).__name__} does not support delete; implement "
            "'async def delete(self, id: UUID, class_name: str) -> bool' in the backend"
        )

    # Listing, for the operator commands (stats, copy, upgrade, inspect without a class name).

    async def scan_records(
        self, *, cursor: str | None, limit: int, class_name: str | None = None, include_expired: bool = False
    ) -> tuple[list[StoredRecord], str | None]:
        """One page of records and the cursor of the next page (None after the last page).

        The cursor is opaque text that stays valid across processes, so a copy can resume.
        A record may appear twice across pages when the store changes meanwhile; never zero times
        if it existed throughout.
        """
        raise UnsupportedOperationError(
            f"{type(self).__name__} cannot list its records; implement 'async def scan_records(self, *, "
            "cursor, limit, class_name=None, include_expired=False)' to use the stats, copy, upgrade "
            "and inspect commands"
        )

    async def find_record(self, id: UUID) -> StoredRecord | None:
        """The record with this id, whatever its class. Default: scan every record."""
        cursor: str | None = None
        while True:
            page, cursor = await self.scan_records(cursor=cursor, limit=1000, include_expired=True)
            for record in page:
                if record.id == id:
                    return record
            if cursor is None:
                return None

    async def purge_expired(self) -> int:
        """Delete expired records now; return how many. Backends that expire natively return 0."""
        raise UnsupportedOperationError(
            f"{type(self).__name__} does not expire records, so there is nothing to purge"
        )


class RecordStorageBackend(StorageBackend):
    """Base of backends whose native operations are the record-level batch methods.

    The contract's `save` / `load` (envelope dicts) are provided on top of `save_records` /
    `load_records`, which such a backend must implement.
    """

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        await self.save_records([StoredRecord.from_envelope(id, class_name, data)])

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        [record] = await self.load_records([(id, class_name)])
        return None if record is None else record.envelope()

    @abstractmethod
    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        """Store several records in as few round trips as the store allows."""

    @abstractmethod
    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Load several records, in order, None where missing."""
