"""The single-server Redis backend: redis://, rediss:// and unix://."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, cast

from ._base import _RedisBase
from ._config import RedisOptions
from ._timeouts import Watchdog, watched_class

if TYPE_CHECKING:
    from redis.asyncio import Redis

# The most value bytes one MSET carries: the server runs a command alone and buffers it whole
# (a command above its client-query-buffer-limit, 1 GB by default, closes the connection), so
# a batch of large values goes as several, in one pipeline all the same.
_MSET_BYTES = 8 * 1024 * 1024


class RedisBackend(_RedisBase):
    """`redis://`, `rediss://` and `unix://`: one server, one connection pool per backend instance."""

    # Its TLS URLs take RedisTLSOptions (check_url picks by scheme).
    options_model = RedisOptions

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._client: Redis | None = None
        self._watchdog: Watchdog | None = None

    async def connect(self) -> None:
        if self._client is not None:
            return
        self._load_driver()
        from redis.asyncio import Connection, ConnectionPool, Redis, SSLConnection
        from redis.asyncio.connection import UnixDomainSocketConnection

        settings = self._settings
        kwargs = self._client_kwargs()
        kwargs["db"] = settings.db
        if settings.kind == "unix":
            kwargs["path"] = settings.socket_path
            connection_class: type[Connection | UnixDomainSocketConnection] = UnixDomainSocketConnection
        else:
            kwargs["host"], kwargs["port"] = settings.nodes[0]
            connection_class = Connection if settings.tls is None else SSLConnection
        # redis-py's per-command timers off, the same limit enforced by one timer (_timeouts).
        self._watchdog = Watchdog(kwargs.pop("socket_timeout"))
        # Bounded by the slots in _guard rather than by a BlockingConnectionPool, whose
        # condition variable costs more per command than a whole uncontended semaphore.
        pool = ConnectionPool(
            connection_class=watched_class(connection_class),
            socket_timeout=None,
            toast_watchdog=self._watchdog,
            **kwargs,
        )
        # The first connection opens for the eviction check, which reports an unreachable server
        # with the same retries and messages as any later command.
        self._client = Redis.from_pool(pool)
        await self._check_eviction()

    async def _memory_configs(self) -> list[tuple[str, dict[Any, Any]]]:
        return [(self._settings.where, await self._require().config_get("maxmemory*"))]

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # A connection that is already broken needs no goodbye.
            with contextlib.suppress(*self._driver_errors):
                await client.aclose()
        if self._watchdog is not None:
            self._watchdog.close()

    def _require(self) -> Redis:
        return cast("Redis", self._client_or_raise())

    def _pipeline(self) -> Any:
        return self._require().pipeline(transaction=False)

    async def _set_many(self, writes: list[tuple[bytes, bytes, int | None]]) -> None:
        """MSETs in one pipeline, in the batch's order: one command per run of records without
        expiry (a SET with PX for each other record). One command costs the client an eighth of
        the work of a SET per key (pack and parse once), and the server less too."""
        pipe = self._pipeline()
        pairs: list[bytes] = []
        size = 0
        for key, value, expiry in writes:
            if expiry is not None:
                if pairs:
                    pipe.execute_command("MSET", *pairs)
                    pairs, size = [], 0
                pipe.execute_command("SET", key, value, "PX", expiry)
                continue
            pairs.append(key)
            pairs.append(value)
            size += len(value)
            if size >= _MSET_BYTES:
                pipe.execute_command("MSET", *pairs)
                pairs, size = [], 0
        if pairs:
            pipe.execute_command("MSET", *pairs)
        await pipe.execute()

    async def _get_many(self, names: list[bytes]) -> list[bytes | None]:
        values: list[bytes | None] = await self._guard("load", self._require().mget(names))
        return values

    async def _scan_step(self, node: Any, cursor: int, pattern: bytes, count: int) -> tuple[int, list[bytes]]:
        next_cursor, names = await self._guard(
            "scan", self._require().scan(cursor, match=pattern, count=count)
        )
        return int(next_cursor), names
