"""The backend interface: four required async methods, optional capabilities with defaults.

A backend moves envelopes; it knows nothing about pydantic. docs/backends/contract.md states
what every backend promises, and `pydantic_toast.testing` checks it. The four abstract methods
below are the whole of what a backend must write, and one that implements only those must keep
working forever. Built-in backends also override the record-level methods (`save_records`,
`load_records`, `delete`, ...) which take pre-encoded payloads and whole batches, so the hot path
never re-encodes data. Which optional capabilities a backend has is asked with `supports()`.
A class that provides the four methods without subclassing `StorageBackend` is wrapped by
`adapt_backend` when it is registered, so the runtime and the command line only ever see
`StorageBackend`s.
"""

from __future__ import annotations

import asyncio
import base64
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias, cast
from uuid import UUID

import pydantic_core

from .. import forksafe
from ..exceptions import StorageValidationError, StoredDataError, UnsupportedOperationError
from ..url import StorageURL
from ._options import BackendOptions

__all__ = [
    "BackendStats",
    "Capability",
    "RecordKey",
    "RecordStorageBackend",
    "RevisionConflict",
    "StorageBackend",
    "StoredRecord",
    "adapt_backend",
    "check_revision",
    "envelope_fields",
    "malformed_envelope",
    "format_timestamp",
    "last_per_id",
    "parse_timestamp",
    "refuse_other_class",
]

RecordKey: TypeAlias = tuple[UUID, str]
"""(id, class_name): what a read or a delete names. A load never returns a record of another class."""


class Capability(StrEnum):
    """An optional promise of a backend; see docs/backends/contract.md for each one."""

    BATCHES = "batches"
    """`save_records` / `load_records` are the backend's own (else: concurrent single calls)."""
    DELETE = "delete"
    """`delete(id, class_name)` removes a record."""
    TTL = "ttl"
    """Records with `expires_at` are stored and stop being returned once it passes."""
    SCAN = "scan"
    """`scan_records` lists records in pages: needed by stats, copy, upgrade and inspect."""
    PURGE = "purge"
    """`purge_expired` deletes expired records now."""
    UNIQUE_IDS = "unique_ids"
    """A save of an id stored under another class is refused (StorageValidationError)."""
    REVISIONS = "revisions"
    """`save_records_checked` writes a batch only if every record's stored revision is the expected one."""


# Capabilities a backend has when it overrides the method that provides them.
_BY_METHOD: dict[Capability, tuple[str, ...]] = {
    Capability.BATCHES: ("save_records", "load_records"),
    Capability.DELETE: ("delete",),
    Capability.SCAN: ("scan_records",),
    Capability.PURGE: ("purge_expired",),
    Capability.REVISIONS: ("save_records_checked",),
}


