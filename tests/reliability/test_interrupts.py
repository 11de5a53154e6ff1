"""Ctrl-C, SystemExit, sync timeouts and interpreter exit: nothing is swallowed, late or noisy."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any
from uuid import UUID

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

import pydantic_toast
from fixtures.backends import NothingToConnect
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConnectionError,
    register_backend,
)

pytestmark = pytest.mark.reliability

# Anything asyncio or the garbage collector prints about work that was abandoned mid-flight.
NOISE = (
    "Task was destroyed but it is pending",
    "never retrieved",
    "GeneratorExit",
    "Exception ignored",
    "Traceback",
)


class InterruptingBackend(NothingToConnect):
    """Raises whatever `raising` holds on save, on the library's I/O thread."""

    raising: type[BaseException] | None = None
    records: dict[UUID, dict[str, Any]] = {}  # noqa: RUF012 - shared on purpose across instances

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        if self.raising is not None:
            raise self.raising
        self.records[id] = data

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        return self.records.get(id)


register_backend("interrupting", InterruptingBackend)


class Interrupted(ExternalBaseModel):
    x: int
    model_config = ExternalConfigDict(storage="interrupting://x")


class PlainParent(BaseModel):
    child: Interrupted


@pytest.mark.parametrize("raising", [KeyboardInterrupt, SystemExit])
def test_an_interruption_during_a_sync_dump_propagates_as_itself(raising: type[BaseException]) -> None:
    InterruptingBackend.raising = raising
    try:
        with pytest.raises(raising):
            Interrupted(x=1).model_dump()
        with pytest.raises(raising):
            Interrupted(x=1).model_dump_json()
        with pytest.raises(raising):
            pydantic_toast.dump(PlainParent(child=Interrupted(x=1)))
        with pytest.raises(raising):
            pydantic_toast.dump([Interrupted(x=1)], mode="json")
        # pydantic-core wraps whatever a serializer raises, BaseException included; in Python
        # mode it keeps the original as the cause (documented in docs/reliability.md).
        with pytest.raises(PydanticSerializationError) as wrapped:
            PlainParent(child=Interrupted(x=1)).model_dump()
        assert isinstance(wrapped.value.__cause__, raising)
    finally:
        InterruptingBackend.raising = None
    # The I/O thread survived: asyncio would have let the exception end its loop.
    assert Interrupted.model_validate(Interrupted(x=2).model_dump()).x == 2


def _run_script(*parts: str) -> subprocess.CompletedProcess[str]:
    script = "\n".join(textwrap.dedent(part) for part in parts)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


SLOW_BACKEND = """
    import asyncio, signal, sys
    # Ctrl-C as in a terminal, even when the test run itself ignores SIGINT (a shell starts
    # background jobs so, and children inherit it): the tests are about what Ctrl-C does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from typing import Any
    from uuid import UUID
    import pydantic_toast
    from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageBackend, register_backend

    class Slow(StorageBackend):
        records: dict[UUID, Any] = {}
        def __init__(self, url: str) -> None: ...
        async def connect(self) -> None: ...
        async def disconnect(self) -> None: ...
        async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
            await asyncio.sleep(0.02)
            self.records[id] = data
        async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
            await asyncio.sleep(0.02)
            return self.records.get(id)

    register_backend("slow", Slow)

    class Model(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage="slow://x", timeout=60)
"""

DUMP_LOOP = textwrap.dedent(SLOW_BACKEND) + textwrap.dedent(
    """
    mode = sys.argv[1]
    reference = Model(x=0).model_dump()
    print("ready", flush=True)
    while True:
        try:  # the loop the defect kept alive: Ctrl-C must end it all the same
            if mode == "model_dump":
                Model(x=1).model_dump()
            elif mode == "model_dump_json":
                Model(x=1).model_dump_json()
            elif mode == "dump":
                pydantic_toast.dump([Model(x=1), Model(x=2)])
            elif mode == "adump":
                asyncio.run(pydantic_toast.adump([Model(x=1)]))
            elif mode == "model_validate":
                Model.model_validate(reference)
        except Exception:
            pass
"""
)


