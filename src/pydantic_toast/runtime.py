"""Which connected backend instance serves a call, and the bridge that lets sync code use them.

* Async calls run on the caller's event loop with that loop's own backend instance (pool,
  client): no thread hop, and no connection is ever used from a loop that did not create it.
  Instances are created lazily, connected once, and reused until `aclose()`.
* Sync calls (`model_dump()`, `model_validate(ref)`) may come from plain code, from threads, or
  from inside a running event loop where `asyncio.run` is impossible. They are submitted to one
  library-owned daemon thread running its own event loop, which owns the backends used by sync
  calls, and the caller waits for the result with a timeout.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import forksafe
from .backends.base import BackendStats, StorageBackend
from .deadlines import Deadlines
from .exceptions import ExternalStorageError, StorageConnectionError, UnsupportedEventLoopError
from .registry import backend_class
from .url import StorageURL, mask_secrets

__all__ = ["aclose", "close", "execute", "get_backend", "run_sync", "running_loop", "stats", "time_left"]

T = TypeVar("T")

_SHUTDOWN_TIMEOUT = 5.0
# A sync caller waits this much longer than the operation's own deadline, which the I/O loop
# enforces with a better message; the margin only matters when that loop is blocked.
_BRIDGE_MARGIN = 0.05


@dataclass
class _Slot:
    backend: StorageBackend
    connected: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_lock = forksafe.RLock()
# Strong references: a loop's entries go when asyncio shuts it down (see _guard_loop) or, for a
# loop closed by hand, at the next sweep.
_slots: dict[asyncio.AbstractEventLoop, dict[str, _Slot]] = {}
_deadlines: dict[asyncio.AbstractEventLoop, Deadlines] = {}
_stats: dict[str, tuple[StorageURL, BackendStats]] = {}


def running_loop() -> asyncio.AbstractEventLoop:
    """The running asyncio loop, or a library error saying why the async API cannot run here."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise UnsupportedEventLoopError(
            "pydantic-toast's async API (await model.save(), await Model.load(ref), adump, aclose, ...) "
            "needs a running asyncio event loop, and there is none in this thread (trio, or no loop "
            "at all?); run it under asyncio (anyio's default backend), or use the sync API "
            "(model_dump(), model_validate(ref), pydantic_toast.dump()), which works anywhere, "
            "e.g. through anyio.to_thread.run_sync / trio.to_thread.run_sync"
        ) from None


def stats() -> dict[str, dict[str, int]]:
    """Traffic counters per storage URL (password masked), cumulative since the process started.

    `round_trips` counts requests that waited for a server: take the difference around a block
    of code to check it for N+1 patterns.
    """
    with _lock:
        entries = list(_stats.values())
    return {url.masked: counters.snapshot() for url, counters in entries}


async def get_backend(url: StorageURL) -> StorageBackend:
    """The connected backend for `url` on the running loop, creating and connecting it once."""
    loop = running_loop()
    slots = _slots.get(loop)
    slot = None if slots is None else slots.get(url.raw)
    if slot is None:
        backend_type = backend_class(url.scheme)
        if slots is None and loop is not _bridge.loop_if_running():
            await _guard_loop(loop)
        with _lock:
            slots = _slots.setdefault(loop, {})
            slot = slots.get(url.raw)
            if slot is None:
                backend = backend_type(url.raw)
                if url.raw not in _stats:
                    _stats[url.raw] = (url, BackendStats())
                backend.stats = _stats[url.raw][1]
                slot = slots[url.raw] = _Slot(backend)
    if slot.connected:
        return slot.backend
    async with slot.lock:
        if not slot.connected:
            await slot.backend.connect()
            slot.connected = True
    return slot.backend


# Loops whose backends are closed when asyncio shuts the loop down, and the guard doing it.
_guards: dict[int, tuple[asyncio.AbstractEventLoop, AsyncGenerator[None, None]]] = {}