# The last timestamp formatted and parsed. Records written together share their timestamps (one
# `now` per write, created_at == updated_at for a new record), so most calls repeat the previous
# one: formatting was 13% of a Redis batch save's CPU. One tuple, replaced whole: thread-safe.
# Formatting keeps the one before too: a saved-again record alternates its own created_at with
# each write's updated_at, which missed both every time (5 us of a 10-field Redis save).
_formatted: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")
_formatted_before = _formatted
_parsed: tuple[str, datetime] = ("", datetime.min.replace(tzinfo=UTC))


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z` suffix, as the envelope stores it.

    Always with microseconds, so the text sorts like the instant (SQLite compares it as text).
    """
    global _formatted, _formatted_before
    last = _formatted
    # Equal instants give equal UTC text whatever their offsets (a naive datetime never equals
    # an aware one, so it is formatted as local time as before).
    if last[0] == moment:
        return last[1]
    before = _formatted_before
    if before[0] == moment:
        _formatted, _formatted_before = before, last
        return before[1]
    if moment.tzinfo is UTC:  # what the library makes: isoformat() without keywords, half the cost
        text = moment.isoformat()[:-6]  # without "+00:00"
        text = f"{text}Z" if moment.microsecond else f"{text}.000000Z"
    else:
        text = moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    _formatted_before = last
    _formatted = (moment, text)
    return text


def parse_timestamp(text: str) -> datetime:
    global _parsed
    last = _parsed
    if last[0] == text:
        return last[1]
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    _parsed = (text, moment)
    return moment


@dataclass(slots=True)
class StoredRecord:
    """One stored model: its payload bytes, how they are encoded, and the envelope's metadata.

    `encoding` is the codec stage's tag (`pydantic_toast.codecs`): for "json", the default and
    what every record without compression has, `payload` is the model's JSON itself. A backend
    stores both exactly as given and never decodes the payload.

    Treat it as immutable. (Not `frozen=True`: that makes every construction several times
    slower, and one is built per save and per load.)
    """

    id: UUID
    class_name: str
    payload: bytes
    schema_version: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    encoding: str = "json"
    # Optimistic concurrency: the stored revision on a loaded record (None: stored without one);
    # on a record given to `save_records_checked`, the revision to store (None: not checked).
    revision: int | None = None

    @property
    def key(self) -> RecordKey:
        return (self.id, self.class_name)

    def envelope(self) -> dict[str, Any]:
        """The contract's envelope dict: what `StorageBackend.save` receives.

        A "json" record keeps the contract's shape, its data under "data"; any other encoding
        has "encoding" and the payload as base64 text under "payload" instead.
        """
        envelope: dict[str, Any]
        if self.encoding == "json":
            envelope = {"data": pydantic_core.from_json(self.payload)}
        else:
            envelope = {"encoding": self.encoding, "payload": base64.b64encode(self.payload).decode()}
        envelope["schema_version"] = self.schema_version
        envelope["created_at"] = format_timestamp(self.created_at)
        envelope["updated_at"] = format_timestamp(self.updated_at)
        if self.revision is not None:
            envelope["revision"] = self.revision
        return envelope

    @classmethod
    def from_envelope(cls, id: UUID, class_name: str, envelope: Mapping[str, Any]) -> StoredRecord:
        """Rebuild a record from what a backend's `load` returned, refusing malformed envelopes."""
        try:
            # `data` may be any JSON value: one that is not an object reaches the model, which
            # refuses it as a `StoredDataError` (a server error, no stored value shown).
            payload, encoding, schema_version, revision = envelope_fields(envelope)
            created_at = envelope.get("created_at")
            updated_at = envelope.get("updated_at", created_at)
            now = datetime.now(UTC)
            return cls(
                id=id,
                class_name=class_name,
                payload=payload,
                schema_version=schema_version,
                created_at=_as_datetime(created_at) if created_at is not None else now,
                updated_at=_as_datetime(updated_at) if updated_at is not None else now,
                encoding=encoding,
                revision=revision,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise malformed_envelope(class_name, id, exc) from None


def malformed_envelope(class_name: str, id: UUID, problem: BaseException | str) -> StoredDataError:
    """The error for a stored value that is no envelope: stored data at fault, so a server error
    (`StoredDataError`), never a `ValueError` that a web framework would answer with a 422.

    `problem`: what was wrong; an exception is named by its type, and by its text only when it is
    a `TypeError` or `KeyError` raised over the envelope's shape (a `ValueError`'s text may quote
    stored bytes).
    """
    if isinstance(problem, BaseException):
        shown = problem if isinstance(problem, TypeError | KeyError) else "a malformed value"
        problem = f"{type(problem).__name__}: {shown}"
    return StoredDataError.whole_record(
        class_name,
        id,
        f"is not a valid envelope ({problem}); expected {{'data': ..., 'schema_version': int, "
        "'created_at': ..., 'updated_at': ...}, or 'encoding' and base64 'payload' in place of 'data'. "
        "Was it written by something other than pydantic-toast? Repair or delete the record",
        "envelope",
    )


def envelope_fields(
    envelope: Mapping[str, Any], payload: bytes | None = None
) -> tuple[bytes, str, int, int | None]:
    """`(payload, encoding, schema_version, revision)` of a stored envelope.

    `payload`: the data's JSON when the caller already cut it out of the stored bytes (so it is
    not parsed and re-encoded). Raises `KeyError`, `TypeError` or `ValueError` for a malformed
    envelope; each backend turns that into its own `StorageValidationError`.
    """
    encoding = envelope.get("encoding", "json")
    schema_version = envelope.get("schema_version", 1)
    revision = envelope.get("revision")
    if not isinstance(encoding, str) or type(schema_version) is not int:
        raise TypeError("'encoding' must be a string and 'schema_version' an integer")
    if revision is not None and type(revision) is not int:
        raise TypeError("'revision' must be an integer")
    if payload is None:
        if encoding == "json":
            payload = pydantic_core.to_json(envelope["data"])
        else:
            text = envelope["payload"]
            if not isinstance(text, str):
                raise TypeError("'payload' must be base64 text")
            payload = base64.b64decode(text, validate=True)
    return payload, encoding, schema_version, revision


@dataclass(frozen=True, slots=True)
class RevisionConflict:
    """A record of a `save_records_checked` batch whose stored revision was not the expected one."""

    id: UUID
    class_name: str
    expected: int
    """The revision the write was based on: the record's `revision` minus one (0: none)."""
    found: int | None
    """The stored revision (0: a record stored without one), or None: no live record."""


def check_revision(
    record: StoredRecord, found: int | None, updated_at: datetime | None = None
) -> RevisionConflict | None:
    """The conflict of a checked write of `record` over a stored revision `found`, if any.

    `found`: the stored revision (0: stored without one), None: no live record; `updated_at`: the
    stored record's. A record that already holds this very write (its revision and updated_at) is
    no conflict: the batch is being repeated after a reply was lost.
    """
    if record.revision is None:
        return None
    expected = record.revision - 1
    if (found or 0) == expected or (found == record.revision and updated_at == record.updated_at):
        return None
    return RevisionConflict(record.id, record.class_name, expected, found)


def last_per_id(records: Sequence[StoredRecord]) -> list[StoredRecord]:
    """The last record per id, for stores where an id belongs to one class (UNIQUE_IDS): two
    classes with one id in a batch are refused, as the identity rule says."""
    # By the id's int (a UUID's own hash runs in Python), in one comprehension: most batches
    # repeat no id, and only those that do need the record-by-record check.
    latest = {record.id.int: record for record in records}
    if len(latest) == len(records):
        return list(latest.values())
    seen: dict[int, StoredRecord] = {}
    for record in records:
        previous = seen.setdefault(record.id.int, record)
        if previous.class_name != record.class_name:
            raise refuse_other_class(record.id, previous.class_name, record.class_name, batch=True)
    return list(latest.values())


def _as_datetime(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        return parse_timestamp(value)
    raise TypeError(f"timestamps must be ISO 8601 strings, not {type(value).__name__}")


def refuse_other_class(id: UUID, owner: str, class_name: str, *, batch: bool) -> StorageValidationError:
    """The error of the identity rule: `id` is stored under `owner`, a save tried `class_name`."""
    return StorageValidationError(
        f"record id {id} already belongs to class {owner!r}; refusing to save it as {class_name!r} "
        f"(an id belongs to one class per store); {'nothing in this batch was' if batch else 'it was not'} "
        "saved. Give the new record an id of its own",
        expected=owner,
        actual=class_name,
    )


class BackendStats:
    """Counters a backend keeps about its own traffic, shared by every instance of one URL.

    `round_trips` counts requests that waited for the server (a pipeline or a multi-row statement
    is one), so N+1 patterns show up as counts, not as timings. `bytes_written` counts payload
    bytes as stored, `raw_bytes_written` the same records' JSON before the codec stage: their
    ratio is what compression saves (counted by the library's write path, not by backends).
    """

    __slots__ = (
        "_lock",
        "bytes_written",
        "raw_bytes_written",
        "records_read",
        "records_written",
        "round_trips",
    )

    def __init__(self) -> None:
        self._lock = forksafe.Lock()
        self.round_trips = 0
        self.records_written = 0
        self.records_read = 0
        self.bytes_written = 0
        self.raw_bytes_written = 0

    def add(
        self,
        *,
        round_trips: int = 1,
        written: int = 0,
        read: int = 0,
        bytes_written: int = 0,
        raw_bytes_written: int = 0,
    ) -> None:
        # Sync calls count on the I/O thread while async calls count on the caller's. (Called
        # once per storage operation: acquire() and release() cost ~1,000 instructions less than
        # `with`, and a counter that does not change is not written.)
        lock = self._lock
        lock.acquire()
        try:
            self.round_trips += round_trips
            if written:
                self.records_written += written
            if read:
                self.records_read += read
            if bytes_written:
                self.bytes_written += bytes_written
            if raw_bytes_written:
                self.raw_bytes_written += raw_bytes_written
        finally:
            lock.release()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "round_trips": self.round_trips,
                "records_written": self.records_written,
                "records_read": self.records_read,
                "bytes_written": self.bytes_written,
                "raw_bytes_written": self.raw_bytes_written,
            }


class StorageBackend(ABC):
    """Base class of every backend. Subclass it and implement the four abstract methods.

    One instance serves one storage URL on one event loop: the runtime creates it, calls
    `connect()` once before first use and `disconnect()` on `pydantic_toast.aclose()` or at exit.
    The promises (docs/backends/contract.md): a record is addressed by (class_name, id) and never
    read, changed or deleted through another class name; with UNIQUE_IDS an id belongs to one
    class; a save stores the envelope exactly as given; expired records count as missing; only
    the library's exceptions leave a built-in backend.
    """

    #: The backend's URL options as one frozen model (see `BackendOptions`): the default
    #: `check_url` validates a URL's query string with it. None: the backend reads no options.
    options_model: ClassVar[type[BackendOptions] | None] = None

    #: Capabilities that no method override can reveal (TTL, UNIQUE_IDS): declare them here.
    declared_capabilities: ClassVar[frozenset[Capability]] = frozenset()

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
        """Open connections / create tables. Idempotent; connects again after `disconnect()`."""

    @abstractmethod
    async def disconnect(self) -> None:
        """Release everything `connect` acquired. Idempotent, and a no-op before `connect()`."""

    @abstractmethod
    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        """Store (insert or replace) the envelope `data` for (id, class_name), exactly as given.

        `data` is `{"data": {...}, "schema_version": int, "created_at": str, "updated_at": str}`.
        The timestamps are stored as given: the library sends the first save's `created_at`
        with every later save, so a backend neither keeps an older one nor invents one.
        A backend with UNIQUE_IDS refuses an id stored under another class with
        `StorageValidationError` naming both classes, and writes nothing.
        """

    @abstractmethod
    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        """Return the envelope last saved for (id, class_name), or None if missing or expired.

        Never a record saved under another class name.
        """

    # Optional capabilities. Defaults are built on the four methods above.

    @classmethod
    def capabilities(cls) -> frozenset[Capability]:
        """What this backend can do beyond the four methods, known before connecting.

        DELETE, SCAN, PURGE and BATCHES follow from the methods the class overrides; TTL and
        UNIQUE_IDS are promises only the backend's author can make, in `declared_capabilities`.
        """
        found = set(cls.declared_capabilities)
        for capability, names in _BY_METHOD.items():
            if all(getattr(cls, name) is not getattr(StorageBackend, name) for name in names):
                found.add(capability)
        return frozenset(found)

    @classmethod
    def supports(cls, capability: Capability | str) -> bool:
        """Whether this backend has `capability` (a `Capability` or its name, e.g. "scan")."""
        return Capability(capability) in cls.capabilities()

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        """Validate backend options in `url` without connecting; raise `StorageValidationError`.

        Runs when a model class is defined, so a typo fails at import time, not at first save.
        The default validates the query string with `options_model` when the class declares
        one, and accepts every URL otherwise.
        """
        if cls.options_model is not None:
            cls.options_model.from_url(url)

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        """Store several records; where an id repeats, the last record wins.

        All or nothing where the store allows it (see the contract); a batch refused by a check
        (identity, size, expiry) writes nothing. Default: one `save` per record, concurrently,
        refusing records with `expires_at` (the envelope has no room for it).
        """
        for record in records:
            if record.expires_at is not None:
                raise UnsupportedOperationError(
                    f"{type(self).__name__} cannot expire records; remove 'ttl' from the model's "
                    "configuration or implement save_records() with expiry in the backend"
                )
        await asyncio.gather(*(self.save(r.id, r.class_name, r.envelope()) for r in records))
        self.stats.add(round_trips=len(records), written=len(records))

    async def save_records_checked(self, records: Sequence[StoredRecord]) -> list[RevisionConflict]:
        """Store several records, each only if the store still holds the revision it expects.

        A record with `revision` r is written only if the stored record of its (class_name, id)
        has revision r - 1, where a missing or expired record, and one stored without a revision,
        count as 0; it is then stored with revision r. A record with `revision` None is written
        unchecked. Where an id repeats, the last record wins (and only its check counts). Returns
        the conflicts, empty when the batch was written. With a conflict nothing of the batch is
        written, where the store allows atomic batches (see the contract). Records of an id
        stored under another class are refused like `save_records` does.
        """
        raise UnsupportedOperationError(
            f"{type(self).__name__} does not keep record revisions, so it cannot check for concurrent "
            "updates; remove 'optimistic_concurrency' from the model's configuration or implement "
            "save_records_checked() in the backend"
        )

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Load several records: one result per key, in the keys' order (a repeated key gets the
        same record twice), None where missing or expired. Default: concurrent `load`s."""
        envelopes = await asyncio.gather(*(self.load(id, class_name) for id, class_name in keys))
        self.stats.add(round_trips=len(keys), read=sum(envelope is not None for envelope in envelopes))
        return [
            None if envelope is None else StoredRecord.from_envelope(id, class_name, envelope)
            for (id, class_name), envelope in zip(keys, envelopes, strict=True)
        ]

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete the record of (id, class_name); return whether a live one existed.

        An expired record counts as missing (False), as for `load`, and is removed all the same.
        """
        raise UnsupportedOperationError(
            f"{type(self).__name__} does not support delete; implement "
            "'async def delete(self, id: UUID, class_name: str) -> bool' in the backend"
        )

    async def delete_records(self, keys: Sequence[RecordKey]) -> int:
        """Delete several records; return how many live ones existed (a repeated key counts once).

        Used by cascade delete and `gc`, one call per backend and level. Default: concurrent
        `delete` calls, so a backend with `delete` has it; a backend may override it with one
        round trip. Not atomic: a failure may leave some of the batch deleted, which a retry of
        the same batch finishes.
        """
        unique = list(dict.fromkeys(keys))
        existed = await asyncio.gather(*(self.delete(id, class_name) for id, class_name in unique))
        return sum(existed)

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


# The optional methods a duck-typed backend may bring; the adapter forwards those it has.
_OPTIONAL_METHODS = (
    "save_records",
    "load_records",
    "delete",
    "delete_records",
    "scan_records",
    "find_record",
    "purge_expired",
    "save_records_checked",
)


class _Adapter(StorageBackend):
    """A `StorageBackend` around an instance of a class that only has the contract's methods."""

    adapted: ClassVar[type]

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.backend = self.adapted(url)

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        check = getattr(cls.adapted, "check_url", None)
        if callable(check):
            check(url)
        else:
            super().check_url(url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r})"

    async def connect(self) -> None:
        await self.backend.connect()

    async def disconnect(self) -> None:
        await self.backend.disconnect()

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        await self.backend.save(id, class_name, data)

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        loaded: dict[str, Any] | None = await self.backend.load(id, class_name)
        return loaded


def _forward(name: str) -> Callable[..., Any]:
    async def forward(self: _Adapter, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self.backend, name)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = name
    return forward


def adapt_backend(backend: type) -> type[StorageBackend]:
    """`backend` itself if it is a `StorageBackend`, else a subclass wrapping its instances.

    The contract promises that four async methods make a backend; the runtime and the command
    line also call `save_records`, `load_records`, `check_url`, `scan_records`... The wrapper
    supplies the defaults for what the class lacks and forwards what it has, so a class that
    subclasses nothing behaves exactly like one that subclasses `StorageBackend`.
    `declared_capabilities` on the class is honoured too.
    """
    if issubclass(backend, StorageBackend):
        return backend
    namespace: dict[str, Any] = {
        "adapted": backend,
        "__module__": backend.__module__,
        "__qualname__": backend.__qualname__,
        "__doc__": backend.__doc__,
        "options_model": getattr(backend, "options_model", None),
        "declared_capabilities": frozenset(
            Capability(c) for c in getattr(backend, "declared_capabilities", ())
        ),
    }
    for name in _OPTIONAL_METHODS:
        if callable(getattr(backend, name, None)):
            namespace[name] = _forward(name)
    return type(backend.__name__, (_Adapter,), namespace)
