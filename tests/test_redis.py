"""The Redis backend on real servers: layout, expiry, auth, URL forms and failures.

The shared server (`redis_url`) is used with a unique key prefix per test; tests that stop,
pause, restart or lock a server start their own throwaway one (`redis_servers`). Cluster tests
are in test_redis_cluster.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pydantic_toast
from fixtures.redis import RedisServer, TLSFiles
from fixtures.servers import free_port
from models import every_type_model, every_type_values, note_model
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    MissingDependencyError,
    RecordNotFoundError,
    StorageConnectionError,
    StorageValidationError,
    StoredDataError,
)
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.backends.redis import RedisBackend

pytestmark = pytest.mark.redis


def with_options(url: str, **options: object) -> str:
    query = "&".join(f"{name}={value}" for name, value in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def unique_prefix() -> str:
    return f"t_{uuid4().hex[:12]}"


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def raw(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the shared server, to look at what the backend wrote."""
    client = redis.Redis.from_url(redis_url.split("?")[0])
    yield client
    # The shared server outlives the session: leave nothing behind.
    names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if names:
        client.delete(*names)
    client.close()


@pytest.fixture
def url(redis_url: str, prefix: str, raw: redis.Redis) -> str:
    return with_options(redis_url, prefix=prefix)


def record(class_name: str = "Note", data: bytes = b'{"text":"x"}', **changes: Any) -> StoredRecord:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": uuid4(),
        "class_name": class_name,
        "payload": data,
        "schema_version": 1,
        "created_at": now,
        "updated_at": now,
    }
    fields.update(changes)
    return StoredRecord(**fields)


def chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def assert_secret_hidden(exc: BaseException, secret: str) -> None:
    for link in chain(exc):
        assert secret not in str(link)
        assert secret not in repr(link)
        assert secret not in repr(getattr(link, "args", ()))
    assert secret not in str(getattr(exc, "url", ""))
    assert quote(secret, safe="") not in str(exc)


# --------------------------------------------------------------------------- round trips


async def test_every_field_type_round_trips_sync_and_async(url: str) -> None:
    model = every_type_model(url)
    original = model(**every_type_values())

    reference = original.model_dump()
    assert model.model_validate(reference) == original
    assert model.model_validate_json(original.model_dump_json()) == original

    saved = await original.save()
    assert saved.as_dict() == reference
    assert await model.load(saved) == original
    assert await original.delete() is True
    with pytest.raises(RecordNotFoundError):
        await model.load(saved)
    assert await original.delete() is False


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=st.text(), blob=st.binary(max_size=64), numbers=st.lists(st.integers(), max_size=5))
def test_any_string_and_bytes_round_trip(url: str, text: str, blob: bytes, numbers: list[int]) -> None:
    class Anything(ExternalBaseModel):
        text: str
        blob: bytes
        numbers: tuple[int, ...]
        model_config = ExternalConfigDict(storage=url)

    item = Anything(text=text, blob=blob, numbers=tuple(numbers))
    assert Anything.model_validate(item.model_dump()) == item


def test_key_layout_and_value_are_the_documented_envelope(url: str, prefix: str, raw: redis.Redis) -> None:
    note = note_model(url)
    reference = note(text="hello").model_dump()

    key = f"{prefix}:Note:{reference['id']}"
    assert raw.keys(f"{prefix}:*") == [key.encode()]
    value = raw.get(key)
    assert isinstance(value, bytes)
    assert value.startswith(b'{"data":{"text":"hello"},"schema_version":1,"created_at":"')
    envelope = json.loads(value)
    assert list(envelope) == ["data", "schema_version", "created_at", "updated_at"]
    assert envelope["created_at"].endswith("Z")
    assert envelope["created_at"] == envelope["updated_at"]
    assert raw.pttl(key) == -1  # no ttl configured: no expiry


def test_default_prefix_is_pydantic_toast(redis_url: str) -> None:
    name = f"DefaultPrefix_{uuid4().hex[:8]}"
    note = note_model(redis_url, storage_name=name)
    reference = note(text="x").model_dump()
    client = redis.Redis.from_url(redis_url.split("?")[0])
    try:
        key = f"pydantic_toast:{name}:{reference['id']}"
        assert client.exists(key) == 1
        client.delete(key)
    finally:
        client.close()