async def _guard_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close this loop's backends when it shuts down, even if nobody calls `aclose()`.

    `asyncio.run`, `asyncio.Runner` and pytest-asyncio call `loop.shutdown_asyncgens()` before
    closing a loop; a suspended async generator registered with the loop is finalized there, on
    the still-running loop, which is the last moment its connections can be closed cleanly.
    """
    with _lock:
        if id(loop) in _guards:
            return
        _sweep_closed_loops()
    guard = _close_on_shutdown(loop)
    await guard.__anext__()
    with _lock:
        _guards[id(loop)] = (loop, guard)


async def _close_on_shutdown(loop: asyncio.AbstractEventLoop) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        if not loop.is_closed():
            await _close_loop(loop)
        with _lock:
            _guards.pop(id(loop), None)


def _sweep_closed_loops() -> None:
    """Forget loops closed without `shutdown_asyncgens()` (a hand-made loop's `close()`)."""
    for key, (loop, guard) in list(_guards.items()):
        if loop.is_closed():
            del _guards[key]
            _slots.pop(loop, None)
            _deadlines.pop(loop, None)
            # Finish the guard here: left to the garbage collector, its finalizer would try to
            # schedule work on the closed loop. Its `finally` sees the closed loop and returns.
            closing = guard.aclose()
            try:
                closing.send(None)
            except StopIteration:
                pass
            except RuntimeError:  # pragma: no cover - the guard was already running
                closing.close()


async def execute(url: StorageURL, seconds: float, operation: Callable[[StorageBackend], Awaitable[T]]) -> T:
    """Run `operation` against the backend for `url` within `seconds`.

    Built-in backends raise the library's exceptions themselves; for custom backends, timeouts
    and OS-level connection failures are translated here so callers see one hierarchy.
    """
    loop = running_loop()
    deadlines = _deadlines.get(loop)
    if deadlines is None:
        deadlines = _deadlines.setdefault(loop, Deadlines(loop))
    task = deadlines.enter(seconds)
    cancelling = task.cancelling()
    try:
        return await operation(await get_backend(url))
    except asyncio.CancelledError:
        # As asyncio.timeout does: our deadline's cancel becomes the timeout error only when no
        # other cancel (the caller's task.cancel(), a TaskGroup, ...) landed with it.
        if deadlines.leave(task) and task.uncancel() <= cancelling:
            raise _timed_out(url, seconds) from None
        raise
    except ExternalStorageError:
        raise
    except TimeoutError as exc:
        raise _timed_out(url, seconds) from exc
    except OSError as exc:
        raise StorageConnectionError(
            f"cannot reach storage {url.masked!r}: {mask_secrets(str(exc), url.password)}", url=url.masked
        ) from None
    except Exception as exc:
        # A custom backend's own failure: catchable with the library's base class, and not
        # buried by pydantic in a serialization error.
        raise ExternalStorageError(
            f"the {backend_class(url.scheme).__name__} backend for {url.masked!r} failed: "
            f"{mask_secrets(repr(exc), url.password)}"
        ) from exc
    finally:
        if deadlines.leave(task):
            # The deadline fired but the operation swallowed its cancel: withdraw it all the same.
            task.uncancel()


def time_left() -> float | None:
    """Seconds before the running task's operation reaches its model's `timeout`; None outside one.

    For a backend that waits on purpose (a full server) and wants to give up with its own,
    more precise error just before the generic timeout would cancel it.
    """
    loop = asyncio.get_running_loop()
    deadlines = _deadlines.get(loop)
    return None if deadlines is None else deadlines.time_left(asyncio.current_task(loop))


def _timed_out(url: StorageURL, seconds: float) -> StorageConnectionError:
    return StorageConnectionError(
        f"storage {url.masked!r} did not answer within {seconds:g} s; check that the server is "
        "up and reachable, or raise 'timeout' in the model's ExternalConfigDict",
        url=url.masked,
    )


async def aclose() -> None:
    """Disconnect every backend this process opened that can still be closed.

    Closes the running loop's backends and those of the sync bridge; backends of loops that have
    already closed are dropped. The next call reconnects lazily.
    """
    current = running_loop()
    await _close_loop(current)
    bridge_loop = _bridge.loop_if_running()
    if bridge_loop is not None and bridge_loop is not current:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_close_loop(bridge_loop), bridge_loop))
    with _lock:
        _sweep_closed_loops()
        for loop in [loop for loop in _slots if loop.is_closed()]:
            del _slots[loop]


