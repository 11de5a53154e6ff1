"""`sqlite:///relative/path.db` or `sqlite:////absolute/path.db`: the embedded default.

Uses the standard library's sqlite3, so it needs no extra dependency. Each backend instance owns
one connection driven by one dedicated worker thread: calls never block the event loop, and
SQLite's single-writer rule is respected without locks of our own. Several instances (one per
event loop, or several processes) share the file safely through WAL mode and a busy timeout.

Options (query string): `SQLiteOptions` below, listed in docs/backends/sqlite.md.

`data` holds a record's payload: JSON as TEXT for the "json" encoding, a BLOB for any other
(compressed) one, named in `encoding`. Tables of earlier versions gain that column at connect.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from pydantic import Field

from .. import forksafe
from ..exceptions import StorageConnectionError, StorageValidationError
from ..url import StorageURL
from ._errors import ErrorRow, ErrorTable, raise_unchained
from ._options import BackendOptions, Identifier
from .base import (
    Capability,
    RecordKey,
    RecordStorageBackend,
    RevisionConflict,
    StoredRecord,
    check_revision,
    format_timestamp,
    last_per_id,
    parse_timestamp,
    refuse_other_class,
)

__all__ = ["SQLiteBackend", "SQLiteOptions"]

T = TypeVar("T")


class SQLiteOptions(BackendOptions):
    """The query options of a `sqlite:///` URL."""

    backend = "sqlite"
    table: Identifier = Field("external_models", description="table name, a plain identifier")
    busy_timeout: float = Field(
        5.0, ge=0, description="seconds a writer waits for another writer's lock before failing"
    )


# The encoding is NULL for TEXT data, which is JSON whatever the column says: a process of an
# earlier version updating a compressed record writes JSON text and leaves the column alone.
_COLUMNS = (
    "id, class_name, data, schema_version, created_at, updated_at, expires_at, "
    "CASE typeof(data) WHEN 'text' THEN NULL ELSE encoding END, revision"
)
# What a load reads: the payload, schema version, timestamps, and encoding and revision as one
# value (`_encoding_and_revision`). Each column of a row costs sqlite3 and SQLite ~700-1,200
# instructions (measured: its type, value and Python object, a GIL release in between), more than
# any Python step of a row: so no class name (the caller's), no expiry (the contract lets a loaded record
# carry None there; the library never reads it), and the rarely set encoding and revision share a
# column that is NULL for a JSON record without a revision.
# A JSON record's TEXT comes as its UTF-8 bytes, the payload itself, rather than as a str encoded
# again; the timestamps come as datetimes, through `_Moments` (the connection parses column names),
# and `updated_at` as NULL where it equals `created_at` (a record saved once): one conversion less.
_ENCODING_AND_REVISION = (
    "CASE WHEN typeof(data) = 'text' THEN revision "
    "WHEN revision IS NULL THEN '=' || encoding ELSE revision || '=' || encoding END"
)
_MOMENT = "pydantic_toast_moment"
_LOAD_COLUMNS = (
    f'CAST(data AS BLOB), schema_version, created_at AS "created_at [{_MOMENT}]", '
    f'NULLIF(updated_at, created_at) AS "updated_at [{_MOMENT}]", {_ENCODING_AND_REVISION}'
)
# In a database of another text encoding (never one this backend creates), CAST and the
# converter would see the text in that encoding: it is read as text, and parsed in `_loaded`.
_LOAD_COLUMNS_DECODED = (
    f"data, schema_version, created_at, NULLIF(updated_at, created_at), {_ENCODING_AND_REVISION}"
)
# Every write stores all of a record's columns as given, its revision included (None: NULL).
_UPSERT_HEAD = (
    'INSERT INTO "{table}" '
    "(id, class_name, data, schema_version, created_at, updated_at, expires_at, encoding, revision) VALUES "
)
_UPSERT_TAIL = (
    " ON CONFLICT(id) DO UPDATE SET data = excluded.data, "
    "schema_version = excluded.schema_version, created_at = excluded.created_at, "
    "updated_at = excluded.updated_at, expires_at = excluded.expires_at, "
    "encoding = excluded.encoding, revision = excluded.revision"
)
# The identity rule: a row of another class is left alone (and the batch refused, see `_write`).
_SAME_CLASS = " WHERE class_name = excluded.class_name"
# SQLite builds before 3.32 allow at most 999 bound parameters per statement.
_MAX_PARAMETERS = 999
# Rows per upsert statement at most: more saves little (measured, 1,000 shared-value rows: 11.3 M
# instructions at 256 per statement, 11.2 M at 1,000).
_MAX_ROWS = 256
# The columns a batch's records may share (`_upserts`, which reads them in this order), as named
# on StoredRecord, in the INSERT's order; the payload comes between the first two.
_SHARED_COLUMNS = (
    "class_name",
    "schema_version",
    "created_at",
    "updated_at",
    "expires_at",
    "encoding",
    "revision",
)
_TIMESTAMPS = frozenset({"created_at", "updated_at", "expires_at"})
_ENCODING_PLACE = _SHARED_COLUMNS.index("encoding")
_MAX_IDS_PER_SELECT = 900
# A process that forks while a SQLite call is in flight leaves the child SQLite's in-process lock
# bookkeeping (and perhaps its mutexes) as they were mid-call: that child could never write the
# file. So every call on a connection passes this gate, and fork() waits at it for calls in
# flight (new ones wait for the fork). A call lasts at most about busy_timeout; the gate waits
# a little longer than the default before letting the fork go ahead regardless.
_FORK_GATE = forksafe.ForkGate(timeout=10.0)
# Open connections' backends, so that a forked child can disown them (see _disown_after_fork).
_connected: weakref.WeakSet[SQLiteBackend] = weakref.WeakSet()


class SQLiteBackend(RecordStorageBackend):
    options_model = SQLiteOptions
    declared_capabilities = frozenset({Capability.TTL, Capability.UNIQUE_IDS})

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = StorageURL.parse(url)
        self._path, options = _settings(parsed)
        self._table, self._busy_timeout = options.table, options.busy_timeout
        locked = (
            f"; another connection held the write lock for longer than busy_timeout="
            f"{self._busy_timeout:g} s: raise busy_timeout in the URL, or shorten the other "
            "writer's transactions"
        )
        # sqlite3 raises one OperationalError for many causes: only its text tells them apart.
        self._errors = ErrorTable(
            [ErrorRow((), lambda exc: f"{exc}{locked}", words=("database is locked",))], default=str
        )
        self._shown = parsed.masked
        self._worker: _Worker | None = None
        self._connection: sqlite3.Connection | None = None
        self._statements: dict[tuple[tuple[int | str, ...], int, str], str] = {}
        self._selects: dict[int, str] = {}
        self._load_columns = _LOAD_COLUMNS
        # A single load's query (no id column: the caller's id is the record's).
        self._single = ""
        # The batch load query, when this SQLite has json_each (decided at connect; None: `_select`).
        self._listed: str | None = None

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        _settings(url)

    async def connect(self) -> None:
        if self._connection is not None:
            return
        worker = _Worker()
        try:
            self._connection = await worker.run(self._open)
        except BaseException:
            worker.stop()
            raise
        self._worker = worker
        # A backend dropped without disconnect() (its loop closed by hand) still closes its file.
        self._finalizer = weakref.finalize(self, _close_quietly, self._connection, worker)
        _connected.add(self)

    def _open(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                # Only the load columns' names ask for a converter (`_LOAD_COLUMNS`).
                detect_types=sqlite3.PARSE_COLNAMES,
            )
        except sqlite3.Error as exc:
            raise_unchained(
                StorageConnectionError(
                    f"cannot open SQLite database {self._path!r} ({exc}); check that the directory "
                    "exists and is writable",
                    url=self._shown,
                )
            )
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.005
        while True:
            try:
                _prepare(connection, self._table)
            except sqlite3.OperationalError as exc:
                # Connections preparing a new file together each hold a shared lock and want the
                # exclusive one: SQLite answers one of them "locked" at once, without waiting out
                # busy_timeout (that would deadlock). Once the other is done, ours goes through.
                if "locked" in str(exc) and time.monotonic() + pause < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, 0.1)
                    continue
                failure: sqlite3.Error = exc
            except sqlite3.Error as exc:
                failure = exc
            else:
                if connection.execute("PRAGMA encoding").fetchone()[0] != "UTF-8":
                    # CAST(data AS BLOB) gives the text in the database's encoding: decode it.
                    self._load_columns = _LOAD_COLUMNS_DECODED
                self._single = (
                    f'SELECT {self._load_columns} FROM "{self._table}" WHERE id = ? AND +class_name = ? '
                    "AND (expires_at IS NULL OR expires_at > ?)"
                )
                self._listed = self._listed_select(connection)
                return connection
            connection.close()
            raise_unchained(self._error("prepare", failure))

    async def disconnect(self) -> None:
        connection, worker = self._connection, self._worker
        self._connection = self._worker = None
        if connection is None or worker is None:
            return
        self._finalizer.detach()
        _connected.discard(self)
        try:
            await worker.run(connection.close)
        finally:
            worker.stop()

    async def _run(self, action: str, work: Callable[[sqlite3.Connection], T]) -> T:
        connection, worker = self._connection, self._worker
        if connection is None or worker is None:
            raise StorageConnectionError(f"the SQLite backend for {self._shown!r} is closed", url=self._shown)
        # Not `map_driver_errors`: its object and lambda per call cost more than the rest of this
        # method; raise_unchained keeps the driver's exception out of the chain all the same.
        try:
            return await worker.run(work, connection)
        except sqlite3.Error as exc:
            raise_unchained(self._error(action, exc))

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        if records:
            await self._run("save", lambda connection: self._write(connection, records))
            self.stats.add(written=len(records))

    def _write(self, connection: sqlite3.Connection, records: Sequence[StoredRecord]) -> None:
        statements = self._upserts(records, _SAME_CLASS)
        if len(records) == 1:
            # One row is atomic on its own: no explicit transaction, half the round trips. (Not
            # one statement of many rows: a row refused by the identity rule is skipped, not
            # failed, and the statement would commit the others.)
            before = connection.total_changes
            connection.execute(*statements[0])
            if connection.total_changes == before:
                raise self._other_class(connection, records)
            return
        try:
            connection.execute("BEGIN IMMEDIATE")
            before = connection.total_changes
            for statement in statements:
                connection.execute(*statement)
            if connection.total_changes - before != len(records):
                refusal = self._other_class(connection, records)
                connection.execute("ROLLBACK")
                raise refusal
            connection.execute("COMMIT")
        except sqlite3.Error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _upserts(self, records: Sequence[StoredRecord], condition: str) -> list[tuple[str, list[Any]]]:
        """The statements (and their parameters) that store `records`, in order.

        Many rows per statement instead of `executemany`: a third fewer instructions per row
        inside sqlite3 and SQLite. A value every record of the batch shares (its class, schema
        version, timestamps, encoding: one `now` and one class per write) is bound once, as a
        numbered parameter each row names (`?3`), and only the id and payload are bound per row:
        each bound value costs sqlite3 and SQLite ~400 instructions (measured, 1,000 records in a
        bare loop: 17.0 M -> 11.2 M). A shared None is the literal NULL, not a bound None: sqlite3
        binds None through its adapter lookup, which raises and discards two AttributeErrors.
        """
        count = len(records)
        if count == 1:
            return [self._upsert_one(records[0], condition)]
        shared: list[Any] = []
        # One list per column bound per row: the ids' texts, the payloads, then the values the
        # records do not share.
        per_row: list[list[Any]] = [_id_texts([record.id for record in records]), []]
        # Each of `_SHARED_COLUMNS`: its list in `per_row`, or the SQL of its shared value.
        places: list[int | str] = []
        # The records of a batch share their timestamps: each distinct instant is formatted once.
        texts: dict[datetime | None, str | None] = {None: None}
        # Comprehensions rather than map(attrgetter(name)): a slot read in the loop is
        # specialised, attrgetter's is a generic lookup (4x the instructions).
        columns: tuple[list[Any], ...] = (
            [r.class_name for r in records],
            [r.schema_version for r in records],
            [r.created_at for r in records],
            [r.updated_at for r in records],
            [r.expires_at for r in records],
            [r.encoding for r in records],
            [r.revision for r in records],
        )
        for name, values in zip(_SHARED_COLUMNS, columns, strict=True):
            first = values[0]
            if values.count(first) == count:
                if first is None:
                    places.append("NULL")
                else:
                    shared.append(format_timestamp(first) if name in _TIMESTAMPS else first)
                    places.append(f"?{len(shared)}")
            else:
                if name in _TIMESTAMPS:
                    for moment in set(values).difference(texts):
                        texts[moment] = format_timestamp(moment)
                    values = list(map(texts.__getitem__, values))
                places.append(len(per_row))
                per_row.append(values)
        # JSON stays TEXT, readable with SQLite's JSON functions; other encodings are BLOBs.
        if records[0].encoding == "json" and type(places[_ENCODING_PLACE]) is str:
            per_row[1] = [record.payload.decode() for record in records]
        else:
            per_row[1] = [r.payload.decode() if r.encoding == "json" else r.payload for r in records]
        # In the INSERT's order, after the id: the class, the payload, the rest.
        shape = (places[0], 1, *places[1:])
        width = len(per_row)
        # Statements of a power of two rows: a few texts per kind of batch whatever its size
        # (sqlite3 keeps 128 prepared statements; preparing costs ~15,000 instructions per row,
        # more than running it).
        most = min(_MAX_ROWS, (_MAX_PARAMETERS - len(shared)) // width)
        most = 1 << (most.bit_length() - 1)
        sizes = [most] * (count // most)
        sizes += [1 << bit for bit in reversed(range(most.bit_length())) if count % most & (1 << bit)]
        statements: list[tuple[str, list[Any]]] = []
        start = 0
        for size in sizes:
            parameters = shared + [None] * (width * size)
            for column, values in enumerate(per_row):
                parameters[len(shared) + column :: width] = values[start : start + size]
            statements.append((self._statement(shape, len(shared), size, condition), parameters))
            start += size
        return statements

    def _upsert_one(self, record: StoredRecord, condition: str) -> tuple[str, list[Any]]:
        """`_upserts` of one record: every value bound but a None (the literal NULL), without
        looking for shared values (which doubled this step's time)."""
        parameters = [
            str(record.id),
            record.class_name,
            record.payload.decode() if record.encoding == "json" else record.payload,
            record.schema_version,
            format_timestamp(record.created_at),
            format_timestamp(record.updated_at),
        ]
        # Each column after the id: its parameter's place in the row (the id's is 0), or NULL.
        shape: list[int | str] = [1, 2, 3, 4, 5]
        for value in (record.expires_at, record.encoding, record.revision):
            if value is None:
                shape.append("NULL")
            else:
                shape.append(len(parameters))
                parameters.append(format_timestamp(value) if isinstance(value, datetime) else value)
        return self._statement(tuple(shape), 0, 1, condition), parameters

    def _statement(self, shape: tuple[int | str, ...], bound: int, count: int, condition: str) -> str:
        """The upsert text of `count` rows of `shape` after `bound` shared values, built once:
        sqlite3 caches statements by their text."""
        key = (shape, count, condition)
        text = self._statements.get(key)
        if text is None:
            width = sum(type(place) is int for place in shape) + 1  # the id's too
            rows = []
            for row in range(count):
                first = bound + row * width + 1  # the row's id
                places = [place if isinstance(place, str) else f"?{first + place}" for place in shape]
                rows.append(f"(?{first}, {', '.join(places)})")
            head = _UPSERT_HEAD.format(table=self._table)
            text = self._statements[key] = f"{head}{','.join(rows)}{_UPSERT_TAIL}{condition}"
        return text

    async def save_records_checked(self, records: Sequence[StoredRecord]) -> list[RevisionConflict]:
        if not records:
            return []
        latest = last_per_id(records)
        conflicts = await self._run("save", lambda connection: self._write_checked(connection, latest))
        if not conflicts:
            self.stats.add(written=len(latest))
        return conflicts

    def _write_checked(
        self, connection: sqlite3.Connection, records: list[StoredRecord]
    ) -> list[RevisionConflict]:
        """Check every revision, then write, in one transaction that holds the write lock from its
        start: no other writer can come between the check and the write."""
        now = format_timestamp(datetime.now(UTC))
        ids = [str(record.id) for record in records]
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                stored: dict[str, tuple[str, int | None, str | None, str]] = {}
                for start in range(0, len(ids), _MAX_IDS_PER_SELECT):
                    chunk = ids[start : start + _MAX_IDS_PER_SELECT]
                    for id_text, owner, revision, expires, updated in connection.execute(
                        f'SELECT id, class_name, revision, expires_at, updated_at FROM "{self._table}" '
                        f"WHERE id IN ({','.join('?' * len(chunk))})",
                        chunk,
                    ):
                        stored[id_text] = (owner, revision, expires, updated)
                conflicts: list[RevisionConflict] = []
                for record, id_text in zip(records, ids, strict=True):
                    found: int | None = None
                    updated_at: datetime | None = None
                    if id_text in stored:
                        owner, revision, expires, updated = stored[id_text]
                        if owner != record.class_name:
                            raise refuse_other_class(
                                record.id, owner, record.class_name, batch=len(records) > 1
                            )
                        if expires is None or expires > now:
                            found = revision or 0
                            updated_at = parse_timestamp(updated)
                    conflict = check_revision(record, found, updated_at)
                    if conflict is not None:
                        conflicts.append(conflict)
                if not conflicts:
                    for statement in self._upserts(records, ""):
                        connection.execute(*statement)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("ROLLBACK" if conflicts else "COMMIT")
        except sqlite3.Error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return conflicts

    def _other_class(
        self, connection: sqlite3.Connection, records: Sequence[StoredRecord]
    ) -> StorageValidationError:
        """The identity-rule error for a refused write, naming the class that owns the id."""
        owners: dict[UUID, str] = {}
        for record in records:
            # Earlier records of the batch are written (not committed) by now: they own their ids too.
            row = connection.execute(
                f'SELECT class_name FROM "{self._table}" WHERE id = ?', (str(record.id),)
            ).fetchone()
            owner = owners.setdefault(record.id, record.class_name if row is None else row[0])
            if owner != record.class_name:
                return refuse_other_class(record.id, owner, record.class_name, batch=len(records) > 1)
        return refuse_other_class(records[0].id, "?", records[0].class_name, batch=len(records) > 1)

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        if not keys:
            return []
        # The very list the worker's future keeps as its result until the task's step ends: a
        # caller that lets each record go as its model is built (load_many) empties it, so the
        # future keeps no record alive (measured before: +15 MiB of peak at 100,000 records).
        found = await self._run("load", lambda connection: self._read(connection, keys))
        self.stats.add(read=len(keys) - found.count(None))
        return found

    def _read(self, connection: sqlite3.Connection, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        now = _now_text()
        if len(keys) == 1:
            # A single load: no grouping, and the caller's id and class name as they are.
            id, class_name = keys[0]
            row = connection.execute(self._single, (str(id), class_name, now)).fetchone()
            return [None if row is None else _loaded(row, class_name, id)]
        if self._listed is not None:
            return self._read_listed(connection, keys, now, self._listed)
        texts = [str(id) for id, _ in keys]
        # Each id's text once, and back to the caller's UUID without parsing the row's text.
        by_class: dict[str, dict[str, UUID]] = {}
        for (id, class_name), text in zip(keys, texts, strict=True):
            by_class.setdefault(class_name, {})[text] = id
        found: dict[str, dict[str, StoredRecord]] = {}
        for class_name, ids in by_class.items():
            records = found[class_name] = {}
            unique = list(ids)
            for start in range(0, len(unique), _MAX_IDS_PER_SELECT):
                chunk = unique[start : start + _MAX_IDS_PER_SELECT]
                for id_text, *row in connection.execute(self._select(len(chunk)), (class_name, *chunk, now)):
                    records[id_text] = _loaded(row, class_name, ids[id_text])
        return [found[class_name].get(text) for text, (_, class_name) in zip(texts, keys, strict=True)]

    def _listed_select(self, connection: sqlite3.Connection) -> str | None:
        """The batch load query: the ids as one JSON array, each row tagged with its id's place.

        Against `_select`'s `id IN (?, ...)` (measured, 1,000 ids: ~35% less time in SQLite and
        sqlite3): one bound text instead of one per id, no id column to convert and look up, no
        chunks of 900. `CROSS JOIN` keeps the array as the outer loop, one primary-key lookup
        per id, whatever the planner would make of the class_name index. SQLite builds without
        the JSON functions (before 3.38 they could be left out) keep `_select`.
        """
        try:
            connection.execute("SELECT key FROM json_each('[\"x\"]')").fetchall()
        except sqlite3.OperationalError:
            return None
        return (
            f'SELECT k.key, {self._load_columns} FROM json_each(?) AS k CROSS JOIN "{self._table}" AS t '
            "ON t.id = k.value WHERE +t.class_name = ? AND (t.expires_at IS NULL OR t.expires_at > ?)"
        )

    def _read_listed(
        self, connection: sqlite3.Connection, keys: Sequence[RecordKey], now: str, query: str
    ) -> list[StoredRecord | None]:
        count = len(keys)
        ids = [id for id, _ in keys]
        first = keys[0][1]
        groups: list[tuple[str, Sequence[int]]]
        if [class_name for _, class_name in keys].count(first) == count:
            groups = [(first, range(count))]
        else:
            places: dict[str, list[int]] = {}
            for place, (_, class_name) in enumerate(keys):
                places.setdefault(class_name, []).append(place)
            groups = list(places.items())
        found: list[StoredRecord | None] = [None] * count
        decoded = self._load_columns is _LOAD_COLUMNS_DECODED
        for class_name, positions in groups:
            listed = ids if len(positions) == count else [ids[place] for place in positions]
            rows = connection.execute(query, (_id_array(listed), class_name, now))
            if decoded:
                for place, *row in rows:
                    position = positions[place]
                    found[position] = _loaded(row, class_name, ids[position])
                continue
            # Each row starts with its id's place in the array. The common record (JSON, no
            # revision) is built here, without `_loaded`'s call and checks: a fifth of this
            # loop's instructions.
            for place, data, version, created, updated, encoding_and_revision in rows:
                position = positions[place]
                if encoding_and_revision is None:
                    if updated is None:
                        updated = created
                    found[position] = StoredRecord(ids[position], class_name, data, version, created, updated)
                else:
                    found[position] = _loaded(
                        (data, version, created, updated, encoding_and_revision), class_name, ids[position]
                    )
        return found

    def _select(self, count: int) -> str:
        """The load query for `count` ids of one class, built once per count (sqlite3 caches
        statements by their text)."""
        text = self._selects.get(count)
        if text is None:
            marks = ",".join("?" * count)
            # `+class_name`: without the plus, SQLite's planner picks the class_name index
            # for many ids and walks every record of the class (measured: 5x slower at
            # 30,000 records) instead of one primary-key lookup per id.
            text = self._selects[count] = (
                f'SELECT id, {self._load_columns} FROM "{self._table}" '
                f"WHERE +class_name = ? AND id IN ({marks}) AND (expires_at IS NULL OR expires_at > ?)"
            )
        return text

    async def delete(self, id: UUID, class_name: str) -> bool:
        def remove(connection: sqlite3.Connection) -> bool:
            where = f'DELETE FROM "{self._table}" WHERE id = ? AND class_name = ?'
            # Live first, to answer like load would; then an expired leftover goes too.
            live = connection.execute(
                f"{where} AND (expires_at IS NULL OR expires_at > ?)",
                (str(id), class_name, format_timestamp(datetime.now(UTC))),
            ).rowcount
            if not live:
                connection.execute(where, (str(id), class_name))
            return live > 0

        existed = await self._run("delete", remove)
        self.stats.add()
        return existed

    async def scan_records(
        self, *, cursor: str | None, limit: int, class_name: str | None = None, include_expired: bool = False
    ) -> tuple[list[StoredRecord], str | None]:
        conditions = ["id > ?"]
        parameters: list[object] = [cursor or ""]
        if class_name is not None:
            conditions.append("class_name = ?")
            parameters.append(class_name)
        if not include_expired:
            conditions.append("(expires_at IS NULL OR expires_at > ?)")
            parameters.append(format_timestamp(datetime.now(UTC)))
        query = f'SELECT {_COLUMNS} FROM "{self._table}" WHERE {" AND ".join(conditions)} ORDER BY id LIMIT ?'

        def read(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return connection.execute(query, (*parameters, limit)).fetchall()

        rows = await self._run("scan", read)
        self.stats.add(read=len(rows))
        page = [_record_from_row(row) for row in rows]
        return page, (str(page[-1].id) if len(page) == limit else None)

    async def find_record(self, id: UUID) -> StoredRecord | None:
        def read(connection: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = connection.execute(
                f'SELECT {_COLUMNS} FROM "{self._table}" WHERE id = ?',
                (str(id),),
            ).fetchone()
            return row

        row = await self._run("load", read)
        self.stats.add(read=row is not None)
        return None if row is None else _record_from_row(row)

    async def purge_expired(self) -> int:
        now = format_timestamp(datetime.now(UTC))

        def purge(connection: sqlite3.Connection) -> int:
            cursor = connection.execute(
                f'DELETE FROM "{self._table}" WHERE expires_at IS NOT NULL AND expires_at <= ?', (now,)
            )
            return cursor.rowcount

        purged = await self._run("purge", purge)
        self.stats.add()
        return purged

    def _error(self, action: str, exc: BaseException) -> StorageConnectionError:
        return StorageConnectionError(
            f"SQLite {action} failed on {self._path!r}: {self._errors.hint(exc)}", url=self._shown
        )


def _disown_after_fork() -> None:
    """A forked child never closes its parent's connections, not even at exit.

    SQLite forbids using a connection across fork(): closing it here would act on lock
    bookkeeping the child shares with its own connections to the same file. The runtime keeps
    the parent's backends alive for good; this stops their exit-time close.
    """
    for backend in list(_connected):
        backend._finalizer.atexit = False
    _connected.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_after_fork)


_Call = tuple["asyncio.Future[Any] | None", Callable[..., Any], tuple[Any, ...]]


def _close_quietly(connection: sqlite3.Connection, worker: _Worker) -> None:
    worker.stop(connection.close)


class _Worker:
    """The thread that owns a connection: it runs the calls given to `run` one at a time, in order,
    and hands each outcome back to the caller's event loop.

    Not `loop.run_in_executor`: its concurrent future, condition, semaphore and chained callbacks
    cost ~160,000 instructions per call, here ~55,000 (callgrind, a call doing nothing), a
    SQLite save's largest single cost. What a caller sees is the same: calls run in the order
    given, a call cancelled before it starts never runs, and one cancelled while it runs finishes
    with its outcome dropped.
    """

    def __init__(self) -> None:
        # (the future to answer, or None for none; the call; its arguments), None to stop.
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        # A daemon: a backend never disconnected stops it from its finalizer, which runs at exit
        # only after the interpreter has joined every other thread.
        self._thread = threading.Thread(target=self._serve, name="pydantic-toast-sqlite", daemon=True)
        self._thread.start()

    def run(self, work: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((future, work, args))
        return future

    def stop(self, last: Callable[[], object] | None = None) -> None:
        """End the thread once the calls given before are done, after running `last` on it (the
        finalizer's close); wait for that unless called on the thread itself."""
        if last is not None:
            self._calls.put((None, last, ()))
        self._calls.put(None)
        if last is not None and threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join()

    def _serve(self) -> None:
        get = self._calls.get
        while (call := get()) is not None:
            future, work, args = call
            del call
            if future is None:  # the finalizer's close: nobody to tell of a failure
                with contextlib.suppress(Exception):
                    _FORK_GATE.run(work, *args)
                del work, args
                continue
            if future.cancelled():
                del future, work, args
                continue
            deliver: Callable[[asyncio.Future[Any], Any], None]
            try:
                outcome: Any = _FORK_GATE.run(work, *args)
                deliver = _succeed
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
                outcome, deliver = exc, _fail
            # The call (its closure holds the backend and the records) goes before the caller
            # resumes, and the outcome once handed over: the caller holds the last references,
            # as with an executor, and nothing stays alive while the thread waits for work.
            del work, args
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for it
                future.get_loop().call_soon_threadsafe(deliver, future, outcome)
            del future, outcome


def _succeed(future: asyncio.Future[T], result: T) -> None:
    if not future.cancelled():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.cancelled():
        future.set_exception(exc)


# Columns later versions added, with their definitions. `encoding`: the codec stage (rows of
# earlier tables are JSON); `revision`: optimistic concurrency (rows without one count as 0).
_ADDED_COLUMNS = (("encoding", "TEXT NOT NULL DEFAULT 'json'"), ("revision", "INTEGER"))


def _prepare(connection: sqlite3.Connection, table: str) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(
        f'CREATE TABLE IF NOT EXISTS "{table}" ('
        "id TEXT PRIMARY KEY, class_name TEXT NOT NULL, data TEXT NOT NULL, "
        "schema_version INTEGER NOT NULL DEFAULT 1, created_at TEXT NOT NULL, "
        "updated_at TEXT NOT NULL, expires_at TEXT, encoding TEXT NOT NULL DEFAULT 'json', "
        "revision INTEGER)"
    )
    _add_missing_columns(connection, table)
    connection.execute(f'CREATE INDEX IF NOT EXISTS "idx_{table}_class_name" ON "{table}" (class_name)')


def _add_missing_columns(connection: sqlite3.Connection, table: str) -> None:
    """Tables created by earlier versions (or by the contract's DDL) gain the columns they lack,
    in place: ADD COLUMN only changes the schema, existing rows keep their data."""
    columns = {row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')}
    for name, definition in _ADDED_COLUMNS:
        if name in columns:
            continue
        try:
            connection.execute(f'ALTER TABLE "{table}" ADD COLUMN {name} {definition}')
        except sqlite3.OperationalError as exc:
            # "duplicate column": another process added it between our look and our ALTER.
            if "duplicate column" not in str(exc):
                raise


# Where each of an id's 32 hex digits goes in its text: 8-4-4-4-12 digits, dashes between.
_DIGIT_PLACES = tuple(
    (digit, digit + (digit >= 8) + (digit >= 12) + (digit >= 16) + (digit >= 20)) for digit in range(32)
)


# From this many ids on, `_id_texts` beats `str()` per id: its 32 slice assignments cost ~7 µs
# whatever the count (measured: 7.3 µs for one id against 0.9 µs, level at about 16).
_BATCH_ID_TEXTS = 16


def _hex_digits(ids: Sequence[UUID]) -> bytes:
    """The ids' 32 hex digits each, one after the other (int.to_bytes and one hexlify: a quarter
    fewer instructions than formatting every id with "%032x")."""
    return binascii.hexlify(b"".join(map(int.to_bytes, [id.int for id in ids], repeat(16))))


def _id_texts(ids: Sequence[UUID]) -> list[str]:
    """`[str(id) for id in ids]`, made for the whole batch at once from `_BATCH_ID_TEXTS` ids on.

    UUID.__str__ is Python code: it was two thirds of the Python work of building a batch's
    parameters. Here one call formats every id's digits, and each digit position is moved into
    place for all ids by one slice assignment: per id, only C code runs.
    """
    count = len(ids)
    if count < _BATCH_ID_TEXTS:
        return [str(id) for id in ids]
    digits = _hex_digits(ids)
    text = bytearray(b"-" * (37 * count))  # 36 characters and a comma per id
    text[36::37] = b"," * count
    for digit, place in _DIGIT_PLACES:
        text[place::37] = digits[digit::32]
    texts = text.decode().split(",")
    texts.pop()  # after the last comma
    return texts


def _id_array(ids: Sequence[UUID]) -> str:
    """The JSON array of the ids' texts, made like `_id_texts` from `_BATCH_ID_TEXTS` ids on."""
    count = len(ids)
    if count < _BATCH_ID_TEXTS:
        return '["' + '","'.join([str(id) for id in ids]) + '"]'
    digits = _hex_digits(ids)
    # "[", then per id its quoted text and a comma (the last one becomes the "]").
    text = bytearray(b"-" * (39 * count + 1))
    text[0] = ord("[")
    text[1::39] = text[38::39] = b'"' * count
    text[39::39] = b"," * count
    text[-1] = ord("]")
    for digit, place in _DIGIT_PLACES:
        text[2 + place :: 39] = digits[digit::32]
    return text.decode()


class _Moments(dict[bytes, datetime]):
    """The load columns' converter (`_MOMENT`): a stored timestamp's text as its datetime.

    Records saved together share their timestamps, and a hit is a lookup in C: no Python call,
    no str made for the text (a third of a batch load's per-row Python work before). Shared by
    every connection of the process, and emptied now and then to stay small.
    """

    def __missing__(self, text: bytes) -> datetime:
        if len(self) >= _MOMENTS_KEPT:
            self.clear()
        moment = self[text] = parse_timestamp(text.decode())
        return moment


_MOMENTS_KEPT = 4096
sqlite3.register_converter(_MOMENT, _Moments().__getitem__)


def _encoding_and_revision(value: int | str) -> tuple[str, int | None]:
    """The record's encoding and revision from `_ENCODING_AND_REVISION` (when not NULL: JSON
    without a revision): a JSON record's revision, or "=tag" / "revision=tag" for another
    encoding (a revision's text holds no "=")."""
    if isinstance(value, int):
        return "json", value
    revision, _, encoding = value.partition("=")
    return encoding, int(revision) if revision else None


def _loaded(row: Sequence[Any], class_name: str, id: UUID) -> StoredRecord:
    """A row of the load columns (`_LOAD_COLUMNS` or `_LOAD_COLUMNS_DECODED`) as a record."""
    data, version, created, updated, encoding_and_revision = row
    if type(data) is str:  # a JSON record read as text (_LOAD_COLUMNS_DECODED)
        data = data.encode()
    if type(created) is str:  # _LOAD_COLUMNS_DECODED: no converter
        created = parse_timestamp(created)
        updated = None if updated is None else parse_timestamp(updated)
    if updated is None:
        updated = created
    encoding, revision = (
        ("json", None) if encoding_and_revision is None else _encoding_and_revision(encoding_and_revision)
    )
    return StoredRecord(id, class_name, data, version, created, updated, None, encoding, revision)


# The last second's text: format_timestamp(datetime.now(UTC)) costs ~20,000 instructions, more
# than the query it bounds.
_second: tuple[int, str] = (-1, "")


def _now_text() -> str:
    """Now as `format_timestamp` writes it (UTC, microseconds, `Z`): what expires_at compares with."""
    global _second
    moment = time.time()
    whole = int(moment)
    second, prefix = _second
    if whole != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, prefix)
    return f"{prefix}.{int((moment - whole) * 1_000_000):06d}Z"


def _record_from_row(row: tuple[Any, ...]) -> StoredRecord:
    """A row of `_COLUMNS` (scans and finds: the class name and the expiry too) as a record."""
    id, class_name, data, version, created, updated, expires, encoding, revision = row
    if encoding is None:
        encoding = "json"
        if type(data) is str:
            data = data.encode()
    return StoredRecord(
        UUID(id),
        class_name,
        data,
        version,
        parse_timestamp(created),
        parse_timestamp(updated),
        None if expires is None else parse_timestamp(expires),
        encoding,
        revision,
    )


def _settings(url: StorageURL) -> tuple[str, SQLiteOptions]:
    """The database file's path and the URL's options, validated without opening anything."""
    options = SQLiteOptions.from_url(url)
    if url.host or url.port:
        raise StorageValidationError(
            f"a SQLite URL names a file, not a host: write 'sqlite:///relative.db' or "
            f"'sqlite:////absolute/path.db', not {url.masked!r}",
            expected="sqlite:///path",
            actual=url.masked,
        )
    path = url.path[1:] if url.path.startswith("/") else url.path
    if not path or path.endswith("/"):
        raise StorageValidationError(
            f"SQLite URL {url.masked!r} names no file; write 'sqlite:///toast.db' (relative) or "
            "'sqlite:////tmp/toast.db' (absolute)",
            expected="sqlite:///path",
            actual=url.masked,
        )
    if path == ":memory:":
        raise StorageValidationError(
            "sqlite:///:memory: would give every event loop its own empty database; "
            "use 'memory://' for a process-local store",
            expected="sqlite:///path or memory://",
            actual=url.masked,
        )
    return str(Path(path)), options