async def test_redump_updates_the_same_key_keeps_created_at_and_moves_updated_at(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    note = note_model(url)
    item = note(text="first")
    reference = item.model_dump()
    key = f"{prefix}:Note:{reference['id']}"
    before = json.loads(raw.get(key) or b"")
    await asyncio.sleep(0.01)

    item.text = "second"
    assert item.model_dump() == reference
    after = json.loads(raw.get(key) or b"")

    assert raw.keys(f"{prefix}:*") == [key.encode()]
    assert after["data"] == {"text": "second"}
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]

    # A loaded instance remembers created_at too, so its save keeps it.
    restored = await note.load(reference)
    restored.text = "third"
    await restored.save()
    assert json.loads(raw.get(key) or b"")["created_at"] == before["created_at"]


async def test_two_classes_in_one_store_are_kept_apart(url: str, prefix: str, raw: redis.Redis) -> None:
    note = note_model(url)

    class Memo(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=url)

    note_ref = note(text="note").model_dump()
    memo_ref = Memo(text="memo").model_dump()

    assert sorted(raw.keys(f"{prefix}:*")) == sorted(
        [f"{prefix}:Memo:{memo_ref['id']}".encode(), f"{prefix}:Note:{note_ref['id']}".encode()]
    )
    with pytest.raises(StorageValidationError):
        Memo.model_validate(note_ref)
    with pytest.raises(RecordNotFoundError):
        await Memo.load(note_ref["id"])  # a bare id is looked up under Memo's own class name
    assert note.model_validate(note_ref).text == "note"


