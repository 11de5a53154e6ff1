"""Servers that misbehave in ways short of a crash: connections killed one by one under load, a
server at its connection limit, idle connections the server closed, a reply that comes after the
socket timeout, an evicting memory policy.

Every test runs on throwaway servers of its own, since each kills, fills or reconfigures one.
Run with `-s` to see the figures (docs/reliability.md records the last run).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

import pydantic_toast
from fixtures.postgresql import PostgresServer, with_options
from fixtures.redis import RedisCluster, RedisServer
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
    # Each round spares the connections opened since the previous one: a retry runs on a new
    # connection, and one retry cannot survive that connection being killed too (two failures
    # in a row are reported, as they should be).
    cutoff = await admin.fetchval("SELECT clock_timestamp()")
    try:
        for _ in range(KILL_ROUNDS):
            await asyncio.sleep(KILL_EVERY)
            killed += await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND backend_start < $2",
                application,
                cutoff,
            )
            cutoff = await admin.fetchval("SELECT clock_timestamp()")
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
        probe = entry_model(url, timeout=2.5, name="Probe")
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
        assert 1.9 < elapsed < 2.5
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
    model = entry_model(server.url, timeout=2.0)
    try:
        started = time.monotonic()
        with pytest.raises(StorageConnectionError) as caught:
            await model(value=1).save()
        assert 1.4 < time.monotonic() - started < 2.0
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


# ---------------------------------------------------------------------- Redis


def _admin(server: RedisServer) -> Any:
    redis = pytest.importorskip("redis.asyncio")
    # RESP2, like the backend: redis-py 8's RESP3 default would leave this client, too, holding
    # connections the server closed.
    return redis.Redis(host="127.0.0.1", port=server.port, protocol=2)


async def _wait_for_clients(admin: Any, count: int) -> None:
    """Until the server has `count` client connections besides `admin`'s."""
    for _ in range(400):
        if len(await admin.client_list()) - 1 == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server did not get to {count} other client connections")


IDLE_ROUNDS = 5


@pytest.mark.redis
async def test_redis_idle_connections_the_server_closed_are_replaced_even_without_retries(
    redis_servers: Callable[..., RedisServer],
) -> None:
    server = redis_servers()
    model = entry_model(f"{server.url}?retries=0&prefix=idle", timeout=5)
    admin = _admin(server)
    failures = 0
    try:
        entries = [model(value=n) for n in range(3)]
        references = await asyncio.gather(*(entry.save() for entry in entries))  # three pooled
        synced = model(value=-1).model_dump()  # and one on the sync bridge's own pool
        for _ in range(IDLE_ROUNDS):
            await admin.client_kill_filter(_type="normal", skipme=True)
            await _wait_for_clients(admin, 0)
            try:
                assert await model.load_many(references) == entries
                await asyncio.gather(*(entry.save() for entry in entries))
                assert model.model_validate(synced).value == -1
            except StorageConnectionError:
                failures += 1

        # The server's own idle timeout closes them the same way.
        await admin.config_set("timeout", 1)
        await _wait_for_clients(admin, 0)
        await admin.config_set("timeout", 0)
        assert await model.load_many(references) == entries
        assert model.model_validate(synced).value == -1
    finally:
        await admin.aclose()
    print(
        f"\nredis idle connections closed by the server, retries=0: {failures} of {IDLE_ROUNDS} rounds failed"
    )
    assert failures == 0


@pytest.mark.redis
async def test_redis_save_reported_failed_after_a_socket_timeout_may_have_been_applied(
    redis_servers: Callable[..., RedisServer],
) -> None:
    """What docs/backends/redis.md warns: the error says no reply came, not that nothing was written.

    A script keeps the (single-threaded) server busy past `socket_timeout`; the `SET` waits in the
    socket meanwhile, and the server runs it once the script ends, after the caller gave up.
    """
    server = redis_servers()
    model = entry_model(f"{server.url}?retries=0&socket_timeout=0.3&prefix=late", timeout=10)
    admin = _admin(server)
    busy = (
        "local start = redis.call('TIME') local now = start "
        "while (now[1] - start[1]) * 1000000 + (now[2] - start[2]) < 1000000 do now = redis.call('TIME') end"
    )
    try:
        await model(value=0).save()  # connected before the server gets busy
        entry = model(value=1)
        spinning = asyncio.create_task(admin.eval(busy, 0))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(StorageConnectionError):
            await entry.save()
        assert time.monotonic() - started < 0.9  # failed while the server was still busy
        await spinning
        assert await model.load(entry.external_reference) == entry  # and yet it was applied
    finally:
        await admin.aclose()


