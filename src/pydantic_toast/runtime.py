"""Which connected backend instance serves a call: one per (storage URL, event loop).

Async calls run on the caller's event loop with that loop's own backend instance (pool, client):
no thread hop, and no connection is ever used from a loop that did not create it. Instances are
created lazily, connected once, and reused until `aclose()` or until asyncio shuts the loop down.
Sync calls (`run_sync`) run on the loop of the library's I/O thread (`_bridge.py`), which has
backends of its own; a sync call's single-record Redis save skips it (`_direct.py`). `execute`
bounds each operation by its model's timeout.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _direct, forksafe, observability
from ._backend_errors import raise_translated, timed_out
from ._bridge import SHUTDOWN_TIMEOUT, Bridge
from ._stats import counters_for
from .backends.base import StorageBackend
from .deadlines import Deadlines
from .exceptions import ExternalStorageError, UnsupportedEventLoopError
from .registry import backend_class
from .url import StorageURL

__all__ = [
    "aclose",
    "close",
    "execute",
    "gather_all",
    "get_backend",
    "in_io_thread",
    "run_sync",
    "running_loop",
    "time_left",
]

T = TypeVar("T")


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


async def gather_all(
    awaitables: Iterable[Awaitable[object]], *, ignoring: tuple[type[BaseException], ...] = ()
) -> None:
    """Await all of them concurrently, each to its end; then raise the first failure, if any.

    Failures of an `ignoring` type are dropped. None is left running when one fails, so a caller
    never goes on while work it started still runs. Pass a generator: it is consumed only once
    an asyncio loop is known to run, so under trio no coroutine is created and left unawaited.
    """
    running_loop()  # gather() would otherwise start a stray asyncio loop under trio
    pending = list(awaitables)
    if len(pending) == 1:
        if not ignoring:  # the common case, without a context manager's three calls
            await pending[0]
            return
        with contextlib.suppress(*ignoring):
            await pending[0]
        return
    for result in await asyncio.gather(*pending, return_exceptions=True):
        if isinstance(result, BaseException) and not isinstance(result, ignoring):
            raise result


async def get_backend(url: StorageURL) -> StorageBackend:
    """The connected backend for `url` on the running loop, creating and connecting it once."""
    loop = running_loop()
    slots = _slots.get(loop)
    slot = None if slots is None else slots.get(url.raw)
    if slot is None:
        backend_type = backend_class(url.scheme)
        counters = counters_for(url)
        if slots is None and loop is not _bridge.loop_if_running():
            await _guard_loop(loop)
        with _lock:
            slots = _slots.setdefault(loop, {})
            slot = slots.get(url.raw)
            if slot is None:
                backend = backend_type(url.raw)
                backend.stats = counters
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


def execute(
    url: StorageURL, seconds: float, operation: Callable[[StorageBackend], Awaitable[T]]
) -> Coroutine[Any, Any, T]:
    """Run `operation` against the backend for `url` within `seconds` (await the result).

    Built-in backends raise the library's exceptions themselves; a custom backend's other
    failures are translated (`_backend_errors.py`), so callers see one hierarchy. Every operation
    is observed here (`observability.py`): a log line and a span when someone listens, else only
    the slow-operation check.
    """
    if observability.enabled():
        return observability.observed(url, operation, functools.partial(_execute, url, seconds, timed=False))
    return _execute(url, seconds, operation, timed=True)


async def _execute(
    url: StorageURL, seconds: float, operation: Callable[[StorageBackend], Awaitable[T]], *, timed: bool
) -> T:
    started = time.perf_counter() if timed else 0.0
    loop = running_loop()
    deadlines = _deadlines.get(loop)
    if deadlines is None:
        deadlines = _deadlines.setdefault(loop, Deadlines(loop))
    task = deadlines.enter(seconds)
    cancelling = task.cancelling()
    try:
        # get_backend's first lines inline: once connected, a backend is two lookups away, and
        # awaiting a coroutine that never suspends still costs its frame.
        slots = _slots.get(loop)
        slot = None if slots is None else slots.get(url.raw)
        backend = slot.backend if slot is not None and slot.connected else await get_backend(url)
        result = await operation(backend)
    except asyncio.CancelledError:
        # As asyncio.timeout does: our deadline's cancel becomes the timeout error only when no
        # other cancel (the caller's task.cancel(), a TaskGroup, ...) landed with it.
        if deadlines.leave(task) and task.uncancel() <= cancelling:
            raise timed_out(url, seconds) from None
        raise
    except ExternalStorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - raised again, as a library exception
        raise_translated(url, seconds, exc)
    finally:
        if deadlines.leave(task):
            # The deadline fired but the operation swallowed its cancel: withdraw it all the same.
            task.uncancel()
    if timed and (slow := observability.slow_seconds) is not None and time.perf_counter() - started >= slow:
        observability.warn_slow(url, time.perf_counter() - started)
    return result


def time_left() -> float | None:
    """Seconds before the running task's operation reaches its model's `timeout`; None outside one.

    For a backend that waits on purpose (a full server) and wants to give up with its own,
    more precise error just before the generic timeout would cancel it.
    """
    loop = asyncio.get_running_loop()
    deadlines = _deadlines.get(loop)
    return None if deadlines is None else deadlines.time_left(asyncio.current_task(loop))


async def aclose() -> None:
    """Disconnect every backend this process opened that can still be closed.

    Closes the running loop's backends and those of the sync bridge; backends of loops that have
    already closed are dropped. The next call reconnects lazily.
    """
    current = running_loop()
    _direct.close()
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
    _direct.close()
    bridge_loop = _bridge.loop_if_running()
    if bridge_loop is not None:
        _bridge.run(_close_loop(bridge_loop), SHUTDOWN_TIMEOUT)


async def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    with _lock:
        slots = _slots.pop(loop, {})
        deadlines = _deadlines.pop(loop, None)
    if deadlines is not None:
        deadlines.close()
    # A backend that fails to disconnect cannot be helped here; Ctrl-C and SystemExit go on up.
    await gather_all(
        (slot.backend.disconnect() for slot in slots.values() if slot.connected), ignoring=(Exception,)
    )


_bridge = Bridge(_close_loop)


def run_sync(coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run `coroutine` on the library's I/O thread and wait up to about `timeout` seconds."""
    return _bridge.run(coroutine, timeout)


def in_io_thread() -> bool:
    """Whether this is the library's I/O thread, where a sync call is refused (see `Bridge.run`)."""
    return _bridge.in_io_thread()


def _forget_after_fork() -> None:
    """Start a forked child with no connection, and never let it close one of its parent's.

    The child's copies of the parent's loops, transports and sockets share kernel objects with
    the parent, above all the epoll instance: finalizing a transport here would remove the
    parent's socket from it, and the parent's next calls would stall until their socket timeout.
    So the child keeps all of it, for good, and never uses it.
    """
    if _slots or _guards:
        forksafe.keep_for_good((dict(_slots), dict(_deadlines), dict(_guards)))
    _slots.clear()
    _deadlines.clear()
    _guards.clear()
    _bridge.forget_after_fork()


atexit.register(_bridge.shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
