"""The library-owned I/O thread that lets sync code (`model_dump()`, `model_validate(ref)`) run async work.

Sync calls may come from plain code, from threads, or from inside a running event loop where
`asyncio.run` is impossible. They are submitted to one daemon thread running its own event loop,
which owns the backends used by sync calls, and the caller waits for the result with a timeout.
A caller that gives up (timeout, Ctrl-C) cancels its work; at exit the work still in flight is
cancelled and the loop's backends are closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

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
        loop = self._start()
        waiter: concurrent.futures.Future[T] = concurrent.futures.Future()
        started: list[asyncio.Task[T]] = []
        loop.call_soon_threadsafe(self._begin, loop, coroutine, waiter, started)
        try:
            return waiter.result(timeout + _BRIDGE_MARGIN)
        except BaseException as exc:
            if waiter.cancelled():
                raise StorageConnectionError(
                    "the storage operation was cancelled before it finished"
                ) from None
            if waiter.done() and waiter.exception() is exc:
                raise  # the operation's own error
            # Timed out, or this thread was interrupted while waiting (Ctrl-C): nobody will take
            # the result, so the work stops instead of running on unobserved.
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(_cancel, started)
            if isinstance(exc, TimeoutError):
                raise StorageConnectionError(
                    f"a storage operation did not finish within {timeout:g} s; the storage server may "
                    "be down or overloaded, or a backend blocks the library's event loop (a custom "
                    "backend must not make blocking calls in its async methods)"
                ) from None
            raise

    def _begin(
        self,
        loop: asyncio.AbstractEventLoop,
        coroutine: Coroutine[Any, Any, T],
        waiter: concurrent.futures.Future[T],
        started: list[asyncio.Task[T]],
    ) -> None:
        task = loop.create_task(coroutine)
        started.append(task)
        task.add_done_callback(lambda done: self._settle(done, waiter))

    def _settle(self, task: asyncio.Task[T], waiter: concurrent.futures.Future[T]) -> None:
        if task.cancelled():
            # At exit the only threads still waiting are daemon threads; waking them while the
            # interpreter finalizes can abort the process, so they are left waiting.
            if not self.exiting:
                waiter.cancel()
            return
        # Always retrieved here, so an operation whose caller gave up leaves nothing on stderr.
        exception = task.exception()
        if exception is None:
            waiter.set_result(task.result())
        else:
            waiter.set_exception(exception)

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


def _cancel(started: list[asyncio.Task[T]]) -> None:
    for task in started:
        task.cancel()


def _serve(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        while True:
            try:
                loop.run_forever()
                break
            except (KeyboardInterrupt, SystemExit):
                # A task raised it (a backend calling sys.exit(), say); asyncio has stored it in
                # that task for its awaiter, the sync caller, and re-raised it here too. The I/O
                # thread carries on serving.
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
