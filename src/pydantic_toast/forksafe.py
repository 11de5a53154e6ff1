"""Locks and gates that a forked child can still use.

A lock held by another thread at the moment of `fork()` stays held for ever in the child, where
that thread does not exist: the child's first library call then hangs. Every threading lock of
the library is made here. Before a fork the forking thread takes each of them (as `logging`
does), so no critical section is cut in half; the parent releases them afterwards, and the child
releases the ones it took and re-creates any it could not take in time.

`ForkGate` goes further for work that must not be running at all while the process forks (a
SQLite call holding the database's locks): a fork waits for such work to finish, and new work
waits for the fork to be over.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ForkGate", "Lock", "RLock", "keep_for_good"]

T = TypeVar("T")

# The library's critical sections are dict updates and schema builds: a lock still held after this
# long is wedged, and a fresh lock in the child beats a child that hangs.
_ACQUIRE_TIMEOUT = 2.0

_registry_lock = threading.Lock()
_registered: list[weakref.ref[Any]] = []  # creation order, which is also the nesting order
_taken: list[Any] = []


def Lock() -> threading.Lock:  # noqa: N802 - a drop-in for threading.Lock
    """A `threading.Lock` that is never inherited held by a forked child."""
    return _register(threading.Lock())


def RLock() -> threading.RLock:  # noqa: N802 - a drop-in for threading.RLock
    """A `threading.RLock` that is never inherited held by a forked child."""
    return _register(threading.RLock())


def _register(lock: T) -> T:
    with _registry_lock:
        _registered.append(weakref.ref(lock))
    return lock


def _live_locks() -> list[Any]:
    with _registry_lock:
        locks = [ref() for ref in _registered]
        _registered[:] = [ref for ref, lock in zip(_registered, locks, strict=True) if lock is not None]
    return [lock for lock in locks if lock is not None]


def _before_fork() -> None:
    _taken.clear()
    _taken.extend(lock for lock in _live_locks() if lock.acquire(timeout=_ACQUIRE_TIMEOUT))


def _after_fork_in_parent() -> None:
    for lock in reversed(_taken):
        lock.release()
    _taken.clear()


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    taken = {id(lock) for lock in _taken}
    for lock in reversed(_taken):
        lock.release()
    _taken.clear()
    for lock in _live_locks():
        if id(lock) not in taken:
            # Held by a thread that does not exist here, or created while the fork was under way.
            lock._at_fork_reinit()


def keep_for_good(inherited: object) -> None:
    """Never free `inherited` in this process, not even when the interpreter exits.

    For what a forked child inherited and must not finalize: its parent's loops, transports and
    sockets share kernel objects with the parent. A module-level reference is not enough: the
    interpreter frees module globals at exit, which finalizes the objects. One deliberately
    leaked reference is.
    """
    import ctypes  # only forked children that inherited connections pay for this import

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(inherited))


class ForkGate:
    """Work that must not be in flight while the process forks.

    `run(work, ...)` runs `work` unless a fork is under way, in which case it waits for the fork
    to finish. A fork waits up to `timeout` seconds for work in flight to finish first; past that
    it goes ahead rather than hang, and the child may then find the resource held.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        # `with self._lock` (C) rather than `with self._condition` (two Python calls): `run`
        # wraps every SQLite call. The condition shares the lock, so holding one holds the other.
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._active = 0
        self._forking = False
        if hasattr(os, "register_at_fork"):
            me = weakref.ref(self)
            os.register_at_fork(
                before=lambda: _call(me, ForkGate._close),
                after_in_parent=lambda: _call(me, ForkGate._open),
                after_in_child=lambda: _call(me, ForkGate._reset),
            )

    def run(self, work: Callable[..., T], *args: Any) -> T:
        with self._lock:
            while self._forking:
                self._condition.wait()
            self._active += 1
        try:
            return work(*args)
        finally:
            with self._lock:
                self._active -= 1
                if not self._active and self._forking:
                    self._condition.notify_all()

    def _close(self) -> None:
        with self._condition:
            self._forking = True
            self._condition.wait_for(lambda: not self._active, self._timeout)

    def _open(self) -> None:
        with self._condition:
            self._forking = False
            self._condition.notify_all()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._active = 0
        self._forking = False


def _call(gate: weakref.ref[ForkGate], hook: Callable[[ForkGate], None]) -> None:
    target = gate()
    if target is not None:
        hook(target)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
