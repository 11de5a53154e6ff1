"""The sync bridge: survives failing operations, refuses re-entry, never hangs the exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from typing import Any
from uuid import UUID

import pytest

from fixtures.backends import NothingToConnect
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalStorageError,
    register_backend,
)

pytestmark = pytest.mark.reliability


class FlakyBackend(NothingToConnect):
    """Raises an arbitrary (non-library) exception on every other save."""

    calls = 0
    records: dict[UUID, dict[str, Any]] = {}  # noqa: RUF012 - shared on purpose across instances

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        type(self).calls += 1
        if type(self).calls % 2:
            raise RuntimeError("disk on fire")
        self.records[id] = data

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        return self.records.get(id)


class ReentrantBackend(FlakyBackend):
    """A backend that (wrongly) makes a sync pydantic-toast call from inside the I/O thread."""

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        Flaky(text="inner").model_dump()


register_backend("flaky", FlakyBackend)
register_backend("reentrant", ReentrantBackend)


class Flaky(ExternalBaseModel):
    text: str
    model_config = ExternalConfigDict(storage="flaky://x")


class Reentrant(ExternalBaseModel):
    text: str
    model_config = ExternalConfigDict(storage="reentrant://x")


def test_the_bridge_survives_an_operation_that_raises() -> None:
    FlakyBackend.calls = 0
    with pytest.raises(
        ExternalStorageError, match="FlakyBackend backend for 'flaky://x' failed: RuntimeError"
    ) as caught:
        Flaky(text="a").model_dump()
    assert isinstance(caught.value.__cause__, RuntimeError)
    reference = Flaky(text="b").model_dump()
    assert Flaky.model_validate(reference).text == "b"


def test_a_sync_call_from_the_io_thread_is_refused_not_deadlocked() -> None:
    started = time.monotonic()
    with pytest.raises(ExternalStorageError, match="would deadlock"):
        Reentrant(text="outer").model_dump()
    assert time.monotonic() - started < 5


def test_interpreter_exit_with_pending_work_does_not_hang(tmp_path: Any) -> None:
    script = textwrap.dedent(
        """
        import asyncio, threading, time
        from typing import Any
        from uuid import UUID
        from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageBackend, register_backend

        class Slow(StorageBackend):
            def __init__(self, url: str) -> None: ...
            async def connect(self) -> None: ...
            async def disconnect(self) -> None:
                await asyncio.sleep(60)
            async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
                await asyncio.sleep(60)
            async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
                return None

        register_backend("slow", Slow)

        class Model(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage="slow://x", timeout=120)

        threading.Thread(target=lambda: Model(x=1).model_dump(), daemon=True).start()
        time.sleep(0.5)
        print("exiting with a save in flight", flush=True)
        """
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "exiting with a save in flight" in result.stdout
    assert elapsed < 30, f"exit took {elapsed:.1f} s"
