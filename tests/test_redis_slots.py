"""The bound on Redis commands in flight (`Slots`): order, hand-over, and cancellation."""

from __future__ import annotations

import asyncio
import contextlib

from pydantic_toast.backends.redis._slots import Slots


async def test_waiters_get_slots_in_arrival_order() -> None:
    slots = Slots(1)
    assert slots.take_now()
    order: list[int] = []

    async def wait(n: int) -> None:
        await slots.take()
        order.append(n)
        slots.give()

    tasks = [asyncio.create_task(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert not slots.take_now()  # waiters come first, even when a slot frees up meanwhile
    slots.give()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert slots.take_now()


async def test_a_cancelled_waiter_never_keeps_or_loses_a_slot() -> None:
    slots = Slots(1)
    assert slots.take_now()
    waiting = asyncio.create_task(slots.take())
    handed = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while still waiting: leaves the queue
    slots.give()  # handed to `handed`...
    handed.cancel()  # ...which is cancelled before it runs: the slot must go back
    for task in (waiting, handed):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert slots.take_now()
    assert not slots.take_now()
