"""The sync API's direct path: a single-record Redis save in the calling thread, with redis-py's
sync client (`_direct.py`, `backends/redis/direct.py`), against real servers.

Each behaviour is checked against the I/O thread's path (the async backend), and each fallback is
checked to be taken: `runtime.run_sync` is replaced by a recorder that still runs the work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis

import pydantic_toast
from fixtures.redis import RedisServer, TLSFiles
from fixtures.servers import free_port
from models import note_model
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalReference,
    RecordNotFoundError,
    StorageConnectionError,
    StorageValidationError,
    _direct,
    observability,
    runtime,
)
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.backends.redis import RedisBackend
from pydantic_toast.backends.redis.direct import DirectRedis
from pydantic_toast.url import StorageURL

pytestmark = pytest.mark.redis


def unique_prefix() -> str:
    return f"d_{uuid4().hex[:12]}"


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the coroutines sync calls handed to the I/O thread."""
    seen: list[str] = []
    run_sync = runtime.run_sync

    def recording(coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
        seen.append(getattr(coroutine, "__qualname__", "?"))
        return run_sync(coroutine, timeout)

    monkeypatch.setattr(runtime, "run_sync", recording)
    return seen


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url.split("?")[0])
    yield client
    client.close()


def _url(redis_url: str, **options: object) -> str:
    query = "&".join(f"{name}={value}" for name, value in {"prefix": unique_prefix(), **options}.items())
    return f"{redis_url.split('?')[0]}?{query}"


def _write_and_read_back(note: Any, item: Any, text: str) -> None:
    item.text = text
    assert note.model_validate(item.model_dump()).text == text


def _record(**changes: Any) -> StoredRecord:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": uuid4(),
        "class_name": "Note",
        "payload": b'{"text":"x"}',
        "schema_version": 3,
        "created_at": now - timedelta(days=1),
        "updated_at": now,
    }
    fields.update(changes)
    return StoredRecord(**fields)


# ---------------------------------------------------------------------------- same bytes, same results


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"expires_at": timedelta(hours=1)},  # from now, when the test runs
        {"encoding": "zstd", "payload": b"\x28\xb5\x2f\xfd binary"},
        {"revision": 7},
    ],
    ids=["json", "ttl", "binary", "revision"],
)
async def test_the_sync_client_stores_the_bytes_the_async_backend_stores(
    redis_url: str, raw: redis.Redis, changes: dict[str, Any]
) -> None:
    if "expires_at" in changes:
        changes = {"expires_at": datetime.now(UTC) + changes["expires_at"]}
    url = _url(redis_url)
    direct = DirectRedis(StorageURL.parse(url))
    backend = RedisBackend(url)
    await backend.connect()
    try:
        first = _record(**changes)
        second = dataclasses.replace(first, id=uuid4())
        await backend.save_records([first])
        direct.save(second, 5.0)
        stored_async = raw.get(backend.key(first.id, first.class_name))
        stored_sync = raw.get(backend.key(second.id, second.class_name))
        assert stored_async is not None
        assert stored_async == stored_sync
        if "expires_at" in changes:
            assert 3_500_000 < raw.pttl(backend.key(second.id, second.class_name)) <= 3_600_000
        else:
            assert raw.pttl(backend.key(second.id, second.class_name)) == -1
        [loaded] = await backend.load_records([second.key])
        assert loaded == direct.load(second.id, second.class_name, 5.0)
        assert loaded is not None
        assert loaded.payload == second.payload
        assert direct.load(uuid4(), "Note", 5.0) is None
    finally:
        await backend.disconnect()
        direct.close()


