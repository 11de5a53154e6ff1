"""The SQLite backend's fast paths and its worker thread: each behaves as the general way it replaces.

Ids of small batches are formatted one by one and large ones at once (`_id_texts`); calls reach
the connection's thread through `_Worker` instead of an executor, which must keep an executor's
order, cancellation and error delivery, and end its thread when the backend closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast
from uuid import UUID, uuid4

import pytest

from pydantic_toast.backends.base import StoredRecord, format_timestamp
from pydantic_toast.backends.sqlite import (
    _BATCH_ID_TEXTS,
    _MOMENTS_KEPT,
    SQLiteBackend,
    _id_array,
    _id_texts,
    _Moments,
)
from pydantic_toast.exceptions import StorageConnectionError, StorageValidationError


def _record(id: UUID, moment: datetime) -> StoredRecord:
    return StoredRecord(id, "Thing", b'{"n":1}', 1, moment, moment)


def _stored_ids(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as connection:
        return {row[0] for row in connection.execute("SELECT id FROM external_models")}


def test_batch_id_texts_are_the_ids_str() -> None:
    for count in (1, _BATCH_ID_TEXTS - 1, _BATCH_ID_TEXTS, 1000):
        ids = [uuid4() for _ in range(count)] + [UUID(int=0), UUID(int=2**128 - 1)]
        assert _id_texts(ids) == [str(id) for id in ids]
        assert json.loads(_id_array(ids)) == [str(id) for id in ids]
        assert _id_array(ids) == json.dumps([str(id) for id in ids], separators=(",", ":"))


def test_the_timestamp_converter_parses_like_parse_timestamp_and_stays_small() -> None:
    moments = _Moments()
    start = datetime(2024, 5, 1, tzinfo=UTC)
    for step in range(2 * _MOMENTS_KEPT + 3):
        moment = start + timedelta(microseconds=step)
        text = format_timestamp(moment).encode()
        assert moments[text] == moment
        assert moments[text] is moments[text]  # the second look is a hit
        assert len(moments) <= _MOMENTS_KEPT
    # Texts of earlier versions or other writers parse as parse_timestamp reads them.
    assert moments[b"2024-05-01T00:00:00+00:00"] == start
    assert moments[b"2024-05-01T00:00:00"] == start


@pytest.mark.parametrize("count", [1, _BATCH_ID_TEXTS - 1, _BATCH_ID_TEXTS, 2 * _BATCH_ID_TEXTS])
async def test_batches_either_side_of_the_id_threshold_store_the_same_ids(tmp_path: Path, count: int) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'toast.db'}")
    await backend.connect()
    try:
        now = datetime.now(UTC)
        ids = [uuid4() for _ in range(count)]
        await backend.save_records([_record(id, now) for id in ids])
        assert _stored_ids(tmp_path / "toast.db") == {str(id) for id in ids}
        loaded = await backend.load_records([(id, "Thing") for id in ids])
        assert [record.id if record else None for record in loaded] == ids
    finally:
        await backend.disconnect()


def _stored_rows(path: Path) -> dict[str, tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as connection:
        return {
            row[0]: row[1:]
            for row in connection.execute(
                "SELECT id, class_name, data, typeof(data), schema_version, created_at, updated_at, "
                "expires_at, encoding, revision FROM external_models"
            )
        }


def _expected_row(record: StoredRecord) -> tuple[object, ...]:
    as_text = record.encoding == "json"
    return (
        record.class_name,
        record.payload.decode() if as_text else record.payload,
        "text" if as_text else "blob",
        record.schema_version,
        format_timestamp(record.created_at),
        format_timestamp(record.updated_at),
        None if record.expires_at is None else format_timestamp(record.expires_at),
        record.encoding,
        record.revision,
    )


@pytest.mark.parametrize("count", [1, 2, 7, 300, 1000])
async def test_batch_saves_store_each_value_whether_the_batch_shares_it_or_not(
    tmp_path: Path, count: int
) -> None:
    """Values every record shares are bound once per statement, the others per row; batches are
    cut into statements of a power of two rows: every row holds what its record said."""
    path = tmp_path / "toast.db"
    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.connect()
    try:
        now = datetime.now(UTC)
        alike = [StoredRecord(uuid4(), "Thing", b'{"n":%d}' % n, 3, now, now) for n in range(count)]
        later = now + timedelta(days=1)
        unlike = [
            StoredRecord(
                uuid4(),
                f"Kind{n % 3}",
                b'{"n":%d}' % n if n % 2 else b"\x00\xff%d" % n,
                1 + n % 4,
                now - timedelta(seconds=n % 5),
                now + timedelta(microseconds=n % 7),
                None if n % 3 else later + timedelta(seconds=n),
                "json" if n % 2 else "zstd",
                None if n % 4 else n,
            )
            for n in range(count)
        ]
        expiring = [
            StoredRecord(uuid4(), "Thing", b"{}", 1, now, now, later, "json", 5) for _ in range(count)
        ]
        for batch in (alike, unlike, expiring):
            await backend.save_records(batch)
            await backend.save_records(batch)  # again: every row an update
        rows = _stored_rows(path)
        for record in alike + unlike + expiring:
            assert rows[str(record.id)] == _expected_row(record)
        assert len(rows) == 3 * count
    finally:
        await backend.disconnect()


async def test_a_refused_record_in_a_later_statement_of_a_batch_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "toast.db"
    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.connect()
    try:
        now = datetime.now(UTC)
        owned = StoredRecord(uuid4(), "Owner", b"{}", 1, now, now)
        await backend.save_records([owned])
        batch = [_record(uuid4(), now) for _ in range(700)]
        batch[600] = StoredRecord(owned.id, "Thing", b"{}", 1, now, now)
        with pytest.raises(StorageValidationError, match="Owner"):
            await backend.save_records(batch)
        assert _stored_ids(path) == {str(owned.id)}
    finally:
        await backend.disconnect()


def _workers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "pydantic-toast-sqlite"]


async def test_calls_run_in_order_and_failures_reach_the_caller(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'toast.db'}")
    await backend.connect()
    try:
        seen: list[int] = []

        def note(n: int) -> int:
            seen.append(n)
            return n

        def noting(n: int) -> Callable[[sqlite3.Connection], int]:
            return lambda _: note(n)

        results = await asyncio.gather(*(backend._run("test", noting(n)) for n in range(50)))
        assert seen == list(range(50)) == results
        with pytest.raises(StorageConnectionError, match="SQLite test failed"):
            await backend._run("test", lambda connection: connection.execute("SELECT * FROM missing"))
        with pytest.raises(ZeroDivisionError):
            await backend._run("test", lambda connection: 1 // 0)
        seven = await backend._run("test", lambda connection: connection.execute("SELECT 7").fetchone()[0])
        assert seven == 7
    finally:
        await backend.disconnect()


async def test_a_call_cancelled_before_it_starts_never_runs(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'toast.db'}")
    await backend.connect()
    try:
        release = threading.Event()
        ran: list[str] = []
        blocker = asyncio.ensure_future(backend._run("test", lambda connection: release.wait(10)))
        waiting = asyncio.ensure_future(backend._run("test", lambda connection: ran.append("late")))
        await asyncio.sleep(0.05)
        waiting.cancel()
        release.set()
        assert await blocker is True
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # A call made afterwards still runs, after the cancelled one was passed over.
        await backend._run("test", lambda connection: ran.append("next"))
        assert ran == ["next"]
    finally:
        await backend.disconnect()


async def test_a_call_cancelled_while_it_runs_finishes_and_the_worker_goes_on(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'toast.db'}")
    await backend.connect()
    try:
        started, release = threading.Event(), threading.Event()
        finished: list[bool] = []

        def slow(connection: sqlite3.Connection) -> None:
            started.set()
            release.wait(10)
            finished.append(True)

        running = asyncio.ensure_future(backend._run("test", slow))
        await asyncio.to_thread(started.wait, 10)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        release.set()
        assert await backend._run("test", lambda connection: 3) == 3
        assert finished == [True]
    finally:
        await backend.disconnect()


async def test_disconnect_ends_the_worker_thread(tmp_path: Path) -> None:
    before = len(_workers())
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'toast.db'}")
    await backend.connect()
    assert len(_workers()) == before + 1
    await backend.disconnect()
    for _ in range(200):
        if len(_workers()) == before:
            break
        await asyncio.sleep(0.01)
    assert len(_workers()) == before


def test_a_backend_dropped_without_disconnect_closes_its_file_and_thread(tmp_path: Path) -> None:
    before = len(_workers())
    path = tmp_path / "toast.db"

    async def use() -> None:
        backend = SQLiteBackend(f"sqlite:///{path}")
        await backend.connect()
        await backend.save_records([_record(uuid4(), datetime.now(UTC))])

    asyncio.run(use())
    gc.collect()
    # The finalizer has the worker close the connection and stop (it cannot wait for that when the
    # worker itself drops the backend's last reference).
    for _ in range(200):
        if len(_workers()) == before:
            break
        time.sleep(0.01)
    assert len(_workers()) == before
    # The last connection's close checkpoints the WAL into the file and removes it.
    assert not (tmp_path / "toast.db-wal").exists()
    assert len(_stored_ids(path)) == 1


class _NoJSON:
    """A connection whose SQLite was built without the JSON functions."""

    def execute(self, sql: str, *parameters: object) -> sqlite3.Cursor:
        raise sqlite3.OperationalError("no such table: json_each")


async def _batch_reads(path: Path, *, encoding: str | None = None) -> None:
    """Loads through the JSON array and through `id IN (...)` give the same records."""
    if encoding is not None:
        with closing(sqlite3.connect(path)) as connection:
            connection.execute(f"PRAGMA encoding = '{encoding}'")
            connection.execute("CREATE TABLE scratch (x)")
    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.connect()
    try:
        assert backend._listed is not None
        assert backend._listed_select(cast(sqlite3.Connection, _NoJSON())) is None
        earlier, now = datetime(2024, 5, 1, tzinfo=UTC), datetime.now(UTC)
        things = [uuid4() for _ in range(40)]
        others = [uuid4() for _ in range(3)]
        expired, expiring = uuid4(), uuid4()
        await backend.save_records(
            [StoredRecord(id, "Thing", b'{"n":%d}' % n, 2, earlier, now) for n, id in enumerate(things)]
            + [StoredRecord(id, "Other", b"{}", 1, now, now, encoding="zstd") for id in others]
            + [StoredRecord(expired, "Thing", b"{}", 1, now, now, expires_at=earlier)]
            + [
                StoredRecord(
                    expiring, "Thing", b"{}", 1, now, now, expires_at=datetime(2999, 1, 1, tzinfo=UTC)
                )
            ]
        )
        await backend.save_records_checked(
            [StoredRecord(things[0], "Thing", b'{"n":0}', 2, earlier, now, revision=1)]
        )
        # Encoding and revision share one column: every combination, and tags holding its "=".
        await backend.save_records_checked(
            [
                StoredRecord(others[1], "Other", b"\x00\xff", 1, earlier, now, encoding="zstd", revision=1),
                StoredRecord(things[2], "Thing", b"", 1, now, now, encoding="a=b 3", revision=1),
            ]
        )
        await backend.save_records([StoredRecord(things[3], "Thing", b"x", 1, now, now, encoding="=1=")])
        batches = [
            [(id, "Thing") for id in things],  # one class: one query
            [(id, "Thing") for id in things[:3]],  # fewer ids than _BATCH_ID_TEXTS
            # classes mixed, an id asked under another class, duplicates, missing, expired, expiring
            [
                (things[0], "Thing"),
                (others[0], "Other"),
                (others[1], "Thing"),
                (things[0], "Thing"),
                (uuid4(), "Thing"),
                (expired, "Thing"),
                (expiring, "Thing"),
                (others[2], "Other"),
            ],
        ]
        listed = [await backend.load_records(keys) for keys in batches]
        singles = [[(await backend.load_records([key]))[0] for key in keys] for keys in batches]
        backend._listed = None
        assert [await backend.load_records(keys) for keys in batches] == listed
        assert singles == listed
        # Scans and finds read every column their own way: loads give the same records, but
        # for the expiry (left out, see below).
        for keys in batches:
            for (id, class_name), record in zip(keys, listed[batches.index(keys)], strict=True):
                stored = await backend.find_record(id)
                if stored is None or stored.class_name != class_name or id == expired:
                    assert record is None
                else:
                    assert record == dataclasses.replace(stored, expires_at=None)
        special = await backend.load_records(
            [(others[1], "Other"), (things[2], "Thing"), (things[3], "Thing")]
        )
        assert [(r.encoding, r.revision, r.payload) for r in special if r is not None] == [
            ("zstd", 1, b"\x00\xff"),
            ("a=b 3", 1, b""),
            ("=1=", None, b"x"),
        ]
        one_class, few, mixed = listed
        assert [record.id if record else None for record in one_class] == things
        assert [record.id if record else None for record in few] == things[:3]
        assert one_class[0] is not None
        assert one_class[0].revision == 1
        assert one_class[1] is not None
        assert one_class[1].created_at == earlier
        assert one_class[1].payload == b'{"n":1}'
        assert one_class[1].encoding == "json"
        assert [record is None for record in mixed] == [False, False, True, False, True, True, False, False]
        assert mixed[1] is not None
        assert mixed[1].encoding == "zstd"
        assert mixed[6] is not None
        # A load leaves the expiry out (the contract allows it; nothing reads it); it is stored.
        assert mixed[6].expires_at is None
        listed_expiring = await backend.find_record(expiring)
        assert listed_expiring is not None
        assert listed_expiring.expires_at == datetime(2999, 1, 1, tzinfo=UTC)
    finally:
        await backend.disconnect()


async def test_batch_loads_read_the_same_with_and_without_json_each(tmp_path: Path) -> None:
    await _batch_reads(tmp_path / "toast.db")


async def test_batch_loads_of_a_utf16_database_read_the_same(tmp_path: Path) -> None:
    await _batch_reads(tmp_path / "toast.db", encoding="UTF-16le")


async def test_a_driver_error_reaches_the_caller_without_the_driver_exception(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'toast.db'}")
    await backend.connect()
    try:
        with pytest.raises(StorageConnectionError, match="no such table") as caught:
            await backend._run("test", lambda connection: connection.execute("SELECT * FROM missing"))
        assert caught.value.__cause__ is None
        assert caught.value.__context__ is None
    finally:
        await backend.disconnect()
