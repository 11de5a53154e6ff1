"""The Redis Cluster backend: redis+cluster:// and rediss+cluster://."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, cast

from ..base import (
    RevisionConflict,
    StoredRecord,
    check_revision,
)
from ._base import _RedisBase
from ._config import RedisClusterOptions
from ._scripts import _CHECKED_WRITE, _conflicts_of, _script_arguments
from ._values import _BINARY_HEAD, _HEAD_BYTES, _TAIL_BYTES, _check_mark, _found_revision

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster


class RedisClusterBackend(_RedisBase):
    """`redis+cluster://` and `rediss+cluster://`: a Redis Cluster through redis-py's cluster client.

    Keys are spread over the slots by their whole name (no hash tag), so records of one class
    are spread over every master. Batches are split per slot and sent as one pipeline per node,
    the nodes in parallel: never a multi-key command across slots.
    """

    _cluster = True
    _label = "Redis Cluster"
    # Its TLS URLs take RedisClusterTLSOptions (check_url picks by scheme).
    options_model = RedisClusterOptions

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._client: RedisCluster | None = None

    async def connect(self) -> None:
        if self._client is not None:
            return
        self._load_driver()
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        kwargs = self._client_kwargs()
        if self._settings.tls is not None:
            kwargs["ssl"] = True
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._settings.nodes],
            max_connections=self._settings.options.max_connections,
            **kwargs,
        )
        try:
            # Learns the slot map now: a cluster that cannot serve every slot fails here, clearly.
            await self._guard("connect", client.initialize())
        except BaseException:
            await self._close(client)
            raise
        self._client = client
        await self._check_eviction()

    async def _memory_configs(self) -> list[tuple[str, dict[Any, Any]]]:
        client = self._require()
        primaries = sorted(client.get_primaries(), key=lambda node: node.name)
        configs = await asyncio.gather(
            *(client.config_get("maxmemory*", target_nodes=node) for node in primaries)
        )
        return [
            (f"cluster node {node.name}", config) for node, config in zip(primaries, configs, strict=True)
        ]

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._close(client)

    async def _close(self, client: RedisCluster) -> None:
        # A node that is already gone needs no goodbye.
        with contextlib.suppress(*self._driver_errors):
            await client.aclose()

    def _require(self) -> RedisCluster:
        return cast("RedisCluster", self._client_or_raise())

    def _pipeline(self) -> Any:
        # Routes each command by its key's slot: one request per node, the nodes concurrently.
        return self._require().pipeline()

    async def _get_many(self, names: list[bytes]) -> list[bytes | None]:
        from redis.crc import key_slot

        # One MGET per slot (a multi-key command must stay inside one slot), all in one
        # cluster pipeline.
        by_slot: dict[int, list[int]] = {}
        for index, name in enumerate(names):
            by_slot.setdefault(key_slot(name), []).append(index)
        pipe = self._pipeline()
        for indexes in by_slot.values():
            pipe.execute_command("MGET", *(names[index] for index in indexes))
        replies: list[list[bytes | None]] = await self._guard("load", pipe.execute())
        values: list[bytes | None] = [None] * len(names)
        for indexes, reply in zip(by_slot.values(), replies, strict=True):
            for index, value in zip(indexes, reply, strict=True):
                values[index] = value
        return values

    async def _write_checked(
        self, records: list[StoredRecord], writes: list[tuple[bytes, bytes, int | None]]
    ) -> list[RevisionConflict]:
        """A script may only touch keys of one slot, so a batch cannot be checked and written in
        one step. First every checked key's revision is read (one pipeline): a conflict found then
        writes nothing. Then one script per slot checks its keys again and writes them: only a
        writer that changes a record between the two steps can leave the other slots' records
        written and this batch's conflict reported."""
        from redis.crc import key_slot

        checked = [index for index, record in enumerate(records) if record.revision is not None]
        pipe = self._pipeline()
        for index in checked:
            # Both ends: which one holds the mark depends on the stored value's form.
            pipe.getrange(writes[index][0], 0, _HEAD_BYTES - 1)
            pipe.getrange(writes[index][0], -_TAIL_BYTES, -1)
        ends: list[bytes] = await self._guard("save", pipe.execute())
        marks = [
            head if head.startswith(_BINARY_HEAD) else tail
            for head, tail in zip(ends[::2], ends[1::2], strict=True)
        ]
        early = [
            conflict
            for index, mark in zip(checked, marks, strict=True)
            if (conflict := check_revision(records[index], _found_revision(mark))) is not None
            and mark != _check_mark(writes[index][1])
        ]
        if early:
            return early
        by_slot: dict[int, list[int]] = {}
        for index, (key, _, _) in enumerate(writes):
            by_slot.setdefault(key_slot(key), []).append(index)
        client = self._require()

        async def run(indexes: list[int]) -> list[RevisionConflict]:
            part = [records[index] for index in indexes]
            part_writes = [writes[index] for index in indexes]
            keys = [key for key, _, _ in part_writes]
            reply = await self._guard(
                "save", client.eval(_CHECKED_WRITE, len(keys), *keys, *_script_arguments(part, part_writes))
            )
            return _conflicts_of(part, reply)

        results = await asyncio.gather(
            *(run(indexes) for indexes in by_slot.values()), return_exceptions=True
        )
        conflicts: list[RevisionConflict] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            conflicts.extend(result)
        return conflicts

    async def _scan_nodes(self) -> list[Any]:
        return sorted(self._require().get_primaries(), key=lambda node: node.name)

    async def _scan_step(self, node: Any, cursor: int, pattern: bytes, count: int) -> tuple[int, list[bytes]]:
        cursors, names = await self._guard(
            "scan", self._require().scan(cursor, match=pattern, count=count, target_nodes=node)
        )
        return int(cursors[node.name]), names
