"""The library-owned I/O thread that lets sync code (`model_dump()`, `model_validate(ref)`) run async work.

Sync calls may come from plain code, from threads, or from inside a running event loop where
`asyncio.run` is impossible. They are submitted to one daemon thread running its own event loop,
which owns the backends used by sync calls, and the caller waits for the result with a timeout.
A caller that gives up (timeout, Ctrl-C) cancels its work; at exit the work still in flight is
cancelled and the loop's backends are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from . import forksafe
from .exceptions import ExternalStorageError, StorageConnectionError

__all__ = ["SHUTDOWN_TIMEOUT", "Bridge"]

T = TypeVar("T")

SHUTDOWN_TIMEOUT = 5.0
# A sync caller waits this much longer than the operation's own deadline, which the I/O loop
# enforces with a better message; the margin only matters when that loop is blocked.
_BRIDGE_MARGIN = 0.05


class Bridge:
    """One daemon thread running an event loop for sync callers.

    `close_loop` disconnects the backends of a loop; the bridge calls it for its own loop at exit.
    """

    def __init__(self, close_loop: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> None:
        self._close_loop = close_loop
        self._lock = forksafe.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.exiting = False

    def loop_if_running(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def in_io_thread(self) -> bool:
        thread = self._thread
        return thread is not None and threading.current_thread() is thread

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()
                thread = threading.Thread(
                    target=_serve, args=(loop, started), name="pydantic-toast-io", daemon=True
                )
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise ExternalStorageError(
                "a sync pydantic-toast call (model_dump / model_validate of an external model) was "
                "made from inside the library's own I/O thread, which would deadlock; use the async "
                "API (await model.save(), await Model.load(ref)) inside backends"
            )
        loop = self._loop or self._start()
        call = _Call(coroutine)
        loop.call_soon_threadsafe(self._begin, loop, call)
        try:
            finished = call.done.acquire(timeout=timeout + _BRIDGE_MARGIN)
        except BaseException:
            # Interrupted while waiting (Ctrl-C): nobody will take the result, so the work stops
            # instead of running on unobserved.
            call.abandon(loop)
            raise
        if not finished:
            call.abandon(loop)
            raise StorageConnectionError(
                f"a storage operation did not finish within {timeout:g} s; the storage server may "
                "be down or overloaded, or a backend blocks the library's event loop (a custom "
                "backend must not make blocking calls in its async methods)"
            ) from None
        if call.failure is not None:
            failure, call.failure = call.failure, None  # no reference cycle through the traceback
            raise failure
        if call.cancelled:
            raise StorageConnectionError("the storage operation was cancelled before it finished") from None
        return cast(T, call.result)

    def _begin(self, loop: asyncio.AbstractEventLoop, call: _Call) -> None:
        call.task = loop.create_task(self._drive(call))

    async def _drive(self, call: _Call) -> None:
        """Run the caller's coroutine and hand over its outcome, all in the task itself: a done
        callback would cost one more turn of the loop before the caller wakes."""
        call.started = True
        try:
            call.result = await call.coroutine
        except asyncio.CancelledError:
            call.cancelled = True
            # At exit the only threads still waiting are daemon threads; waking them while the
            # interpreter finalizes can abort the process, so they are left waiting.
            if not self.exiting:
                call.done.release()
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
            # Ctrl-C or SystemExit raised by a backend included: they are the caller's to raise;
            # the I/O loop carries on serving. Kept here, so nothing reaches stderr.
            call.failure = exc
            call.done.release()
        else:
            call.done.release()

    def shutdown(self) -> None:
        self.exiting = True
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or not thread.is_alive():
            return
        winding_down = asyncio.run_coroutine_threadsafe(self._wind_down(loop), loop)
        with contextlib.suppress(Exception):  # the process is exiting; never hang or shout at exit
            winding_down.result(SHUTDOWN_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(SHUTDOWN_TIMEOUT)

    async def _wind_down(self, loop: asyncio.AbstractEventLoop) -> None:
        """At exit: cancel the sync calls still in flight (their callers are gone), then disconnect."""
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks(loop) if task is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        await self._close_loop(loop)

    def forget_after_fork(self) -> None:
        # The child has no I/O thread. Its copy of the parent's loop shares the parent's epoll
        # instance and wake-up socket: kept, never closed (see runtime._forget_after_fork).
        if self._loop is not None:
            forksafe.keep_for_good((self._loop, self._thread))
        self._loop = self._thread = None


class _Call:
    """One sync call's hand-over between its caller's thread and the I/O loop.

    `done` is a plain lock, taken at creation and released once the outcome is in: the caller
    waits on it directly (a `concurrent.futures.Future` waits on a Python-level Condition)."""

    __slots__ = ("cancelled", "coroutine", "done", "failure", "result", "started", "task")

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.coroutine = coroutine
        self.done = threading.Lock()
        self.done.acquire()
        self.task: asyncio.Task[None] | None = None
        self.result: Any = None
        self.failure: BaseException | None = None
        self.cancelled = False
        self.started = False

    def __del__(self) -> None:
        # A task cancelled before its first step (abandoned at once, or at exit) never ran
        # `_drive`, so nothing awaited the caller's coroutine: close it, rather than let the
        # garbage collector warn that it was never awaited.
        if not self.started:
            self.coroutine.close()

    def abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        """The caller stopped waiting: cancel the work, on the loop's thread."""
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        else:  # pragma: no cover - _begin runs first: both are callbacks in order on one loop
            self.coroutine.close()


def _serve(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        while True:
            try:
                loop.run_forever()
                break
            except (KeyboardInterrupt, SystemExit):
                # A task raised it (a backend calling sys.exit() while closing, say: a sync
                # call's own task hands such an exception to its caller instead); asyncio has
                # stored it in that task and re-raised it here too. The I/O thread carries on.
                continue
    finally:
        # Whatever Bridge._wind_down could not finish in time: cancelled and unwound here, so no
        # task is destroyed pending and no coroutine is closed mid-flight by the garbage collector.
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers, timeout=SHUTDOWN_TIMEOUT))
        if not any(not task.done() for task in leftovers):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