@pytest.mark.redis
@pytest.mark.slow
async def test_redis_cluster_rides_out_idle_connections_the_nodes_closed_with_retries(
    redis_clusters: Callable[..., RedisCluster], redis_logs: pytest.LogCaptureFixture
) -> None:
    """redis-py's cluster client hands out pooled connections unchecked, so there the retry budget
    is what replaces them: `retries` must stay >= 1 (the default is 3). See docs/backends/redis.md.

    The same cluster then checks the eviction warning: one master with an evicting policy is enough.
    """
    cluster = redis_clusters()
    model = entry_model(f"{cluster.url}&retries=1&prefix=idle", timeout=5)
    admins = [_admin(node) for node in cluster.nodes]
    try:
        entries = [model(value=n) for n in range(20)]
        references = await model.save_many(entries)
        for _ in range(3):
            for admin in admins:
                await admin.client_kill_filter(_type="normal", skipme=True)
            await asyncio.sleep(0.1)
            assert await model.load_many(references) == entries
            await asyncio.gather(*(model.load(reference) for reference in references[:6]))
        assert _warnings(redis_logs) == []

        await admins[1].config_set("maxmemory", "64mb")
        await admins[1].config_set("maxmemory-policy", "allkeys-lfu")
        await entry_model(f"{cluster.url}&prefix=evicting", timeout=5)(value=1).save()
        [warning] = _warnings(redis_logs)
        assert f"cluster node 127.0.0.1:{cluster.nodes[1].port}" in warning.getMessage()
        assert "maxmemory-policy allkeys-lfu" in warning.getMessage()
    finally:
        for admin in admins:
            await admin.aclose()


@pytest.fixture
def redis_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="pydantic_toast")
    return caplog


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("pydantic_toast") and r.levelno >= logging.WARNING]


@pytest.mark.redis
async def test_redis_warns_at_connect_when_the_server_evicts_records(
    redis_servers: Callable[..., RedisServer], redis_logs: pytest.LogCaptureFixture
) -> None:
    server = redis_servers(extra_args=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"))
    model = entry_model(f"{server.url}?prefix=lru", timeout=5)
    await model(value=1).save()
    await model(value=2).save()
    [warning] = _warnings(redis_logs)
    message = warning.getMessage()
    assert warning.levelno == logging.WARNING
    assert warning.name == "pydantic_toast.redis"
    assert f"127.0.0.1:{server.port}" in message
    assert "maxmemory-policy allkeys-lru" in message
    assert "noeviction" in message
    # Reporting is the application's business: the library installs no handler.
    assert logging.getLogger("pydantic_toast").handlers == []
    assert logging.getLogger("pydantic_toast.redis").handlers == []

    admin = _admin(server)
    try:
        # No memory limit: nothing is ever evicted, whatever the policy.
        await admin.config_set("maxmemory", 0)
        redis_logs.clear()
        await entry_model(f"{server.url}?prefix=unlimited", timeout=5)(value=1).save()
        assert _warnings(redis_logs) == []

        # volatile-*: only keys with a time to live are at risk, so only a model with ttl hears it,
        # once per backend.
        await admin.config_set("maxmemory", "64mb")
        await admin.config_set("maxmemory-policy", "volatile-lru")
        url = f"{server.url}?prefix=volatile"
        await entry_model(url, timeout=5)(value=1).save()
        assert _warnings(redis_logs) == []

        class Expiring(ExternalBaseModel):
            value: int
            model_config = ExternalConfigDict(storage=url, ttl=timedelta(minutes=5))

        await Expiring(value=1).save()
        await Expiring(value=2).save()
        [warning] = _warnings(redis_logs)
        assert "maxmemory-policy volatile-lru" in warning.getMessage()
        assert "ttl" in warning.getMessage()

        await admin.config_set("maxmemory-policy", "noeviction")
        redis_logs.clear()
        await Expiring(value=3).save()
        await entry_model(f"{server.url}?prefix=safe", timeout=5)(value=1).save()
        assert _warnings(redis_logs) == []
    finally:
        await admin.aclose()


@pytest.mark.redis
async def test_redis_eviction_check_is_skipped_quietly_when_config_is_denied(
    redis_servers: Callable[..., RedisServer], redis_logs: pytest.LogCaptureFixture
) -> None:
    server = redis_servers(extra_args=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"))
    admin = _admin(server)
    try:
        # Like a managed Redis: the application's user may not run CONFIG.
        await admin.acl_setuser(
            "app", enabled=True, passwords=["+app-pw"], keys=["*"], commands=["+@all", "-config"]
        )
    finally:
        await admin.aclose()
    model = entry_model(f"redis://app:app-pw@127.0.0.1:{server.port}/0?prefix=acl", timeout=5)
    entry = model(value=1)
    assert (await model.load(await entry.save())) == entry
    assert _warnings(redis_logs) == []
    [skipped] = [r for r in redis_logs.records if "eviction check skipped" in r.getMessage()]
    assert skipped.levelno == logging.DEBUG
    assert "app-pw" not in skipped.getMessage()
