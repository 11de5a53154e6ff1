"""Servers that misbehave in ways short of a crash: connections killed one by one under load, a
server at its connection limit, idle connections the server closed, an evicting memory policy.

Every test runs on throwaway servers of its own, since each kills, fills or reconfigures one.
Run with `-s` to see the figures (docs/reliability.md records the last run).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import pytest

import pydantic_toast
from fixtures.postgresql import PostgresServer, with_options
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageConnectionError

pytestmark = [pytest.mark.reliability]


def entry_model(storage: str, timeout: float, name: str = "Entry") -> Any:
    class Entry(ExternalBaseModel):
        value: int
        model_config = ExternalConfigDict(
            storage=storage, storage_name=f"{name}{uuid4().hex}", timeout=timeout
        )

    return Entry


# ---------------------------------------------------------------------- PostgreSQL

KILL_ROUNDS = 16
KILL_EVERY = 0.25
PG_WORKERS = 30


@pytest.mark.postgresql
@pytest.mark.slow
async def test_postgresql_backends_terminated_under_load(
    postgresql_server_factory: Callable[..., PostgresServer],
) -> None:
    """pg_terminate_backend on the pool's connections, round after round, while 30 tasks save and
    load: each dead connection is discarded and the call retried, so nothing fails.

    A connection terminated while idle in the pool may fail its next statement with asyncpg's
    InternalClientError ("cannot switch to state …; another operation is in progress") rather
    than a connection error; that too must count as a dead connection.
    """
    asyncpg = pytest.importorskip("asyncpg")
    server = postgresql_server_factory()
    application = f"toast_{uuid4().hex[:8]}"
    url = with_options(server.url, application_name=application, max_size="10")
    model = entry_model(url, timeout=10)
    await model(value=0).save()

    ledger: dict[UUID, int] = {}
    failures: collections.Counter[str] = collections.Counter()
    stop = False

    async def worker(number: int) -> None:
        counter = 0
        while not stop:
            counter += 1
            entry = model(value=number * 1_000_000 + counter)
            try:
                reference = await entry.save()
                loaded = await model.load(reference)
            except StorageConnectionError as exc:
                failures[str(exc).split(": ", 1)[-1][:100]] += 1
                continue
            assert loaded == entry
            ledger[reference.id] = entry.value

    admin = await asyncpg.connect(server.url)
    killed = 0
    started = time.monotonic()
    workers = [asyncio.create_task(worker(number)) for number in range(PG_WORKERS)]
    try:
        for _ in range(KILL_ROUNDS):
            await asyncio.sleep(KILL_EVERY)
            killed += await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                application,
            )
    finally:
        stop = True
        await asyncio.gather(*workers)
        await admin.close()
    elapsed = time.monotonic() - started

    await pydantic_toast.aclose()
    ids = list(ledger)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        assert [entry.value for entry in await model.load_many(chunk)] == [ledger[id] for id in chunk]
    print(
        f"\npostgresql terminate: {KILL_ROUNDS} rounds, {killed} backends terminated, {len(ledger)} "
        f"save+load pairs in {elapsed:.1f} s, {sum(failures.values())} failures {dict(failures)}"
    )
    assert killed >= KILL_ROUNDS, "the rounds terminated too few connections to test anything"
    assert not failures


def _full_server(factory: Callable[..., PostgresServer]) -> PostgresServer:
    # Six slots in all, none reserved, so a test decides exactly how many its pool can open.
    return factory(settings={"max_connections": 6, "superuser_reserved_connections": 0})


@pytest.mark.postgresql
async def test_postgresql_pool_waits_for_a_connection_when_the_server_is_full(
    postgresql_server_factory: Callable[..., PostgresServer],
) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    server = _full_server(postgresql_server_factory)
    hogs = [await asyncpg.connect(server.url) for _ in range(3)]  # three slots left for the pool
    try:
        table = f"t_{uuid4().hex[:12]}"
        url = with_options(server.url, table=table)  # max_size 10: more than the server allows
        model = entry_model(url, timeout=10)
        await asyncio.gather(*(model(value=n).save() for n in range(3)))

        started = time.monotonic()
        entries = [model(value=n) for n in range(10)]
        references = await asyncio.gather(*(entry.save() for entry in entries))
        elapsed = time.monotonic() - started
        assert await model.load_many(references) == entries
        print(f"\npostgresql full server: 10 concurrent saves on 3 free slots in {elapsed:.2f} s, 0 failed")

        # Now the pool's own connections stay busy (blocked on a lock) and the server has no slot
        # left: a call gives up just before its timeout, saying why and what to change.
        slow = entry_model(url, timeout=15, name="Slow")
        probe = entry_model(url, timeout=1.5, name="Probe")
        await slow(value=0).save()
        locker = hogs[0]
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        blocked = [asyncio.create_task(slow(value=n).save()) for n in range(3)]
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        for _ in range(500):
            if await locker.fetchval(waiting) == 3:
                break
            await asyncio.sleep(0.02)

        started = time.monotonic()
        with pytest.raises(StorageConnectionError) as caught:
            await probe(value=1).save()
        elapsed = time.monotonic() - started
        message = str(caught.value)
        print(f"postgresql full server, nothing free: failed after {elapsed:.2f} s: {message}")
        assert 1.0 < elapsed < 1.5
        assert f"127.0.0.1:{server.port}/postgres" in message
        assert "TooManyConnectionsError" in message
        assert "max_connections" in message
        assert "max_size" in message

        await transaction.rollback()
        await asyncio.gather(*blocked)  # the waiting saves complete once the lock is gone
    finally:
        for hog in hogs:
            await hog.close()


@pytest.mark.postgresql
async def test_postgresql_first_connection_to_a_full_server_waits_then_explains(
    postgresql_server_factory: Callable[..., PostgresServer],
) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    server = _full_server(postgresql_server_factory)
    hogs = [await asyncpg.connect(server.url) for _ in range(6)]
    model = entry_model(server.url, timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(StorageConnectionError) as caught:
            await model(value=1).save()
        assert 0.5 < time.monotonic() - started < 1.0
        assert "max_connections" in str(caught.value)

        # A slot that comes free while the call waits is taken.
        later = entry_model(server.url, timeout=10)
        saving = asyncio.create_task(later(value=2).save())
        await asyncio.sleep(0.3)
        await hogs.pop().close()
        reference = await saving
        assert (await later.load(reference)).value == 2
    finally:
        for hog in hogs:
            await hog.close()