async def test_a_dump_inside_a_running_loop_writes_in_this_thread(redis_url: str, hops: list[str]) -> None:
    note = note_model(_url(redis_url))
    item = note(text="first")
    reference = item.model_dump()
    assert hops == []  # no hop to the I/O thread
    assert (await note.load(ExternalReference.model_validate(reference))).text == "first"
    item.text = "second"
    assert item.model_dump() == reference
    assert pydantic_toast.dump(item) == reference
    item.text = "third"
    assert item.save_external_sync() == reference
    assert item.save_external_sync() == reference  # written even unchanged: an explicit save
    assert hops == []
    assert (await note.load(ExternalReference.model_validate(reference))).text == item.text
    # An unchanged model writes nothing, by either path.
    masked = note.__toast_settings__.url.masked
    before = pydantic_toast.stats()[masked]["records_written"]
    item.model_dump()
    assert pydantic_toast.stats()[masked]["records_written"] == before


def test_plain_sync_code_round_trips_through_the_direct_path(redis_url: str, hops: list[str]) -> None:
    note = note_model(_url(redis_url), ttl=timedelta(minutes=5))
    item = note(text="plain")
    reference = item.model_dump()
    assert hops == []
    assert note.model_validate(reference).text == "plain"
    assert hops == []


def test_a_sync_load_fails_as_the_io_threads_load_fails(
    redis_url: str, hops: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    note = note_model(_url(redis_url))
    missing = {"class_name": "Note", "id": str(uuid4())}
    with pytest.raises(RecordNotFoundError) as direct:
        note.model_validate(missing)
    assert hops == []
    monkeypatch.setattr(_direct, "redis_client", lambda url, in_io_thread: None)
    with pytest.raises(RecordNotFoundError) as hopped:
        note.model_validate(missing)
    assert hops == ["_fetch_one"]
    assert str(direct.value) == str(hopped.value)
    assert type(direct.value.__cause__) is type(hopped.value.__cause__)


def test_a_sync_load_of_a_class_holding_references_hops(redis_url: str, hops: list[str]) -> None:
    url = _url(redis_url)

    class DirectLeaf(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=url)
        text: str

    class DirectHolder(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=url)
        leaf: DirectLeaf

    reference = DirectHolder(leaf=DirectLeaf(text="inner")).model_dump()
    hops.clear()  # two records: the save took the I/O thread
    assert DirectHolder.model_validate(reference).leaf.text == "inner"
    assert hops[:1] == ["_fetch_one"]


def test_threads_share_one_pool_bounded_by_max_connections(redis_url: str, raw: redis.Redis) -> None:
    name = f"direct-{uuid4().hex[:8]}"
    note = note_model(_url(redis_url, max_connections=2, client_name=name))
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for number in range(30):
                note(text=str(number)).model_dump()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    clients = [entry for entry in raw.client_list() if entry.get("name") == name]
    assert 1 <= len(clients) <= 2


def test_tls_and_unix_sockets_take_the_direct_path(
    redis_servers: Callable[..., RedisServer], redis_tls_files: TLSFiles, tmp_path: Path, hops: list[str]
) -> None:
    server = redis_servers(tls=redis_tls_files)
    verified = note_model(f"rediss://127.0.0.1:{server.port}/0?prefix=tls&ssl_ca_certs={redis_tls_files.ca}")
    assert verified.model_validate(verified(text="over tls").model_dump()).text == "over tls"
    unverified = note_model(f"rediss://localhost:{server.port}/0?prefix=tls&retries=0", storage_name="N2")
    with pytest.raises(StorageConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        unverified(text="x").model_dump()

    socket_path = tmp_path / "redis.sock"
    local = redis_servers(extra_args=("--unixsocket", str(socket_path), "--unixsocketperm", "700"))
    assert local.port
    unix = note_model(f"unix://{socket_path}?db=2&prefix=unix", storage_name="UnixNote")
    assert unix.model_validate(unix(text="unix").model_dump()).text == "unix"
    assert hops == []  # saves and loads alike


# ---------------------------------------------------------------------------- counters and listeners


def test_the_counters_count_a_direct_save_as_the_async_path_does(redis_url: str) -> None:
    url = _url(redis_url)
    note = note_model(url)
    masked = StorageURL.parse(url).masked
    note(text="warm").model_dump()
    before = pydantic_toast.stats()[masked]
    note(text="counted").model_dump()
    after = pydantic_toast.stats()[masked]
    payload = len(b'{"text":"counted"}')
    assert {name: after[name] - before[name] for name in after} == {
        "round_trips": 1,
        "records_written": 1,
        "records_read": 0,
        "bytes_written": payload,
        "raw_bytes_written": payload,
    }


def test_a_log_listener_keeps_sync_calls_on_the_observed_path(
    redis_url: str, hops: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    note = note_model(_url(redis_url))
    with caplog.at_level(logging.DEBUG, logger="pydantic_toast"):
        note(text="observed").model_dump()
    assert hops == ["WriteSet.flush"]
    assert any("redis save records=1" in record.getMessage() for record in caplog.records)
    note(text="quiet").model_dump()
    assert hops == ["WriteSet.flush"]


def test_a_slow_direct_save_warns_like_any_other(
    redis_url: str, hops: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    note = note_model(_url(redis_url))
    note(text="connected").model_dump()
    observability.configure(slow_threshold=0.0)
    try:
        with caplog.at_level(logging.WARNING, logger="pydantic_toast"):
            note(text="slow").model_dump()
    finally:
        observability.configure()
    assert hops == []
    assert any("slow storage operation" in record.getMessage() for record in caplog.records)


# ---------------------------------------------------------------------------- what keeps the I/O thread


class _Leaf(ExternalBaseModel):
    text: str


def test_batches_checked_writes_and_cluster_keep_the_io_thread(
    redis_url: str, redis_cluster_url: str, hops: list[str]
) -> None:
    url = _url(redis_url)

    class Child(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=url)

    class Parent(ExternalBaseModel):
        child: Child
        model_config = ExternalConfigDict(storage=url)

    parent = Parent(child=Child(text="a"))
    reference = parent.model_dump()
    assert hops == ["WriteSet.flush"]  # two records
    parent.child.text = "b"
    parent.model_dump()
    assert hops == ["WriteSet.flush"]  # only the child changed: one record, written directly
    assert Parent.model_validate(reference).child.text == "b"
    hops.clear()

    checked = note_model(url, optimistic_concurrency=True)
    checked(text="x").model_dump()
    assert hops == ["WriteSet.flush"]
    hops.clear()

    clustered = note_model(f"{redis_cluster_url}&prefix={unique_prefix()}")
    item = clustered(text="x")
    assert clustered.model_validate(item.model_dump()).text == "x"
    assert hops == ["WriteSet.flush", "_fetch_one"]


def test_a_backend_registered_over_the_redis_scheme_keeps_its_path(hops: list[str]) -> None:
    code = """
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, register_backend, _direct
from pydantic_toast.backends.memory import MemoryBackend
from pydantic_toast.url import StorageURL

register_backend("redis", MemoryBackend, replace=True)

class Model(ExternalBaseModel):
    x: int
    model_config = ExternalConfigDict(storage="redis://whatever")

url = StorageURL.parse("redis://whatever")
print(Model.model_validate(Model(x=1).model_dump()).x, _direct.redis_client(url, False))
"""
    assert _run(code).split() == ["1", "None"]


# ---------------------------------------------------------------------------- failures


def _messages(url: str, seconds: float = 5) -> tuple[str, str, float]:
    """The errors of a save to `url`: through the async backend, then the direct path."""
    note = note_model(url, timeout=seconds)

    async def saved() -> None:
        try:
            await note(text="x").save()
        finally:
            await pydantic_toast.aclose()

    with pytest.raises(StorageConnectionError) as through_async:
        asyncio.run(saved())
    started = time.monotonic()
    with pytest.raises(StorageConnectionError) as direct:
        note(text="x").model_dump()
    return str(through_async.value), str(direct.value), time.monotonic() - started


def test_a_down_server_fails_with_the_async_paths_message(hops: list[str]) -> None:
    port = free_port()
    through_async, direct, elapsed = _messages(f"redis://127.0.0.1:{port}/0?prefix=down&retries=2")
    # The same message but for redis-py's own words for the refusal, which differ between its
    # sync ("Connection refused.") and asyncio ("Connect call failed (...).") clients.
    assert direct.split(": ")[0] == through_async.split(": ")[0]
    assert direct.split("; ")[-1] == through_async.split("; ")[-1]
    assert "Error 111 connecting to" in direct
    assert f"Redis connect failed at 127.0.0.1:{port}" in direct
    assert "gave up after 2 retries" in direct
    assert elapsed < 3
    assert hops == []


def test_a_wrong_password_fails_at_once_with_the_async_paths_message(
    redis_servers: Callable[..., RedisServer], hops: list[str]
) -> None:
    secret, wrong = "right-" + uuid4().hex, "wrong-" + uuid4().hex
    server = redis_servers(password=secret)
    through_async, direct, elapsed = _messages(f"redis://:{wrong}@127.0.0.1:{server.port}/0?prefix=auth")
    assert direct == through_async
    assert "refused the credentials" in direct
    assert wrong not in direct
    assert secret not in direct
    assert elapsed < 1  # not retried
    right = note_model(f"redis://:{secret}@127.0.0.1:{server.port}/0?prefix=auth")
    item = right(text="ok")
    assert right.model_validate(item.model_dump()).text == "ok"
    client = _direct.redis_client(right.__toast_settings__.url, False)
    assert secret not in repr(client)


def test_a_value_above_max_value_size_is_refused_before_sending(redis_url: str, raw: redis.Redis) -> None:
    prefix = unique_prefix()
    note = note_model(f"{redis_url.split('?')[0]}?prefix={prefix}&max_value_size=50")
    item = note(text="x" * 100)
    with pytest.raises(StorageValidationError, match="max_value_size=50"):
        item.model_dump()
    assert raw.keys(f"{prefix}:*") == []


@pytest.mark.parametrize(
    ("options", "timeout", "error", "seconds"),
    [
        # The model's timeout, below socket_timeout, ends the call with runtime.execute's error.
        ("socket_timeout=5", 0.5, r"did not answer within 0\.5 s", (0.5, 1.5)),
        # socket_timeout ends each of the two attempts, with the async backend's message.
        ("socket_timeout=0.3&retries=1", 10, r"Redis save failed.*socket_timeout=0\.3", (0.6, 3)),
    ],
    ids=["model timeout", "socket timeout"],
)
def test_a_hung_server_times_out_then_recovers(
    redis_servers: Callable[..., RedisServer],
    hops: list[str],
    options: str,
    timeout: float,
    error: str,
    seconds: tuple[float, float],
) -> None:
    server = redis_servers()
    note = note_model(f"{server.url}?prefix=hung&{options}", timeout=timeout)
    item = note(text="before")
    item.model_dump()
    server.pause()
    try:
        item.text = "during"
        started = time.monotonic()
        with pytest.raises(StorageConnectionError, match=error):
            item.model_dump()
        assert seconds[0] <= time.monotonic() - started < seconds[1]
    finally:
        server.resume()
    _write_and_read_back(note, item, "after")
    assert hops == []


def test_the_first_connect_to_a_hung_server_is_bounded_too(redis_servers: Callable[..., RedisServer]) -> None:
    server = redis_servers()
    note = note_model(f"{server.url}?prefix=hungfirst", timeout=0.4)
    server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StorageConnectionError):
            note(text="x").model_dump()
        assert time.monotonic() - started < 1.5
    finally:
        server.resume()
    assert note.model_validate(note(text="y").model_dump()).text == "y"


def test_connections_the_server_closed_are_replaced_even_without_retries(
    redis_servers: Callable[..., RedisServer],
) -> None:
    """As on the async path: the pool checks a pooled connection before handing it out, so an
    idle one the server closed (CLIENT KILL, its idle timeout, a restart) is replaced, with
    retries=0 too."""
    server = redis_servers()
    note = note_model(f"{server.url}?retries=0&prefix=idle", timeout=5)
    item = note(text="0")
    item.model_dump()
    admin = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        for round_number in range(1, 4):
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
            item.text = str(round_number)
            item.model_dump()
    finally:
        admin.close()
    server.restart()
    _write_and_read_back(note, item, "after a restart")


def test_ctrl_c_during_a_call_leaves_the_pool_usable(redis_servers: Callable[..., RedisServer]) -> None:
    server = redis_servers()
    note = note_model(f"{server.url}?prefix=interrupted&max_connections=1", timeout=10)
    item = note(text="before")
    item.model_dump()
    server.pause()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()
        item.text = "interrupted"
        with pytest.raises(KeyboardInterrupt):
            item.model_dump()
    finally:
        timer.cancel()
        server.resume()
    # The one slot and the connection came back: the next call is served, not left waiting.
    _write_and_read_back(note, item, "after")


def test_the_eviction_check_of_connect_warns_on_the_direct_path_too(
    redis_servers: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_servers(extra_args=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"))
    note = note_model(f"{server.url}?prefix=lru")
    with caplog.at_level(logging.WARNING, logger="pydantic_toast"):
        note(text="a").model_dump()
        note(text="b").model_dump()
    [warning] = [r for r in caplog.records if r.name == "pydantic_toast.redis"]
    assert "maxmemory-policy allkeys-lru" in warning.getMessage()


# ---------------------------------------------------------------------------- close and fork


def _named_connections(raw: redis.Redis, name: str) -> int:
    return sum(entry.get("name") == name for entry in raw.client_list())


async def test_close_and_aclose_disconnect_the_sync_pool(redis_url: str, raw: redis.Redis) -> None:
    name = f"closing-{uuid4().hex[:8]}"
    note = note_model(_url(redis_url, client_name=name))
    note(text="a").model_dump()
    assert _named_connections(raw, name) == 1
    await pydantic_toast.aclose()
    assert _named_connections(raw, name) == 0
    note(text="b").model_dump()
    assert _named_connections(raw, name) == 1
    await asyncio.to_thread(pydantic_toast.close)
    assert _named_connections(raw, name) == 0


def _run(code: str) -> str:
    source = str(Path(pydantic_toast.__file__).parents[1])  # this tree, not the installed one
    environment = {**os.environ, "PYTHONPATH": source + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=environment
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_forked_child_never_uses_its_parents_connections(redis_url: str) -> None:
    code = f"""
import os, redis
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, _direct

class Note(ExternalBaseModel):
    text: str
    model_config = ExternalConfigDict(storage="{_url(redis_url, client_name="forked")}")

parent = Note(text="parent")
parent.model_dump()
[client] = [c for c in _direct._clients.values() if c is not None]
pid = os.fork()
if pid == 0:
    ok = not _direct._clients
    child = Note(text="child")
    ok = ok and Note.model_validate(child.model_dump()).text == "child"
    [mine] = [c for c in _direct._clients.values() if c is not None]
    os._exit(0 if ok and mine is not client else 1)
_, status = os.waitpid(pid, 0)
parent.text = "parent again"
assert Note.model_validate(parent.model_dump()).text == "parent again"
print(os.waitstatus_to_exitcode(status))
"""
    assert _run(code).strip() == "0"


# ---------------------------------------------------------------------------- single loads (the hook)


async def test_fetch_record_gives_what_the_io_threads_fetch_gives(redis_url: str) -> None:
    """`_direct.fetch_record`, which `_loading`'s sync loads call, against the I/O thread's fetch."""
    from pydantic_toast._loading import fetch_record as fetch_through_the_backend

    note = note_model(_url(redis_url))
    settings = note.__toast_settings__
    reference = ExternalReference.model_validate(note(text="loaded").model_dump())
    direct = _direct.fetch_record(settings, reference, False)
    assert direct == await fetch_through_the_backend(settings, reference)
    missing = ExternalReference.trusted(settings.storage_name, uuid4())
    with pytest.raises(RecordNotFoundError) as through_async:
        await fetch_through_the_backend(settings, missing)
    with pytest.raises(RecordNotFoundError) as directly:
        _direct.fetch_record(settings, missing, False)
    assert str(directly.value) == str(through_async.value)
    assert _direct.fetch_record(settings, reference, True) is None  # from the I/O thread: refused
