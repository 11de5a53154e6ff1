"""Concurrency: many tasks and threads at once, nothing lost, torn, deadlocked or leaked."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any
from uuid import UUID

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, RecordNotFoundError, runtime

pytestmark = pytest.mark.reliability

TASKS = 200
THREADS = 16
SECONDS = 3.0


def counter_model(storage: str) -> Any:
    class Counter(ExternalBaseModel):
        owner: str
        value: int
        # A torn record would show as a payload that does not match its value.
        payload: str
        model_config = ExternalConfigDict(storage=storage, timeout=60)

    return Counter


def payload_for(owner: str, value: int) -> str:
    return f"{owner}:{value}:" + "x" * (value % 50)


class Ledger:
    """What the workload believes is stored: id -> value, or None once deleted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: dict[UUID, int | None] = {}
        self.operations = 0

    def record(self, record_id: UUID, value: int | None) -> None:
        with self._lock:
            self.entries[record_id] = value
            self.operations += 1


async def async_worker(model: Any, name: str, ledger: Ledger, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    mine: list[Any] = []
    while time.monotonic() < deadline:
        action = rng.random()
        if action < 0.5 or not mine:
            value = rng.randrange(10_000)
            item = model(owner=name, value=value, payload=payload_for(name, value))
            reference = await item.save()
            mine.append(item)
            ledger.record(reference.id, value)
        elif action < 0.85:
            item = rng.choice(mine)
            loaded = await model.load(item.external_reference)
            assert loaded.payload == payload_for(loaded.owner, loaded.value)
            assert loaded == item
        else:
            item = mine.pop(rng.randrange(len(mine)))
            assert await item.delete() is True
            ledger.record(item.external_reference.id, None)


def thread_worker(
    model: Any, name: str, ledger: Ledger, deadline: float, errors: list[BaseException]
) -> None:
    rng = random.Random(name)
    mine: list[tuple[Any, dict[str, str]]] = []
    try:
        while time.monotonic() < deadline:
            if rng.random() < 0.5 or not mine:
                value = rng.randrange(10_000)
                item = model(owner=name, value=value, payload=payload_for(name, value))
                reference = item.model_dump()
                mine.append((item, reference))
                ledger.record(UUID(reference["id"]), value)
            else:
                item, reference = rng.choice(mine)
                assert model.model_validate(reference) == item
    except BaseException as exc:
        errors.append(exc)


async def test_mixed_workload_from_tasks_and_threads_loses_nothing(storage_url: str) -> None:
    model = counter_model(storage_url)
    ledger = Ledger()
    errors: list[BaseException] = []
    threads_before = threading.active_count()
    deadline = time.monotonic() + SECONDS

    threads = [
        threading.Thread(target=thread_worker, args=(model, f"thread-{n}", ledger, deadline, errors))
        for n in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    await asyncio.wait_for(
        asyncio.gather(*(async_worker(model, f"task-{n}", ledger, deadline, n) for n in range(TASKS))),
        timeout=SECONDS + 60,
    )
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a sync worker is stuck"
    assert errors == []

    live = [record_id for record_id, value in ledger.entries.items() if value is not None]
    deleted = [record_id for record_id, value in ledger.entries.items() if value is None]
    loaded = await model.load_many(live)
    assert [item.value for item in loaded] == [ledger.entries[record_id] for record_id in live]
    assert all(item.payload == payload_for(item.owner, item.value) for item in loaded)
    for record_id in deleted[:50]:
        with pytest.raises(RecordNotFoundError):
            await model.load(record_id)
    backend = storage_url.split(":")[0]
    print(f"\n{backend}: {ledger.operations} operations, {len(live)} live, {len(deleted)} deleted checked")
    assert ledger.operations > TASKS

    await pydantic_toast.aclose()
    assert not any(runtime._slots.values()), "backends still open after aclose()"
    # The library keeps one I/O thread at most (plus one worker per open SQLite connection, closed now).
    assert threading.active_count() <= threads_before + 1


def test_connections_opening_a_new_sqlite_file_together_all_succeed(tmp_path: object) -> None:
    # Two connections preparing a fresh file each hold a shared lock and want the exclusive one;
    # SQLite answers one "database is locked" at once, busy_timeout notwithstanding. Before the
    # fix a few starts in a hundred failed this way.
    from pydantic_toast.backends.sqlite import SQLiteBackend

    def open_and_close(url: str, start: threading.Barrier, failures: list[BaseException]) -> None:
        async def main() -> None:
            backend = SQLiteBackend(url)
            start.wait()
            await backend.connect()
            await backend.disconnect()

        try:
            asyncio.run(main())
        except BaseException as exc:
            failures.append(exc)

    failures: list[BaseException] = []
    for attempt in range(300):
        url = f"sqlite:///{tmp_path}/fresh-{attempt}.db?busy_timeout=2"
        start = threading.Barrier(4)
        threads = [threading.Thread(target=open_and_close, args=(url, start, failures)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
