"""`socket_timeout` for redis-py's connections with one timer per backend, not one per command.

redis-py bounds every send with `asyncio.wait_for` (on Python 3.11 a task and a timer per
command) and every reply with `asyncio.timeout` (a timer scheduled and cancelled per reply, so
a thousand per pipeline of a thousand): about 30% of the CPU time of a single save or load
through the backend here, and 23% of a pipeline of 1,000 SETs. So the pool's connections get
`socket_timeout=None`, which turns redis-py's timers off, and this module enforces the same
limit itself: a connection waiting on the server records its deadline in its backend's
`Watchdog`, whose one timer fires at the earliest deadline.

A late reply fails exactly as with redis-py's own timer: the stalled read raises `TimeoutError`
from inside the connection's stream, which redis-py turns into its `TimeoutError("Timeout reading
from …")` after dropping the connection, and its retry loop retries that like any timeout. A
send that stalls (a server that stopped reading, a large value) is aborted and reported as
redis-py's `TimeoutError("Timeout writing to socket")`. Cancelling the caller's task stays a
plain cancel: the watchdog never cancels a task.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

__all__ = ["Watchdog", "watched_class"]


class _Watched(Protocol):
    def _toast_expire(self) -> None: ...


class Watchdog:
    """The deadlines of one backend's connections that are waiting on the server."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[_Watched, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def watch(self, connection: _Watched) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        self._waiting[connection] = deadline
        # Deadlines only move later (every wait starts now, with the same limit), so a timer
        # armed for an earlier deadline stays: it re-arms when it fires. No timer per wait.
        if deadline < self._armed_for:
            self._arm(loop, deadline)

    def unwatch(self, connection: _Watched) -> None:
        self._waiting.pop(connection, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._armed_for = when

    def _fire(self) -> None:
        self._timer = None
        self._armed_for = math.inf
        loop = self._loop
        if loop is None:  # pragma: no cover - a timer exists only after a watch set the loop
            return
        now = loop.time()
        upcoming = math.inf
        for connection, deadline in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[connection]
                connection._toast_expire()
            elif deadline < upcoming:
                upcoming = deadline
        if upcoming < math.inf:
            self._arm(loop, upcoming)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = math.inf
        self._waiting.clear()


_classes: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def watched_class(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """`base` (redis-py's TCP, TLS or Unix socket connection) with its waits on the server
    bounded by a `Watchdog`, given as the `toast_watchdog` keyword of the pool."""
    made = _classes.get(base)
    if made is None:
        made = _classes[base] = _watched(base)
    return made


def _watched(base: type[AbstractConnection]) -> type[AbstractConnection]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    class WatchedConnection(base):  # type: ignore[misc, valid-type]
        def __init__(self, *, toast_watchdog: Watchdog, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._toast_watchdog = toast_watchdog
            self._toast_sending = False
            self._toast_expired = False

        def _toast_expire(self) -> None:
            self._toast_expired = True
            if self._toast_sending:
                # The server stopped reading: nothing wakes a blocked drain but the end of the
                # connection; send_packed_command below reports it as the timeout it is.
                writer = self._writer
                if writer is not None:
                    writer.transport.abort()
            else:
                reader = self._reader
                if reader is not None:
                    # Wakes the stalled read with the error redis-py's own timer would raise.
                    reader.set_exception(TimeoutError())

        async def read_response(
            self,
            disable_decoding: bool = False,
            timeout: float | None = None,  # noqa: ASYNC109 - redis-py's own signature
            **kwargs: Any,
        ) -> Any:
            if timeout is not None:  # an explicit limit: redis-py enforces it itself
                return await super().read_response(disable_decoding, timeout, **kwargs)
            watchdog = self._toast_watchdog
            self._toast_expired = False
            watchdog.watch(self)
            try:
                response = await super().read_response(disable_decoding, **kwargs)
            finally:
                watchdog.unwatch(self)
            if self._toast_expired:
                # The deadline passed as the reply came in: the timeout wins, as it does with
                # redis-py's timer, and the connection, whose stream now holds the error, goes.
                await self.disconnect(nowait=True)
                raise RedisTimeoutError(f"Timeout reading from {self._host_error()}")
            return response

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if not self.is_connected:
                # Connecting has its own limit, socket_connect_timeout, as in redis-py.
                await self.connect_check_health(check_health=False)
            watchdog = self._toast_watchdog
            self._toast_sending = True
            self._toast_expired = False
            watchdog.watch(self)
            try:
                await super().send_packed_command(command, check_health)
            except RedisConnectionError:
                if self._toast_expired:
                    raise RedisTimeoutError("Timeout writing to socket") from None
                raise
            finally:
                self._toast_sending = False
                watchdog.unwatch(self)
            if self._toast_expired:
                # The abort can also end a drain quietly: the send did not finish all the same.
                await self.disconnect(nowait=True)
                raise RedisTimeoutError("Timeout writing to socket")

    WatchedConnection.__name__ = WatchedConnection.__qualname__ = f"Watched{base.__name__}"
    return WatchedConnection
