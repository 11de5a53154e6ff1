"""The Redis backend on a real 3-master Redis Cluster started from the local redis-server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.crc import key_slot

from fixtures.redis import RedisCluster, TLSFiles
from models import note_model
from pydantic_toast import StorageConnectionError
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.backends.redis import RedisClusterBackend
from pydantic_toast.url import StorageURL

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> str:
    return f"t_{uuid4().hex[:12]}"


@pytest.fixture
def cluster_url(redis_cluster_url: str, prefix: str, raw_cluster: SyncRedisCluster) -> str:
    return f"{redis_cluster_url}{'&' if '?' in redis_cluster_url else '?'}prefix={prefix}"


@pytest.fixture
def raw_cluster(redis_cluster_url: str, prefix: str) -> Iterator[SyncRedisCluster]:
    seed = StorageURL.parse(redis_cluster_url)
    client = SyncRedisCluster(host=seed.host or "127.0.0.1", port=seed.port or 6379)
    yield client
    names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for name in names:
        client.delete(name)
    client.close()


def records(count: int, class_name: str = "Note") -> list[StoredRecord]:
    now = datetime.now(UTC)
    return [
        StoredRecord(uuid4(), class_name, b'{"text":"%d"}' % index, 1, now, now) for index in range(count)
    ]


def test_key_layout_uses_no_hash_tag(cluster_url: str, prefix: str, raw_cluster: SyncRedisCluster) -> None:
    note = note_model(cluster_url)
    reference = note(text="clustered").model_dump()
    key = f"{prefix}:Note:{reference['id']}"
    value = raw_cluster.get(key)
    assert isinstance(value, bytes)
    assert value.startswith(b'{"data":{"text":"clustered"},"schema_version":1,"created_at":"')
    assert "{" not in key  # no hash tag: the whole key is hashed, ids spread records over all slots


async def test_batches_spread_over_every_node_and_load_per_slot(
    cluster_url: str, prefix: str, raw_cluster: SyncRedisCluster
) -> None:
    backend = RedisClusterBackend(cluster_url)
    await backend.connect()
    try:
        batch = records(300)
        expiring = StoredRecord(
            uuid4(), "Note", b'{"text":"ttl"}', 1, batch[0].created_at, batch[0].updated_at,
            expires_at=datetime.now(UTC) + timedelta(minutes=1),
        )  # fmt: skip
        await backend.save_records([*batch, expiring])

        untyped: Any = raw_cluster  # redis-py leaves get_node_from_key unannotated
        nodes = {untyped.get_node_from_key(f"{prefix}:Note:{item.id}").name for item in batch}
        assert len(nodes) == 3  # no hot slot: one class's records land on every master
        assert 0 < raw_cluster.pttl(f"{prefix}:Note:{expiring.id}") <= 60_000

        missing = (uuid4(), "Note")
        wanted = [*(item.key for item in reversed(batch)), missing, batch[5].key]
        before = backend.stats.snapshot()["round_trips"]
        found = await backend.load_records(wanted)
        assert backend.stats.snapshot()["round_trips"] == before + 1
        expected = [item.payload for item in reversed(batch)] + [None, batch[5].payload]
        assert [None if item is None else item.payload for item in found] == expected

        [single] = await backend.load_records([batch[1].key])
        assert single is not None
        assert single.payload == batch[1].payload
        assert await backend.delete(batch[1].id, "Note") is True
        assert await backend.delete(batch[1].id, "Note") is False
    finally:
        await backend.disconnect()


async def test_same_slot_keys_share_one_mget(cluster_url: str, prefix: str) -> None:
    # Ids chosen so several keys fall into one slot: the per-slot MGET must return them in order.
    backend = RedisClusterBackend(cluster_url)
    await backend.connect()
    try:
        target = key_slot(backend.key(UUID(int=0), "Note"))
        ids = [UUID(int=0)]
        candidate = 1
        while len(ids) < 3:
            if key_slot(backend.key(UUID(int=candidate), "Note")) == target:
                ids.append(UUID(int=candidate))
            candidate += 1
        now = datetime.now(UTC)
        batch = [StoredRecord(id, "Note", b'{"text":"%d"}' % i, 1, now, now) for i, id in enumerate(ids)]
        await backend.save_records(batch)
        found = await backend.load_records([(ids[2], "Note"), (ids[0], "Note"), (ids[1], "Note")])
        assert [item.payload if item else None for item in found] == [
            b'{"text":"2"}',
            b'{"text":"0"}',
            b'{"text":"1"}',
        ]
    finally:
        await backend.disconnect()


async def test_scan_records_walks_every_master(cluster_url: str) -> None:
    backend = RedisClusterBackend(cluster_url)
    await backend.connect()
    try:
        batch = records(40)
        await backend.save_records(batch)
        seen: list[UUID] = []
        sizes: list[int] = []
        cursor: str | None = None
        while True:
            page, cursor = await backend.scan_records(cursor=cursor, limit=15)
            sizes.append(len(page))
            seen.extend(item.id for item in page)
            if cursor is None:
                break
        assert sizes == [15, 15, 10]
        assert sorted(seen) == sorted(item.id for item in batch)
        assert await backend.find_record(batch[17].id) is not None
    finally:
        await backend.disconnect()


async def test_a_node_going_down_is_a_connection_error(redis_clusters: Any) -> None:
    cluster: RedisCluster = redis_clusters()
    url = f"{cluster.url}&prefix=down&socket_timeout=0.5&socket_connect_timeout=0.5&retries=1"
    note = note_model(url)
    saved = [await note(text=f"n{index}").save() for index in range(20)]
    assert (await note.load(saved[0])).text == "n0"

    backend = RedisClusterBackend(url)
    await backend.connect()
    try:
        cluster.nodes[1].stop()
        started = time.monotonic()
        with pytest.raises(StorageConnectionError) as caught:
            await backend.load_records([(reference.id, "Note") for reference in saved])
        assert time.monotonic() - started < 10
        assert "Redis load failed at cluster seeds" in str(caught.value)
        with pytest.raises(StorageConnectionError):
            await note.load_many(saved)
    finally:
        await backend.disconnect()


async def test_no_reachable_seed_fails_at_connect() -> None:
    from fixtures.servers import free_port

    port = free_port()
    backend = RedisClusterBackend(f"redis+cluster://127.0.0.1:{port}?socket_connect_timeout=0.5&retries=0")
    started = time.monotonic()
    with pytest.raises(StorageConnectionError, match=f"127.0.0.1:{port}"):
        await backend.connect()
    assert time.monotonic() - started < 5
    await backend.disconnect()


async def test_cluster_over_tls(redis_clusters: Any, redis_tls_files: TLSFiles) -> None:
    cluster: RedisCluster = redis_clusters(tls=redis_tls_files)
    assert cluster.url.startswith("rediss+cluster://")
    note = note_model(f"{cluster.url}&prefix=tls")
    references = await note.save_many([note(text=f"n{index}") for index in range(30)])
    loaded = await note.load_many(references)
    assert [item.text for item in loaded] == [f"n{index}" for index in range(30)]
