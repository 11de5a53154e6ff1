"""Single-record saves and loads of the sync API through redis-py's sync client, in the caller's thread.

A sync call (`model_dump()`, `save_sync`, ...) otherwise hands its work to the library's I/O
thread (`_bridge.py`) and waits: ~50 µs of thread wake-ups and task machinery per call, more than
the SET itself. For one record on one server, redis-py's own sync client does the same command
in the calling thread. `DirectRedis` is that client for one URL and process: it takes its
settings, keys, envelopes, error messages and eviction check from `RedisBackend` (an instance
that is never connected), and its retries from `_retry`, so both paths store the same bytes and
fail the same way.

The model's `timeout` bounds the whole call as `runtime.execute` does on the async path: the
call's deadline, kept per thread, lowers the socket timeout of every connect, send and read that
would otherwise outlast it, stops retries and backoff sleeps at it, and is then reported as the
same timeout error. Which calls take this path is decided in `pydantic_toast._direct`.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn, cast
from uuid import UUID

from ... import forksafe, observability
from ..._backend_errors import timed_out
from ..._stats import counters_for
from .._errors import raise_unchained
from ._retry import _sync_retry
from ._values import _decode
from .single import RedisBackend

if TYPE_CHECKING:
    from ...url import StorageURL
    from ..base import StoredRecord

__all__ = ["DirectRedis"]

# A socket timeout is never set below this: zero would make the socket non-blocking, and a wait
# that short fails at once as the timeout it is.
_SHORTEST_WAIT = 0.001


class _Deadline(threading.local):
    at = math.inf  # time.monotonic() by which the thread's running call must be done


_deadline = _Deadline()


def _time_left() -> float:
    return _deadline.at - time.monotonic()


class DirectRedis:
    """redis-py's sync client for one single-server URL: one connection pool, made on first use."""

    def __init__(self, url: StorageURL) -> None:
        self._url = url
        backend = self._backend = RedisBackend(url.raw)
        self.serves: type[RedisBackend] = RedisBackend
        backend.stats = counters_for(url)
        backend._load_driver()
        self._lock = forksafe.Lock()
        self._client: Any = None  # a redis.Redis, whose methods redis-py leaves untyped
        # The async backend's bound on commands in flight (max_connections), for this pool: one
        # token per command. A C-level queue, the cheapest blocking wait with a timeout; a child
        # never sees it (`_direct` drops its parent's clients).
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(backend._settings.options.max_connections):
            self._slots.put(None)

    def __repr__(self) -> str:
        return f"DirectRedis({self._backend._settings.shown!r})"

    def save(self, record: StoredRecord, seconds: float) -> None:
        """`save_records([record])` of the async backend, within `seconds`."""
        backend = self._backend
        [(key, value, expiry)] = backend._writes([record])
        command = ("SET", key, value) if expiry is None else ("SET", key, value, "PX", expiry)
        self._call("save", seconds, command)
        backend.stats.add(written=1)

    def load(self, id: UUID, class_name: str, seconds: float) -> StoredRecord | None:
        """`load_records([(id, class_name)])[0]` of the async backend, within `seconds`."""
        backend = self._backend
        key = backend.key(id, class_name)
        value = cast("bytes | None", self._call("load", seconds, ("GET", key)))
        backend.stats.add(read=value is not None)
        return None if value is None else _decode(id, class_name, value, key)

    def close(self) -> None:
        """Disconnect the pool; the next call connects (and checks the eviction policy) again."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.connection_pool.disconnect()

    def _call(self, action: str, seconds: float, command: tuple[Any, ...]) -> Any:
        started = time.monotonic()
        deadline = _deadline.at = started + seconds
        try:
            try:
                self._slots.get(timeout=seconds)
            except queue.Empty:
                raise timed_out(self._url, seconds) from None
            try:
                client = self._client or self._connect(deadline, seconds)
                reply = client.execute_command(*command)
            finally:
                self._slots.put(None)
        except self._backend._driver_errors as exc:
            self._raise(action, exc, deadline, seconds)
        finally:
            _deadline.at = math.inf
        # runtime.execute's check when nobody listens (a listener keeps calls off this path).
        if (slow := observability.slow_seconds) is not None and time.monotonic() - started >= slow:
            observability.warn_slow(self._url, time.monotonic() - started)
        return reply

    def _raise(self, action: str, exc: BaseException, deadline: float, seconds: float) -> NoReturn:
        if time.monotonic() >= deadline:
            raise_unchained(timed_out(self._url, seconds))
        raise_unchained(self._backend._failure(action, exc))

    def _connect(self, deadline: float, seconds: float) -> Any:
        """The pool's client, after the eviction check `RedisBackend.connect` makes, as the first
        use of a connection (whose failure is the connect's, as there)."""
        # Another thread may be connecting: wait for it no longer than this call may take.
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise timed_out(self._url, seconds)
        try:
            if self._client is not None:
                return self._client
            backend = self._backend
            client = _client(backend)
            checked_by = min(deadline, time.monotonic() + backend._eviction_check_seconds())
            _deadline.at = checked_by
            try:
                configs = client.config_get("maxmemory*")
            except backend._driver_errors as exc:
                client.connection_pool.disconnect()
                if time.monotonic() >= deadline:
                    raise_unchained(timed_out(self._url, seconds))
                # The check's own limit, as `asyncio.timeout` reports it on the async path.
                failure = backend._eviction_check_failed(
                    TimeoutError() if time.monotonic() >= checked_by else exc
                )
                if failure is not None:
                    raise_unchained(failure)
            else:
                backend._note_memory_configs([(backend._settings.where, configs)])
            finally:
                _deadline.at = deadline
            self._client = client
            return client
        finally:
            self._lock.release()


def _client(backend: RedisBackend) -> Any:
    import redis

    settings = backend._settings
    kwargs = backend._client_kwargs()
    kwargs["retry"] = _sync_retry(settings.options.retries, _time_left)
    kwargs["db"] = settings.db
    connection_class: type[Any]
    if settings.kind == "unix":
        kwargs["path"] = settings.socket_path
        connection_class = redis.UnixDomainSocketConnection
    else:
        kwargs["host"], kwargs["port"] = settings.nodes[0]
        connection_class = redis.Connection if settings.tls is None else redis.SSLConnection
    pool = redis.ConnectionPool(connection_class=_bounded_class(connection_class), **kwargs)
    return redis.Redis(connection_pool=pool)


_classes: dict[type[Any], type[Any]] = {}


def _bounded_class(base: type[Any]) -> type[Any]:
    made = _classes.get(base)
    if made is None:
        made = _classes[base] = _bounded(base)
    return made


def _bounded(base: type[Any]) -> type[Any]:
    """`base` (redis-py's sync TCP, TLS or Unix socket connection) with every wait on the server
    cut short at the running call's deadline; without one, it is redis-py's own connection."""

    class BoundedConnection(base):  # type: ignore[misc]
        def _connect(self) -> Any:
            left = _time_left()
            connect: float = getattr(self, "socket_connect_timeout")  # noqa: B009 - untyped in redis-py
            reply: float = getattr(self, "socket_timeout")  # noqa: B009
            if left < connect or left < reply:
                # The TLS handshake runs with the reply timeout, set here for the socket too.
                self.socket_connect_timeout = max(min(connect, left), _SHORTEST_WAIT)
                self.socket_timeout = max(min(reply, left), _SHORTEST_WAIT)
            try:
                return super()._connect()
            finally:
                self.socket_connect_timeout, self.socket_timeout = connect, reply

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if self._sock is None:
                self.connect_check_health(check_health=False)
            sock = self._sock
            left = _time_left()
            if sock is None or left >= self.socket_timeout:
                super().send_packed_command(command, check_health)
                return
            sock.settimeout(max(left, _SHORTEST_WAIT))
            try:
                super().send_packed_command(command, check_health)
            finally:
                if self._sock is sock:  # still connected: a failed send disconnects
                    sock.settimeout(self.socket_timeout)

        def read_response(self, disable_decoding: bool = False, **kwargs: Any) -> Any:
            if "timeout" not in kwargs:
                left = _time_left()
                if left < self.socket_timeout:
                    kwargs["timeout"] = max(left, _SHORTEST_WAIT)
            return super().read_response(disable_decoding, **kwargs)

    BoundedConnection.__name__ = BoundedConnection.__qualname__ = f"Bounded{base.__name__}"
    return BoundedConnection
