"""A bound on commands in flight per backend, cheaper than `asyncio.Semaphore` when uncontended.

`asyncio.Semaphore` costs three coroutines per use (`__aenter__`, `acquire`, `__aexit__`) even
when a slot is free, on every Redis command. Here the free case is two plain method calls; only a
full house creates a future and waits, first come first served.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Slots"]


class Slots:
    """At most `size` holders at once, on one event loop; the rest wait in arrival order."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self) -> bool:
        """Take a slot if one is free and nobody is waiting for one."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot. A slot is handed to the waiter directly by `give`."""
        if self.take_now():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Handed a slot, then cancelled before running on: pass the slot on.
                self.give()
            elif waiter in self._waiters:
                # (`give` drops a cancelled waiter from the queue itself when it meets one.)
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Return a slot: to the first waiter still waiting, else to the free count."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
