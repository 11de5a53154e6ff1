"""A caller's cancel is never lost to the library's own deadline, and the deadline never leaks."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import pytest

import pydantic_toast
from fixtures.backends import NothingToConnect
from fixtures.redis import RedisServer
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConnectionError,
    register_backend,
)
from pydantic_toast.backends.base import StoredRecord

pytestmark = pytest.mark.reliability

TIMEOUT = 0.02


class SilentBackend(NothingToConnect):
    """A store that never answers."""

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        await asyncio.Event().wait()
        return None


class StubbornBackend(SilentBackend):
    """Swallows the cancel of its operation and answers anyway (badly behaved, but it happens)."""

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return


register_backend("silent", SilentBackend)
register_backend("stubborn", StubbornBackend)


class Silent(ExternalBaseModel):
    x: int
    model_config = ExternalConfigDict(storage="silent://x", timeout=TIMEOUT)


class Stubborn(ExternalBaseModel):
    x: int
    model_config = ExternalConfigDict(storage="stubborn://x", timeout=TIMEOUT)


async def _started(model: ExternalBaseModel) -> asyncio.Task[Any]:
    task = asyncio.create_task(model.save())
    for _ in range(3):  # a few turns of the loop: the save is waiting in the backend, deadline armed
        await asyncio.sleep(0)
    assert not task.done()
    return task


async def test_a_cancel_in_the_same_loop_iteration_as_the_deadline_wins() -> None:
    loop = asyncio.get_running_loop()
    for _ in range(10):
        task = await _started(Silent(x=1))
        # Due just after the library's own deadline; blocking the loop past both makes them
        # fire in one iteration, deadline first, before the task runs again.
        loop.call_at(loop.time() + TIMEOUT, task.cancel)
        time.sleep(TIMEOUT * 3)  # noqa: ASYNC251 - blocking the loop is the point
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()


def _cancel_and_record(task: asyncio.Task[Any], accepted: list[bool]) -> None:
    accepted.append(task.cancel())


async def _cancels_near_the_deadline(
    model: type[ExternalBaseModel], deadline: float, seed: int
) -> dict[str, int]:
    """40 saves, each cancelled within 2 ms of its deadline, either side: honoured whenever accepted."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    outcomes = {"cancelled": 0, "timed out first": 0}
    for _ in range(40):
        task = await _started(model(x=1))
        accepted: list[bool] = []
        loop.call_later(deadline + rng.uniform(-0.002, 0.002), _cancel_and_record, task, accepted)
        try:
            await task
        except asyncio.CancelledError:
            outcomes["cancelled"] += 1
            assert accepted == [True]
        except StorageConnectionError:
            outcomes["timed out first"] += 1
            # Only when the timeout had already ended the task before the cancel came. The cancel
            # is due within ~2 ms, but a busy machine may run it later: wait for it to come.
            for _ in range(1000):
                if accepted:
                    break
                await asyncio.sleep(0.001)
            assert accepted == [False]
    return outcomes


async def test_a_cancel_near_the_deadline_is_never_lost() -> None:
    outcomes = await _cancels_near_the_deadline(Silent, TIMEOUT, seed=1234)
    print(f"\n40 cancels near the deadline: {outcomes}")


async def test_the_deadline_alone_leaves_the_task_uncancelled() -> None:
    async def save_and_report() -> int:
        with pytest.raises(StorageConnectionError, match="did not answer within"):
            await Silent(x=1).save()
        current = asyncio.current_task()
        assert current is not None
        return current.cancelling()

    assert await asyncio.create_task(save_and_report()) == 0


async def test_a_deadline_whose_cancel_was_swallowed_is_withdrawn() -> None:
    async def save_and_report() -> int:
        await Stubborn(x=1).save()
        current = asyncio.current_task()
        assert current is not None
        return current.cancelling()

    # A leftover cancel request would break the caller's own asyncio.timeout() and TaskGroups.
    assert await asyncio.create_task(save_and_report()) == 0


async def test_asyncio_timeout_around_a_library_call_still_works() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(TIMEOUT / 2):
            await Silent(x=1).save()


@pytest.mark.redis
async def test_a_cancel_near_the_deadline_is_never_lost_on_a_paused_redis(
    redis_servers: Callable[..., RedisServer],
) -> None:
    """The same against a real server that stops answering (SIGSTOP): connected, then silent."""
    server = redis_servers()

    class Paused(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage=f"{server.url}?prefix=paused", timeout=TIMEOUT * 5)

    class Patient(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage=f"{server.url}?prefix=paused", timeout=10)

    await asyncio.gather(*(Patient(x=0).save() for _ in range(4)))  # connected while it answers
    server.pause()
    try:
        outcomes = await _cancels_near_the_deadline(Paused, TIMEOUT * 5, seed=4321)
    finally:
        server.resume()
        await pydantic_toast.aclose()
    print(f"\n40 cancels near the deadline, paused Redis: {outcomes}")
