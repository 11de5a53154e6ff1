"""An exclusive lock on a file:// store's directory, held across processes, for checked writes.

A local directory has no conditional replace: a checked batch (optimistic concurrency) reads the
stored revisions and writes while it holds this lock, so no other checked writer comes between
its check and its write. An advisory `flock` on a lock file in the directory: it holds between
processes on one machine, not on network file systems that ignore flock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ...exceptions import UnsupportedOperationError

__all__ = ["LOCK_NAME", "directory_lock"]

LOCK_NAME = ".pydantic-toast.lock"


@contextlib.asynccontextmanager
async def directory_lock(directory: Path, wait_at_most: float) -> AsyncIterator[None]:
    """Hold the directory's lock; `TimeoutError` if another writer keeps it over `wait_at_most` s.

    Polled without blocking rather than waited for in a thread: a cancelled wait then never
    leaves a thread behind that takes the lock later and keeps it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        raise UnsupportedOperationError(
            "file:// stores check revisions with flock(), which this platform lacks; remove "
            "'optimistic_concurrency' from the model's configuration"
        ) from None
    descriptor = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_at_most
        pause = 0.001
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the lock of {directory} stayed taken for {wait_at_most:g} s"
                    ) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
