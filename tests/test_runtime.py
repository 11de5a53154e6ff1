"""Connections follow event loops: created lazily, reused, closed when the loop ends."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any
from uuid import UUID

import pytest

import pydantic_toast
from fixtures.backends import NothingToConnect
from models import note_model
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConnectionError,
    register_backend,
    runtime,
)
from pydantic_toast.deadlines import Deadlines
from pydantic_toast.runtime import execute
from pydantic_toast.url import StorageURL


def test_asyncio_run_without_aclose_closes_the_loops_connections(storage_url: str) -> None:
    note = note_model(storage_url)

    async def round_trip(text: str) -> str:
        reference = await note(text=text).save()
        loaded: str = (await note.load(reference)).text
        return loaded

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert asyncio.run(round_trip("first")) == "first"
        assert asyncio.run(round_trip("second")) == "second"
        gc.collect()
    assert not [loop for loop in runtime._slots if loop.is_closed()]


def test_a_hand_made_loop_closed_without_shutdown_is_forgotten_quietly(sqlite_url: str) -> None:
    note = note_model(sqlite_url)
    loop = asyncio.new_event_loop()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reference = loop.run_until_complete(note(text="manual").save())
        loop.close()
        del loop
        gc.collect()
        assert asyncio.run(note.load(reference)).text == "manual"
        gc.collect()


async def test_one_backend_per_url_and_loop_reused_across_calls(storage_url: str) -> None:
    note = note_model(storage_url)
    await note(text="a").save()
    loop_slots = runtime._slots[asyncio.get_running_loop()]
    backend = next(slot.backend for key, slot in loop_slots.items() if key == storage_url)
    for i in range(20):
        await note(text=str(i)).save()
    assert runtime._slots[asyncio.get_running_loop()][storage_url].backend is backend


async def test_aclose_then_reuse_reconnects(storage_url: str) -> None:
    note = note_model(storage_url)
    reference = await note(text="before").save()
    await pydantic_toast.aclose()
    assert (await note.load(reference)).text == "before"
    pydantic_toast.close()
    assert note.model_validate(reference.model_dump()).text == "before"


@pytest.mark.parametrize("call", ["dump", "validate"])
def test_sync_calls_report_timeouts_as_connection_errors(call: str) -> None:
    class Stuck(NothingToConnect):
        async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
            await asyncio.sleep(30)

        async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
            await asyncio.sleep(30)
            return None

    register_backend("stuck", Stuck, replace=True)

    class Slow(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage="stuck://x", timeout=0.2)

    reference = {"class_name": "Slow", "id": "00000000-0000-4000-8000-000000000000"}
    action = (lambda: Slow(x=1).model_dump()) if call == "dump" else (lambda: Slow.model_validate(reference))
    with pytest.raises(StorageConnectionError, match=r"did not answer within 0.2 s"):
        action()


async def test_deadlines_time_out_only_the_overdue_operation_and_spare_user_cancellation() -> None:
    url = StorageURL.parse("memory://deadlines")

    async def sleep_for(seconds: float) -> Any:
        async def operation(backend: Any) -> float:
            await asyncio.sleep(seconds)
            return seconds

        return operation

    slow = asyncio.create_task(execute(url, 0.1, await sleep_for(5)))
    fast = asyncio.create_task(execute(url, 5, await sleep_for(0.2)))
    user_cancelled = asyncio.create_task(execute(url, 5, await sleep_for(5)))
    await asyncio.sleep(0.05)
    user_cancelled.cancel()

    with pytest.raises(pydantic_toast.StorageConnectionError, match=r"within 0\.1 s"):
        await slow
    assert await fast == 0.2
    with pytest.raises(asyncio.CancelledError):
        await user_cancelled
    # Nothing is left scheduled or registered once everything finished.
    deadlines = runtime._deadlines[asyncio.get_running_loop()]
    assert isinstance(deadlines, Deadlines)
    assert deadlines._inflight == {}
    assert deadlines._expired == set()
