"""Per-operation time limits that cost one dict entry each, not one timer each.

`asyncio.timeout()` schedules and cancels a timer per use, which is a large share of the
library's own overhead on a fast store. All operations running on a loop share one timer here:
it is set for the earliest deadline, and when it fires it cancels the overdue tasks and re-arms
for the next deadline.
"""

from __future__ import annotations

import asyncio
import math

__all__ = ["Deadlines"]


class Deadlines:
    """The deadlines of the operations in flight on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._inflight: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def enter(self, seconds: float) -> asyncio.Task[object]:
        """Start bounding the current task's operation to `seconds`."""
        task = asyncio.current_task(self._loop)
        if task is None:  # pragma: no cover - the runtime only calls this from coroutines
            raise RuntimeError("pydantic-toast operations must run inside an asyncio task")
        deadline = self._loop.time() + seconds
        self._inflight[task] = deadline
        if deadline < self._armed_for:
            self._arm(deadline)
        return task

    def leave(self, task: asyncio.Task[object]) -> bool:
        """Stop bounding `task`; True if it was cancelled because its deadline passed."""
        self._inflight.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def time_left(self, task: asyncio.Task[object] | None) -> float | None:
        """Seconds until `task`'s deadline; None if it has none here."""
        deadline = self._inflight.get(task) if task is not None else None
        return None if deadline is None else deadline - self._loop.time()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)
        self._armed_for = when

    def _fire(self) -> None:
        self._timer = None
        self._armed_for = math.inf
        now = self._loop.time()
        upcoming = math.inf
        for task, deadline in list(self._inflight.items()):
            if deadline <= now:
                if task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
            elif deadline < upcoming:
                upcoming = deadline
        if upcoming < math.inf:
            self._arm(upcoming)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
