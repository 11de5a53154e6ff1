"""Servers die mid-workload: operations fail fast and cleanly, the workload recovers by itself,
and every save that reported success is still there afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageConnectionError

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

TIMEOUT = 3.0
# A failing operation may take its timeout plus the backend's bounded retries.
FAIL_WITHIN = TIMEOUT + 3.0
WORKERS = 20


@dataclass
class Outcome:
    ledger: dict[UUID, int] = field(default_factory=dict)
    succeeded: int = 0
    failed: int = 0
    slowest_failure: float = 0.0
    succeeded_after_recovery: int = 0


async def workload(url: str, kill: Callable[[], None], revive: Callable[[], None]) -> Outcome:
    class Entry(ExternalBaseModel):
        value: int
        model_config = ExternalConfigDict(storage=url, timeout=TIMEOUT)

    outcome = Outcome()
    recovered_at = float("inf")
    stop_at = time.monotonic() + 9.0

    async def worker(number: int) -> None:
        counter = 0
        while time.monotonic() < stop_at:
            counter += 1
            entry = Entry(value=number * 1_000_000 + counter)
            started = time.monotonic()
            try:
                reference = await entry.save()
                loaded = await Entry.load(reference)
            except StorageConnectionError:
                outcome.failed += 1
                outcome.slowest_failure = max(outcome.slowest_failure, time.monotonic() - started)
                await asyncio.sleep(0.05)
                continue
            assert loaded.value == entry.value
            outcome.ledger[reference.id] = entry.value
            outcome.succeeded += 1
            if started > recovered_at:
                outcome.succeeded_after_recovery += 1
            await asyncio.sleep(0.005)

    async def inject_fault() -> None:
        nonlocal recovered_at
        await asyncio.sleep(2.0)
        await asyncio.to_thread(kill)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(revive)
        recovered_at = time.monotonic()

    await asyncio.gather(inject_fault(), *(worker(n) for n in range(WORKERS)))

    # Every acknowledged save is readable, checked with fresh connections.
    await pydantic_toast.aclose()
    ids = list(outcome.ledger)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        loaded = await Entry.load_many(chunk)
        assert [item.value for item in loaded] == [outcome.ledger[i] for i in chunk]
    return outcome


def check(outcome: Outcome, backend: str) -> None:
    print(
        f"\n{backend}: {outcome.succeeded} save+load pairs succeeded, {outcome.failed} failed cleanly "
        f"(slowest {outcome.slowest_failure:.2f} s), {outcome.succeeded_after_recovery} after recovery, "
        f"{len(outcome.ledger)} acknowledged records re-read, 0 lost"
    )
    assert outcome.failed > 0, "the fault was not noticed: the test did not test anything"
    assert outcome.slowest_failure < FAIL_WITHIN
    assert outcome.succeeded_after_recovery > 0, "the workload did not recover by itself"


async def test_postgresql_crash_and_restart_mid_workload(
    postgresql_server_factory: Callable[..., Any],
) -> None:
    server = postgresql_server_factory()
    # Throwaway clusters trade durability for speed; this test needs PostgreSQL's real guarantee
    # that an acknowledged commit survives a crash.
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write("fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n")
    server.restart()
    # 'immediate' is a crash: no checkpoint, recovery from the WAL on the next start.
    outcome = await workload(server.url, lambda: server.stop("immediate"), server.start)
    check(outcome, "postgresql")


async def test_redis_kill_and_restart_mid_workload(redis_servers: Callable[..., Any]) -> None:
    # Durability is the server's job: with an fsync'ed append-only file, an acknowledged SET
    # survives a kill -9. (The suite's shared server keeps nothing on disk.)
    server = redis_servers(extra_args=("--appendonly", "yes", "--appendfsync", "always"))

    def kill() -> None:
        process = server.process
        assert process is not None
        process.kill()
        process.wait(5)
        server.process = None

    outcome = await workload(server.url, kill, server.start)
    check(outcome, "redis")
