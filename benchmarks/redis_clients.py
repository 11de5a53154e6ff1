"""Redis clients compared on single awaited commands: `python benchmarks/redis_clients.py [rounds]`.

The numbers behind "Why redis-py" in docs/backends/redis.md. Run it in a throwaway virtualenv
holding the candidates (`pip install redis hiredis valkey-glide coredis`), against the Redis on
127.0.0.1:6379: a SET then a GET of one envelope, 500 pairs per client per round, the clients
interleaved round by round. Prints the median wall and CPU time per command. A client that is
not installed is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import importlib.util
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

VALUE = (
    b'{"data":{"id":1,"name":"abcdefghij","score":1.5,"active":true,"tags":["a","b"],"count":42,'
    b'"ratio":0.25,"note":"lorem ipsum","level":3,"code":"X-1"},"schema_version":1,'
    b'"created_at":"2026-11-27T12:00:00.123456Z","updated_at":"2026-11-27T12:00:00.123456Z"}'
)
KEY = b"clientbench:Model:0b7c1d3e-0000-4000-8000-000000000001"
PAIRS = 500
HOST, PORT = "127.0.0.1", 6379

Command = Callable[..., Awaitable[Any]]


class Floor(asyncio.Protocol):
    """No client at all: RESP written by hand, replies parsed by hiredis, one command at a time."""

    def __init__(self) -> None:
        self._reader: Any = importlib.import_module("hiredis").Reader()
        self._waiter: asyncio.Future[Any] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        reply = self._reader.gets()
        if reply is not False and self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.set_result(reply)

    async def call(self, *args: bytes) -> Any:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        parts = b"".join(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)
        self._transport.write(b"*%d\r\n%b" % (len(args), parts))
        return await self._waiter


def _version(package: str) -> str:
    return importlib.metadata.version(package)


async def _clients(stack: contextlib.AsyncExitStack) -> dict[str, tuple[Command, Command]]:
    """(set, get) per client."""
    made: dict[str, tuple[Command, Command]] = {}
    try:
        redis_asyncio: Any = importlib.import_module("redis.asyncio")
        parsers: Any = importlib.import_module("redis._parsers")
    except ImportError:
        pass
    else:
        hiredis = "hiredis" if importlib.util.find_spec("hiredis") else "no hiredis"
        name = f"redis-py {_version('redis')} ({hiredis})"
        for label, kwargs in (
            ("socket_timeout=5", {"socket_timeout": 5}),
            ("socket_timeout=None", {"socket_timeout": None}),
            ("pure-Python parser, socket_timeout=None", {"parser_class": parsers._AsyncRESP2Parser}),
        ):
            pool = redis_asyncio.ConnectionPool(host=HOST, port=PORT, protocol=2, **kwargs)
            client = redis_asyncio.Redis.from_pool(pool)
            made[f"{name}, {label}"] = (client.set, client.get)
    try:
        coredis: Any = importlib.import_module("coredis")
    except ImportError:
        pass
    else:
        client = await stack.enter_async_context(coredis.Redis(host=HOST, port=PORT, decode_responses=False))
        made[f"coredis {_version('coredis')}"] = (client.set, client.get)
    try:
        glide: Any = importlib.import_module("glide")
    except ImportError:
        pass
    else:
        configuration = glide.GlideClientConfiguration([glide.NodeAddress(HOST, PORT)])
        client = await glide.GlideClient.create(configuration)
        made[f"valkey-glide {_version('valkey-glide')}"] = (client.set, client.get)
    if importlib.util.find_spec("hiredis"):
        _, floor = await asyncio.get_running_loop().create_connection(Floor, HOST, PORT)
        made["floor: asyncio protocol + hiredis"] = (
            lambda key, value: floor.call(b"SET", key, value),
            lambda key: floor.call(b"GET", key),
        )
    return made


async def _pairs(set_: Command, get: Command) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(PAIRS):
        await set_(KEY, VALUE)
        await get(KEY)
    commands = 2 * PAIRS
    return (time.perf_counter() - wall) / commands * 1e6, (time.process_time() - cpu) / commands * 1e6


async def main(rounds: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        await _measure(await _clients(stack), rounds)


async def _measure(clients: dict[str, tuple[Command, Command]], rounds: int) -> None:
    for set_, get in clients.values():
        await _pairs(set_, get)  # warm-up: connections open, code paths loaded
    walls: dict[str, list[float]] = {name: [] for name in clients}
    cpus: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(rounds):
        for name, (set_, get) in clients.items():
            wall, cpu = await _pairs(set_, get)
            walls[name].append(wall)
            cpus[name].append(cpu)
    for name in clients:
        print(
            f"{name:60} wall {statistics.median(walls[name]):6.1f} µs  "
            f"cpu {statistics.median(cpus[name]):6.1f} µs per command"
        )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9))
