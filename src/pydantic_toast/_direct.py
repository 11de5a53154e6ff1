"""Which sync calls skip the library's I/O thread: the one place that decides.

A sync call's single-record save on the built-in single-server Redis backend (redis://,
rediss://, unix://) runs in the calling thread (and so can a single-record load: `fetch_record`,
for the loading side to call) through redis-py's sync client
(`backends/redis/direct.py`): the same command, bytes, retries, limits and errors, without the
~50 µs hop to the I/O thread. Everything else takes `runtime.run_sync`: batches and trees of
records, checked writes (optimistic_concurrency), Redis Cluster, every other backend, a custom
backend registered for a Redis scheme, calls made while a log or trace listener is enabled
(`observability.enabled()`: its log line and span come from `runtime.execute`), calls made from
the I/O thread itself (refused there, as ever), and any URL when redis-py is not installed.

One client (one connection pool) per process and URL, made on first use. A forked child starts
without any: it never uses, nor closes, its parent's sockets.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import forksafe, observability
from .exceptions import MissingDependencyError, RecordNotFoundError
from .registry import backend_class, registered_backends

if TYPE_CHECKING:
    from ._settings import ModelSettings
    from .backends.base import StoredRecord
    from .backends.redis.direct import DirectRedis
    from .reference import ExternalReference
    from .url import StorageURL

__all__ = ["close", "fetch_record", "redis_client"]

_SCHEMES = frozenset({"redis", "rediss", "unix"})

_lock = forksafe.Lock()
# url.raw -> its client, or None for a URL that keeps the I/O thread's path.
_clients: dict[str, DirectRedis | None] = {}


def redis_client(url: StorageURL, in_io_thread: bool) -> DirectRedis | None:
    """The sync client serving `url` in this thread, or None when the call takes the I/O thread."""
    # The URL first: every sync call of every backend asks, and most URLs have no client.
    try:
        client = _clients[url.raw]
    except KeyError:
        client = _client_for(url)
    if client is None or in_io_thread or observability.enabled():
        return None
    # Registered over the built-in backend since: that backend serves the scheme now.
    if registered_backends.get(url.scheme) is not client.serves:
        return None
    return client


def _client_for(url: StorageURL) -> DirectRedis | None:
    client: DirectRedis | None = None
    if url.scheme in _SCHEMES:
        from .backends.redis import RedisBackend

        try:
            # A backend registered over the built-in one for this scheme serves it as ever.
            if backend_class(url.scheme) is RedisBackend:
                from .backends.redis.direct import DirectRedis

                client = DirectRedis(url)
        except MissingDependencyError:  # no redis-py: the I/O thread's path says so
            client = None
    with _lock:
        return _clients.setdefault(url.raw, client)


def fetch_record(
    settings: ModelSettings, reference: ExternalReference, in_io_thread: bool
) -> StoredRecord | None:
    """`_loading.fetch_record` in the calling thread, where `redis_client` allows; None when the
    fetch must take the I/O thread. Raises RecordNotFoundError for a missing record, as there."""
    client = redis_client(settings.url, in_io_thread)
    if client is None:
        return None
    record = client.load(reference.id, reference.class_name, settings.timeout)
    if record is None:
        raise RecordNotFoundError(reference.class_name, reference.id)
    return record


def close() -> None:
    """Disconnect every sync client; the next call connects again (`runtime.close`, `aclose`)."""
    with _lock:
        clients = [client for client in _clients.values() if client is not None]
        _clients.clear()
    for client in clients:
        client.close()


def _forget_after_fork() -> None:
    # The child's copies of the pools hold the parent's sockets: kept for good, never closed.
    if _clients:
        forksafe.keep_for_good(dict(_clients))
    _clients.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