async def test_ttl_sets_the_expiry_on_every_save_and_records_expire(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    note = note_model(url, ttl=timedelta(milliseconds=500))
    item = note(text="short-lived")
    reference = await item.save()
    key = f"{prefix}:Note:{reference.id}"
    assert 0 < raw.pttl(key) <= 500

    await asyncio.sleep(0.3)
    await item.save()  # a save starts the time to live again
    assert raw.pttl(key) > 300

    await asyncio.sleep(0.7)
    assert raw.exists(key) == 0
    with pytest.raises(RecordNotFoundError):
        await note.load(reference)


async def test_a_save_without_ttl_clears_an_earlier_expiry(url: str, prefix: str, raw: redis.Redis) -> None:
    backend = RedisBackend(url)
    await backend.connect()
    try:
        expiring = record(expires_at=datetime.now(UTC) + timedelta(seconds=60))
        await backend.save_records([expiring])
        key = f"{prefix}:Note:{expiring.id}"
        assert raw.pttl(key) > 50_000
        await backend.save_records([record(id=expiring.id)])
        assert raw.pttl(key) == -1
    finally:
        await backend.disconnect()


async def test_batches_are_one_round_trip_and_keep_order(url: str) -> None:
    backend = RedisBackend(url)
    await backend.connect()
    try:
        records = [record(data=b'{"text":"%d"}' % index) for index in range(50)]
        await backend.save_records(records)
        before = backend.stats.snapshot()["round_trips"]
        missing = (uuid4(), "Note")
        wanted = [records[3].key, missing, records[0].key, records[3].key]
        found = await backend.load_records(wanted)
        assert backend.stats.snapshot()["round_trips"] == before + 1
        assert [None if item is None else item.payload for item in found] == [
            b'{"text":"3"}',
            None,
            b'{"text":"0"}',
            b'{"text":"3"}',
        ]
        assert found[0] is not None
        assert found[0].created_at == records[3].created_at
    finally:
        await backend.disconnect()


async def test_a_batch_save_keeps_its_order_across_expiry_and_large_values(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    """Records without expiry go as MSETs, the others as SETs with PX: the batch's order decides
    which of two records for one key stays, and values beyond one MSET's size take several."""
    backend = RedisBackend(url)
    await backend.connect()
    try:
        in_a_minute = datetime.now(UTC) + timedelta(seconds=60)
        plain, later_expiring = record(data=b'{"text":"a1"}'), record(data=b'{"text":"a2"}')
        later_expiring = dataclasses.replace(later_expiring, id=plain.id, expires_at=in_a_minute)
        expiring = record(data=b'{"text":"b1"}', expires_at=in_a_minute)
        later_plain = dataclasses.replace(record(data=b'{"text":"b2"}'), id=expiring.id)
        big = [record(data=b'{"text":"%b"}' % (bytes([97 + index]) * 4_500_000)) for index in range(4)]
        await backend.save_records([plain, *big[:2], later_expiring, expiring, *big[2:], later_plain])
        assert [item and item.payload for item in await backend.load_records([plain.key, expiring.key])] == [
            b'{"text":"a2"}',
            b'{"text":"b2"}',
        ]
        assert raw.pttl(f"{prefix}:Note:{plain.id}") > 50_000
        assert raw.pttl(f"{prefix}:Note:{expiring.id}") == -1
        assert await backend.load_records([item.key for item in big]) == big
    finally:
        await backend.disconnect()


async def test_client_name_is_set_on_connections(url: str, raw: redis.Redis) -> None:
    name = f"toast-{uuid4().hex[:8]}"
    note = note_model(with_options(url, client_name=name))
    await note(text="named").save()
    assert name in {client["name"] for client in raw.client_list()}


async def test_many_concurrent_operations_share_a_bounded_pool(url: str) -> None:
    note = note_model(with_options(url, max_connections=2))
    items = [note(text=f"n{index}") for index in range(60)]
    references = await asyncio.gather(*(item.save() for item in items))
    loaded = await asyncio.gather(*(note.load(reference) for reference in references))
    assert [item.text for item in loaded] == [item.text for item in items]


# --------------------------------------------------------------------------- stored values


async def test_values_in_other_json_layouts_are_read(url: str, prefix: str, raw: redis.Redis) -> None:
    note = note_model(url)
    identifier = uuid4()
    foreign = {
        "updated_at": "2025-12-23T00:05:00+00:00",
        "schema_version": 1,
        "created_at": "2025-12-23T00:00:00Z",
        "data": {"text": "written by hand"},
    }
    raw.set(f"{prefix}:Note:{identifier}", json.dumps(foreign, indent=2))

    loaded = await note.load(identifier)
    assert loaded.text == "written by hand"

    backend = RedisBackend(url)
    await backend.connect()
    try:
        [stored] = await backend.load_records([(identifier, "Note")])
        assert stored is not None
        assert stored.created_at == datetime(2025, 12, 23, tzinfo=UTC)
    finally:
        await backend.disconnect()


async def test_data_with_its_own_schema_version_field_is_not_confused(url: str, raw: redis.Redis) -> None:
    class Tricky(ExternalBaseModel):
        schema_version: int
        created_at: str
        text: str
        model_config = ExternalConfigDict(storage=url, schema_version=7)

    item = Tricky(schema_version=99, created_at="not a date", text=',"schema_version":5,"created_at":"x"}')
    assert await Tricky.load(await item.save()) == item


async def test_a_value_that_is_not_an_envelope_is_a_clear_error(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    note = note_model(url)
    identifier = uuid4()
    raw.set(f"{prefix}:Note:{identifier}", b"\xffnot json, secret-value")
    with pytest.raises(StoredDataError, match="bytes that are not a JSON object") as refused:
        await note.load(identifier)
    assert "secret-value" not in f"{refused.value} {refused.value.errors!r} {refused.value!r}"
    assert not isinstance(refused.value, ValueError)  # stored data at fault: a server error
    # A NUL first announces a binary record: its header must be the documented one.
    for value in (b"\x00not json", b'\x00{"encoding":"json+zlib"}\nxyz', b"\x00"):
        raw.set(f"{prefix}:Note:{identifier}", value)
        with pytest.raises(StoredDataError, match="binary record whose header") as caught:
            await note.load(identifier)
        assert "xyz" not in str(caught.value)


# Stored values a batch load must read exactly as a load of each alone: what this backend writes
# (with and without revision, compressed), envelopes of other writers, and broken ones.
_ODD_VALUES = (
    b'{"data":{"a":1},"schema_version":2,"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}',
    b'{"data":{"a":{"schema_version":9}},"schema_version":3,"created_at":"2026-01-01T00:00:00.000001Z",'
    b'"updated_at":"2026-01-02T00:00:00.000001Z","revision":7}',
    b'{"data":{"a":1},"schema_version":1,"created_at":"2026-01-01T00:00:00+02:00","updated_at":"2026-01-01T00:00:00Z","x":{}}',
    b'{"data":{"a":1},"schema_version":1,"created_at":"}{[","updated_at":"2026-01-01T00:00:00Z"}',
    b'{"data":{"a":1},"schema_version":1,"created_at":"2026-13-45T00:00:00.000000Z","updated_at":"2026-01-01T00:00:00Z"}',
    b'{"data":{"a":1},"schema_version":-1,"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}',
    b'{"data":{"a":1},"schema_version":1.0,"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}',
    b'{"data":{"a":1},"schema_version":1,"created_at":1767225600,"updated_at":"2026-01-01T00:00:00Z"}',
    b'{"data":{"a":1},"schema_version":1,"updated_at":"2026-01-01T00:00:00Z","created_at":"2026-01-01T00:00:00Z"}',
    b'{"data":{"a":1},"schema_version":1,"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"},{',
    b'{"data":{"a":1},"schema_version":1,"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"',
    b'{"data":[1],"schema_version":1,"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}',
    b'\x00{"encoding":"json+zlib","schema_version":1,"created_at":"2026-01-01T00:00:00Z",'
    b'"updated_at":"2026-01-01T00:00:00Z"}\nxyz',
    b"not json",
)


async def test_a_batch_load_reads_every_value_as_a_load_of_it_alone(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    backend = RedisBackend(url)
    await backend.connect()
    try:
        written = [record(data=b'{"text":"%d"}' % index, revision=index or None) for index in range(5)]
        await backend.save_records(written)
        odd = [(uuid4(), "Note") for _ in _ODD_VALUES]
        for (id, class_name), value in zip(odd, _ODD_VALUES, strict=True):
            raw.set(f"{prefix}:{class_name}:{id}", value)
        keys = [item.key for item in written] + odd + [(uuid4(), "Note")]

        async def alone(key: tuple[UUID, str]) -> object:
            try:
                [found] = await backend.load_records([key])
            except StoredDataError as exc:
                return str(exc)
            return found

        expected = [await alone(key) for key in keys]
        assert expected[: len(written)] == written
        assert sum(isinstance(item, str) for item in expected) >= 4  # broken values stay errors
        for index, key in enumerate(keys):
            # Each value in a batch of all the others: the same record, or the same error.
            batch = [key] + [
                other for position, other in enumerate(keys) if not isinstance(expected[position], str)
            ]
            if isinstance(expected[index], str):
                with pytest.raises(StoredDataError) as caught:
                    await backend.load_records(batch)
                assert str(caught.value) == expected[index]
            else:
                loaded = await backend.load_records(batch)
                assert loaded[0] == expected[index]
        good = [key for key, item in zip(keys, expected, strict=True) if not isinstance(item, str)]
        assert await backend.load_records(good) == [item for item in expected if not isinstance(item, str)]
    finally:
        await backend.disconnect()


async def test_json_records_keep_the_envelope_and_others_are_a_header_and_raw_bytes(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    backend = RedisBackend(url)
    await backend.connect()
    try:
        moment = datetime(2025, 12, 23, tzinfo=UTC)
        plain = record(created_at=moment, updated_at=moment)
        packed = record(payload=b"\x00\n\xff", encoding="json+zlib", created_at=moment, updated_at=moment)
        await backend.save_records([plain, packed])
        assert raw.get(f"{prefix}:Note:{plain.id}") == (
            b'{"data":{"text":"x"},"schema_version":1,"created_at":"2025-12-23T00:00:00.000000Z",'
            b'"updated_at":"2025-12-23T00:00:00.000000Z"}'
        )
        assert raw.get(f"{prefix}:Note:{packed.id}") == (
            b'\x00{"encoding":"json+zlib","schema_version":1,"created_at":"2025-12-23T00:00:00.000000Z",'
            b'"updated_at":"2025-12-23T00:00:00.000000Z"}\n\x00\n\xff'
        )
        assert await backend.load_records([plain.key, packed.key]) == [plain, packed]
    finally:
        await backend.disconnect()


async def test_a_binary_record_keeps_its_revision_first_in_the_header(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    backend = RedisBackend(url)
    await backend.connect()
    try:
        moment = datetime(2025, 12, 23, tzinfo=UTC)
        packed = record(payload=b"\x00\n\xff", encoding="json+zlib", created_at=moment, updated_at=moment)
        checked = dataclasses.replace(packed, revision=12)
        await backend.save_records([checked])
        key = f"{prefix}:Note:{packed.id}"
        assert raw.get(key) == (
            b'\x00{"revision":12,"encoding":"json+zlib","schema_version":1,'
            b'"created_at":"2025-12-23T00:00:00.000000Z","updated_at":"2025-12-23T00:00:00.000000Z"}\n\x00\n\xff'
        )
        assert await backend.load_records([packed.key]) == [checked]
        later = dataclasses.replace(checked, updated_at=moment + timedelta(seconds=1), revision=13)
        assert await backend.save_records_checked([later]) == []
        assert await backend.save_records_checked([later]) == [], "a repeated write is no conflict"
        stale = dataclasses.replace(later, updated_at=moment + timedelta(seconds=2))
        [conflict] = await backend.save_records_checked([stale])
        assert (conflict.expected, conflict.found) == (12, 13)
        # A plain save without a revision leaves the header as before revisions.
        await backend.save_records([packed])
        assert raw.get(key) == (
            b'\x00{"encoding":"json+zlib","schema_version":1,"created_at":"2025-12-23T00:00:00.000000Z",'
            b'"updated_at":"2025-12-23T00:00:00.000000Z"}\n\x00\n\xff'
        )
        [conflict] = await backend.save_records_checked([later])
        assert (conflict.expected, conflict.found) == (12, 0)
    finally:
        await backend.disconnect()


async def test_values_above_max_value_size_are_refused_before_sending(
    url: str, prefix: str, raw: redis.Redis
) -> None:
    limited = with_options(url, max_value_size=300)
    note = note_model(limited)

    class Parent(ExternalBaseModel):
        notes: list[note]  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=limited)

    assert note.model_validate(note(text="small").model_dump()).text == "small"
    with pytest.raises(StorageValidationError) as caught:
        note(text="x" * 400).model_dump()
    message = str(caught.value)
    assert "max_value_size=300" in message
    assert "nothing in this batch was saved" in message
    assert caught.value.expected == 300
    assert isinstance(caught.value.actual, int)
    assert caught.value.actual > 400

    before = set(raw.keys(f"{prefix}:*"))
    with pytest.raises(StorageValidationError):
        await Parent(notes=[note(text="fits"), note(text="y" * 400)]).save()
    assert set(raw.keys(f"{prefix}:*")) == before


# --------------------------------------------------------------------------- listing


async def test_scan_records_pages_exactly_and_resumes_from_a_cursor(url: str) -> None:
    backend = RedisBackend(url)
    await backend.connect()
    try:
        notes = [record(data=b'{"text":"%d"}' % index) for index in range(25)]
        expiring = record(expires_at=datetime.now(UTC) + timedelta(minutes=5))
        await backend.save_records([*notes, record(class_name="Memo"), expiring])

        seen: list[UUID] = []
        sizes: list[int] = []
        cursor: str | None = None
        while True:
            # A fresh instance per page: the cursor is plain text that outlives the process.
            pager = RedisBackend(url)
            await pager.connect()
            try:
                page, cursor = await pager.scan_records(cursor=cursor, limit=10, class_name="Note")
            finally:
                await pager.disconnect()
            sizes.append(len(page))
            seen.extend(item.id for item in page)
            if cursor is None:
                break
        assert sizes == [10, 10, 6]
        assert sorted(seen) == sorted(item.id for item in [*notes, expiring])

        everything, cursor = await backend.scan_records(cursor=None, limit=100)
        assert cursor is None
        assert {item.class_name for item in everything} == {"Note", "Memo"}
        [found] = [item for item in everything if item.id == expiring.id]
        assert found.expires_at is not None
        assert abs((found.expires_at - expiring.expires_at).total_seconds()) < 5  # type: ignore[operator]

        located = await backend.find_record(notes[7].id)
        assert located is not None
        assert located.payload == b'{"text":"7"}'
        assert await backend.find_record(uuid4()) is None
        with pytest.raises(StorageValidationError):
            await backend.scan_records(cursor="garbage", limit=10)
    finally:
        await backend.disconnect()


# --------------------------------------------------------------------------- URL forms


def test_database_number_and_unix_socket(redis_servers: Any, tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server: RedisServer = redis_servers(
        extra_args=("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    )
    prefix = unique_prefix()
    tcp = note_model(f"redis://127.0.0.1:{server.port}/3?prefix={prefix}")
    unix = note_model(f"unix://{socket_path}?db=3&prefix={prefix}", storage_name="UnixNote")

    tcp_ref = tcp(text="tcp").model_dump()
    unix_ref = unix(text="unix").model_dump()

    client = redis.Redis(host="127.0.0.1", port=server.port, db=3)
    try:
        assert client.exists(f"{prefix}:Note:{tcp_ref['id']}", f"{prefix}:UnixNote:{unix_ref['id']}") == 2
    finally:
        client.close()
    assert unix.model_validate(unix_ref).text == "unix"
    assert tcp.model_validate(tcp_ref).text == "tcp"


@pytest.mark.parametrize(
    ("storage", "fragment"),
    [
        ("redis://localhost/0?colour=blue", "unknown redis option(s) ['colour']"),
        ("redis://localhost/0?prefix=a{b}", "braces"),
        ("redis://localhost/0?prefix=", "prefix=''"),
        ("redis://localhost/0?ssl_cert_reqs=none", "need a TLS URL"),
        ("redis://localhost/zero", "database number"),
        ("redis://localhost/1?db=2", "keep one"),
        ("redis://localhost/0?retries=-1", "retries"),
        ("redis://localhost/0?socket_timeout=0", "socket_timeout"),
        ("redis://localhost/0?max_value_size=big", "max_value_size"),
        ("redis:///0", "names no host"),
        ("rediss://localhost/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("rediss://localhost/0?ssl_cert_reqs=none&ssl_check_hostname=true", "ssl_check_hostname"),
        ("unix://localhost/tmp/redis.sock", "socket file, not a host"),
        ("unix:///?db=0", "names no socket"),
        ("redis+cluster://localhost:7000/1", "only database 0"),
        ("redis+cluster://localhost:7000?db=1", "unknown redis cluster option(s) ['db']"),
        ("redis+cluster://localhost:7000?node=nohost:99999", "node='nohost:99999'"),
        ("redis+cluster://localhost:7000?node=a:1/x", "host:port"),
        ("redis+cluster:///?node=a:1", "names no seed node"),
        (
            "rediss+cluster://localhost:7000?ssl_ca_path=/etc/ssl",
            "unknown redis cluster option(s) ['ssl_ca_path']",
        ),
    ],
)
def test_bad_urls_fail_at_class_definition(storage: str, fragment: str) -> None:
    with pytest.raises(StorageValidationError) as caught:
        note_model(storage)
    assert fragment in str(caught.value)
    assert "Note" in str(caught.value)


def test_url_errors_mask_the_password() -> None:
    with pytest.raises(StorageValidationError) as caught:
        note_model("redis://alice:hunter2@localhost/0?colour=blue")
    assert_secret_hidden(caught.value, "hunter2")


@pytest.mark.parametrize(
    "storage",
    [
        "redis://localhost",
        "redis://:pw@localhost:6380/15?socket_timeout=0.5&socket_connect_timeout=1&retries=0",
        "redis://alice:pw@[::1]:6379/0?max_connections=5&max_value_size=1024&client_name=api",
        "rediss://localhost:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
        "rediss://localhost/0?ssl_cert_reqs=none",
        "unix:///run/redis/redis.sock?db=2&prefix=app:cache",
        "redis+cluster://10.0.0.1:7000?node=10.0.0.2:7001&node=10.0.0.3:7002,[::1]:7003",
        "rediss+cluster://alice:pw@redis.example.com:7000?ssl_ca_certs=/ca.pem",
    ],
)
def test_documented_url_forms_are_accepted(storage: str) -> None:
    note_model(storage)


def test_missing_driver_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "redis" or name.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'pydantic-toast\[redis\]'"):
        note_model("redis://localhost/0")

    backend = RedisBackend("redis://localhost/0")
    with pytest.raises(MissingDependencyError, match=r"pip install 'pydantic-toast\[redis\]'"):
        asyncio.run(backend.connect())


async def test_a_closed_backend_says_so(url: str) -> None:
    # Idempotent connect/disconnect: the conformance suite (tests/test_conformance.py).
    backend = RedisBackend(url)
    await backend.connect()
    await backend.disconnect()
    with pytest.raises(StorageConnectionError, match="closed"):
        await backend.load_records([(uuid4(), "Note")])
    assert "prefix" in repr(backend)


async def test_tls_verifies_the_server_certificate(redis_servers: Any, redis_tls_files: TLSFiles) -> None:
    server: RedisServer = redis_servers(tls=redis_tls_files)
    prefix = unique_prefix()
    verified = note_model(with_options(server.url, prefix=prefix))
    reference = await verified(text="over tls").save()
    assert (await verified.load(reference)).text == "over tls"

    by_address = note_model(
        f"rediss://127.0.0.1:{server.port}/0?prefix={prefix}&ssl_ca_certs={redis_tls_files.ca}",
        storage_name="ByAddress",
    )
    assert by_address.model_validate(by_address(text="ip").model_dump()).text == "ip"

    # The system store does not know the test CA: the handshake must fail, quickly and clearly.
    unverified = note_model(
        f"rediss://localhost:{server.port}/0?prefix={prefix}&retries=0", storage_name="N2"
    )
    with pytest.raises(StorageConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await unverified(text="x").save()

    trusting = note_model(
        f"rediss://localhost:{server.port}/0?prefix={prefix}&ssl_cert_reqs=none", storage_name="N3"
    )
    assert (await trusting.load(await trusting(text="no verification").save())).text == "no verification"

    plain = note_model(f"redis://localhost:{server.port}/0?prefix={prefix}&retries=0&socket_timeout=1")
    with pytest.raises(StorageConnectionError):
        await plain(text="plaintext to a TLS port").save()


# --------------------------------------------------------------------------- failures


def test_refused_connection_is_reported_quickly_with_the_address() -> None:
    port = free_port()
    note = note_model(f"redis://127.0.0.1:{port}/0?retries=2")
    started = time.monotonic()
    with pytest.raises(StorageConnectionError) as caught:
        note(text="x").model_dump()
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert caught.value.url == f"redis://127.0.0.1:{port}/0?retries=2"


def test_an_unreachable_server_is_retried_once_as_many_times_as_retries_says(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The eviction check at connect used to skip a refused connection quietly, after the client's
    # retries, and the first command then retried all over again: two rounds for one failure.
    port = free_port()
    note = note_model(f"redis://127.0.0.1:{port}/0?retries=3")
    with caplog.at_level("WARNING", logger="pydantic_toast"), pytest.raises(StorageConnectionError) as caught:
        note(text="x").model_dump()
    retries = [record for record in caplog.records if "retrying" in record.getMessage()]
    assert len(retries) == 3
    assert "gave up after 3 retries" in str(caught.value)


async def test_password_and_acl_user(redis_servers: Any) -> None:
    secret = "s3cr:t/p@ss w0rd%"
    server: RedisServer = redis_servers(password=secret)
    prefix = unique_prefix()
    good = f"redis://:{quote(secret, safe='')}@127.0.0.1:{server.port}/0?prefix={prefix}"
    note = note_model(good)
    assert note.model_validate(note(text="authorised").model_dump()).text == "authorised"

    wrong_secret = "not-the-password-42"
    wrong = note_model(f"redis://:{wrong_secret}@127.0.0.1:{server.port}/0?prefix={prefix}")
    started = time.monotonic()
    with pytest.raises(StorageConnectionError) as caught:
        await wrong(text="x").save()
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"127.0.0.1:{server.port}" in message
    assert "refused the credentials" in message
    assert_secret_hidden(caught.value, wrong_secret)
    with pytest.raises(StorageConnectionError) as caught_sync:
        wrong(text="x").model_dump()
    assert_secret_hidden(caught_sync.value, wrong_secret)

    admin = redis.Redis(host="127.0.0.1", port=server.port, password=secret)
    try:
        admin.acl_setuser(
            "alice", enabled=True, passwords=["+alice-pw"], keys=[f"{prefix}:*"], commands=["+@all"]
        )
    finally:
        admin.close()
    alice = note_model(f"redis://alice:alice-pw@127.0.0.1:{server.port}/0?prefix={prefix}", storage_name="A")
    assert alice.model_validate(alice(text="acl").model_dump()).text == "acl"
    outside = note_model(f"redis://alice:alice-pw@127.0.0.1:{server.port}/0?prefix=other", storage_name="B")
    with pytest.raises(StorageConnectionError, match="lacks permission") as denied:
        outside(text="x").model_dump()
    assert_secret_hidden(denied.value, "alice-pw")


async def test_socket_timeout_on_a_hung_server_then_recovery(redis_servers: Any) -> None:
    server: RedisServer = redis_servers()
    note = note_model(
        f"redis://127.0.0.1:{server.port}/0?prefix={unique_prefix()}&socket_timeout=0.3&retries=1"
    )
    item = note(text="before")
    await item.save()

    server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StorageConnectionError, match=r"socket_timeout=0\.3") as caught:
            await item.save()
        elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 3
        assert f"127.0.0.1:{server.port}" in str(caught.value)
    finally:
        server.resume()

    item.text = "after"
    reference = await item.save()
    assert (await note.load(reference)).text == "after"


async def test_a_send_stalled_by_a_hung_server_times_out_then_recovers(redis_servers: Any) -> None:
    """A value bigger than the socket buffers cannot be written to a server that stopped
    reading: the send itself must give up after socket_timeout, as a timeout."""
    server: RedisServer = redis_servers()
    backend = RedisBackend(f"redis://127.0.0.1:{server.port}/0?socket_timeout=0.3&retries=0")
    await backend.connect()
    try:
        await backend.save_records([record()])
        server.pause()
        try:
            started = time.monotonic()
            # Where the transport takes the whole value into its buffer (Python 3.13 here), the
            # send returns and the wait for the reply is what times out: a timeout all the same.
            timed_out = r"Timeout (writing to socket|reading from).*socket_timeout=0\.3"
            with pytest.raises(StorageConnectionError, match=timed_out):
                await backend.save_records([record(data=b'{"text":"%b"}' % (b"x" * 64_000_000))])
            assert 0.3 <= time.monotonic() - started < 3
        finally:
            server.resume()
        kept = record(data=b'{"text":"after"}')
        await backend.save_records([kept])
        assert await backend.load_records([kept.key]) == [kept]
    finally:
        await backend.disconnect()


async def test_a_hung_server_times_out_every_command_in_flight_and_only_those(redis_servers: Any) -> None:
    """One timer serves all the connections of a backend: each command waiting on the hung
    server fails after its own socket_timeout, and a server that answers is not held up."""
    hung: RedisServer = redis_servers()
    fine: RedisServer = redis_servers()
    stalled = RedisBackend(f"redis://127.0.0.1:{hung.port}/0?socket_timeout=0.4&retries=0")
    answering = RedisBackend(f"redis://127.0.0.1:{fine.port}/0?socket_timeout=0.4&retries=0")
    await stalled.connect()
    await answering.connect()
    try:
        await stalled.save_records([record() for _ in range(3)])
        hung.pause()
        try:
            started = time.monotonic()

            async def late_save() -> float:
                await asyncio.sleep(0.2)
                with pytest.raises(StorageConnectionError, match=r"Timeout reading"):
                    await stalled.save_records([record()])
                return time.monotonic() - started

            waits = [asyncio.create_task(stalled.load_records([(uuid4(), "Note")])) for _ in range(3)]
            late = asyncio.create_task(late_save())
            for _ in range(20):  # the other server keeps answering meanwhile
                await answering.save_records([record()])
            for wait in waits:
                with pytest.raises(StorageConnectionError, match=r"socket_timeout=0\.4"):
                    await wait
            first = time.monotonic() - started
            assert 0.4 <= first < 2
            assert await late >= 0.6  # its own deadline, not the first commands'
        finally:
            hung.resume()
        assert await stalled.load_records([(uuid4(), "Note")]) == [None]
    finally:
        await stalled.disconnect()
        await answering.disconnect()


async def test_a_task_cancelled_while_waiting_for_a_connection_leaves_nothing_behind(
    redis_servers: Any,
) -> None:
    server: RedisServer = redis_servers()
    backend = RedisBackend(f"redis://127.0.0.1:{server.port}/0?max_connections=1&socket_timeout=1&retries=0")
    await backend.connect()
    try:
        await backend.save_records([record()])
        server.pause()
        try:
            holder = asyncio.create_task(backend.save_records([record()]))
            await asyncio.sleep(0.05)
            waiter = asyncio.create_task(backend.load_records([(uuid4(), "Note")]))
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            with pytest.raises(StorageConnectionError):
                await holder
        finally:
            server.resume()
        assert await backend.load_records([(uuid4(), "Note")]) == [None]
    finally:
        await backend.disconnect()


async def test_server_restart_mid_run_is_survived(redis_servers: Any) -> None:
    server: RedisServer = redis_servers()
    note = note_model(f"redis://127.0.0.1:{server.port}/0?prefix={unique_prefix()}")
    first = await note(text="first").save()
    synced = note(text="sync").model_dump()

    # The pooled connections of both loops (this one and the sync bridge) go stale here.
    server.restart()
    second = await note(text="second").save()
    assert (await note.load(second)).text == "second"
    again = note(text="sync again").model_dump()
    assert note.model_validate(again).text == "sync again"
    with pytest.raises(RecordNotFoundError):
        await note.load(first)  # the throwaway server keeps nothing across a restart
    with pytest.raises(RecordNotFoundError):
        note.model_validate(synced)

    server.stop()
    started = time.monotonic()
    with pytest.raises(StorageConnectionError):
        await note(text="down").save()
    with pytest.raises(StorageConnectionError):
        note(text="down").model_dump()
    assert time.monotonic() - started < 5

    server.start()
    third = await note(text="back").save()
    assert (await note.load(third)).text == "back"
    assert note.model_validate(note(text="sync back").model_dump()).text == "sync back"
    await pydantic_toast.aclose()