def close() -> None:
    """Sync twin of `aclose()` for code that runs no event loop of its own."""
    bridge_loop = _bridge.loop_if_running()
    if bridge_loop is not None:
        _bridge.run(_close_loop(bridge_loop), _SHUTDOWN_TIMEOUT)


async def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    with _lock:
        slots = _slots.pop(loop, {})
        deadlines = _deadlines.pop(loop, None)
    if deadlines is not None:
        deadlines.close()
    results = await asyncio.gather(
        *(slot.backend.disconnect() for slot in slots.values() if slot.connected), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result


def _begin(
    loop: asyncio.AbstractEventLoop,
    coroutine: Coroutine[Any, Any, T],
    waiter: concurrent.futures.Future[T],
    started: list[asyncio.Task[T]],
) -> None:
    task = loop.create_task(coroutine)
    started.append(task)
    task.add_done_callback(lambda done: _settle(done, waiter))


def _settle(task: asyncio.Task[T], waiter: concurrent.futures.Future[T]) -> None:
    if task.cancelled():
        # At exit the only threads still waiting are daemon threads; waking them while the
        # interpreter finalizes can abort the process, so they are left waiting.
        if not _bridge.exiting:
            waiter.cancel()
        return
    # Always retrieved here, so an operation whose caller gave up leaves nothing on stderr.
    exception = task.exception()
    if exception is None:
        waiter.set_result(task.result())
    else:
        waiter.set_exception(exception)


def _cancel(started: list[asyncio.Task[T]]) -> None:
    for task in started:
        task.cancel()


class _Bridge:
    """One daemon thread running an event loop for sync callers."""

    def __init__(self) -> None:
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
        loop.call_soon_threadsafe(_begin, loop, coroutine, waiter, started)
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

    def shutdown(self) -> None:
        self.exiting = True
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or not thread.is_alive():
            return
        winding_down = asyncio.run_coroutine_threadsafe(_wind_down(loop), loop)
        with contextlib.suppress(Exception):  # the process is exiting; never hang or shout at exit
            winding_down.result(_SHUTDOWN_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_SHUTDOWN_TIMEOUT)

    def forget_after_fork(self) -> None:
        # The child has no I/O thread. Its copy of the parent's loop shares the parent's epoll
        # instance and wake-up socket: kept, never closed (see _forget_after_fork).
        if self._loop is not None:
            _keep_for_good((self._loop, self._thread))
        self._loop = self._thread = None


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
        # Whatever _wind_down could not finish in time: cancelled and unwound here, so no task is
        # destroyed pending and no coroutine is closed mid-flight by the garbage collector.
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers, timeout=_SHUTDOWN_TIMEOUT))
        if not any(not task.done() for task in leftovers):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _wind_down(loop: asyncio.AbstractEventLoop) -> None:
    """At exit: cancel the sync calls still in flight (their callers are gone), then disconnect."""
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks(loop) if task is not current]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    await _close_loop(loop)


_bridge = _Bridge()


def run_sync(coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run `coroutine` on the library's I/O thread and wait up to about `timeout` seconds."""
    return _bridge.run(coroutine, timeout)


def _forget_after_fork() -> None:
    """Start a forked child with no connection, and never let it close one of its parent's.

    The child's copies of the parent's loops, transports and sockets share kernel objects with
    the parent, above all the epoll instance: finalizing a transport here would remove the
    parent's socket from it, and the parent's next calls would stall until their socket timeout.
    So the child keeps all of it, for good, and never uses it.
    """
    if _slots or _guards:
        _keep_for_good((dict(_slots), dict(_deadlines), dict(_guards)))
    _slots.clear()
    _deadlines.clear()
    _guards.clear()
    _bridge.forget_after_fork()


def _keep_for_good(inherited: object) -> None:
    """Never free `inherited` in this process, not even when the interpreter exits.

    A module-level reference is not enough: the interpreter frees module globals at exit, which
    finalizes the objects. One deliberately leaked reference is.
    """
    import ctypes  # only forked children that inherited connections pay for this import

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(inherited))


atexit.register(_bridge.shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