@pytest.mark.parametrize("mode", ["model_dump", "model_dump_json", "dump", "adump", "model_validate"])
def test_ctrl_c_ends_a_dump_loop_and_the_process_dies_by_sigint(mode: str) -> None:
    rng = random.Random(mode)
    for _ in range(3):
        process = subprocess.Popen(
            [sys.executable, "-c", DUMP_LOOP, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.05, 0.3))
            interrupted = time.monotonic()
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=30)
            elapsed = time.monotonic() - interrupted
        finally:
            process.kill()
            process.wait()
        assert process.returncode == -signal.SIGINT, stderr
        assert "KeyboardInterrupt" in stderr
        assert "PydanticSerializationError" not in stderr
        assert not any(noise in stderr for noise in NOISE[:3]), stderr
        assert elapsed < 5, f"exit took {elapsed:.1f} s after Ctrl-C"


def test_exit_with_a_flush_in_flight_prints_nothing() -> None:
    result = _run_script(
        SLOW_BACKEND,
        """
        import threading, time

        class Never(Slow):
            async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
                try:
                    await asyncio.sleep(60)
                except BaseException:
                    await asyncio.sleep(0)  # unwinding takes a turn of the loop, like a real driver
                    raise

        register_backend("never", Never)

        class Stuck(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage="never://x", timeout=120)
        for _ in range(3):
            threading.Thread(target=lambda: Stuck(x=1).model_dump(), daemon=True).start()
        time.sleep(0.3)
        print("exiting with flushes in flight", flush=True)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "exiting with flushes in flight" in result.stdout
    assert result.stderr == ""


class BlockingBackend(InterruptingBackend):
    """Blocks the event loop it runs on: a custom backend calling blocking code by mistake."""

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        time.sleep(1.0)  # noqa: ASYNC251 - the defect under test
        await asyncio.sleep(0)


register_backend("blocking", BlockingBackend)


class Blocked(ExternalBaseModel):
    x: int
    model_config = ExternalConfigDict(storage="blocking://x", timeout=0.2)


def test_a_sync_timeout_arrives_on_time_even_when_the_io_loop_is_blocked() -> None:
    started = time.monotonic()
    with pytest.raises(StorageConnectionError, match=r"did not finish within 0\.2 s") as caught:
        Blocked(x=1).model_dump()
    elapsed = time.monotonic() - started
    print(f"\nsync timeout=0.2 against a blocking backend: error after {elapsed:.3f} s")
    assert elapsed < 0.6
    assert "blocks the library's event loop" in str(caught.value)
    # Let the blocked loop finish before the next test uses it.
    time.sleep(1.0)


def test_a_sync_timeout_leaves_nothing_on_stderr_at_exit() -> None:
    result = _run_script(
        SLOW_BACKEND,
        """
        import time
        from pydantic_toast import StorageConnectionError

        class Blocking(Slow):
            async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
                time.sleep(0.5)
                await asyncio.sleep(0)

        register_backend("blocking", Blocking)

        class Blocked(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage="blocking://x", timeout=0.2)

        started = time.monotonic()
        try:
            Blocked(x=1).model_dump()
        except StorageConnectionError:
            print(f"{time.monotonic() - started:.3f}", flush=True)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 0.6
    assert result.stderr == ""


class SleepyBackend(InterruptingBackend):
    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        await asyncio.sleep(10)


register_backend("sleepy", SleepyBackend)


class Sleeping(ExternalBaseModel):
    x: int
    model_config = ExternalConfigDict(storage="sleepy://x", timeout=0.2)


def test_the_library_error_names_the_deadline_when_the_loop_is_responsive() -> None:
    started = time.monotonic()
    with pytest.raises(StorageConnectionError, match=r"'sleepy://x' did not answer within 0\.2 s"):
        Sleeping(x=1).model_dump()
    assert time.monotonic() - started < 0.6
