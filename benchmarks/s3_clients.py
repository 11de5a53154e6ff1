"""obstore vs aiobotocore on one S3 API server: the measurement behind docs/backends/s3.md.

Usage: python benchmarks/s3_clients.py --endpoint http://127.0.0.1:PORT --bucket NAME [--n 1000]
(credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). Each client puts and gets the same
~1 KB JSON objects, one request at a time and then `--concurrency` at a time; wall time and this
process's CPU time (the client's own cost, whatever the server's speed) are printed per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

BODY = json.dumps({"data": {"name": "x" * 900, "n": 1}, "schema_version": 1}).encode()


async def _timed(label: str, work: Callable[[], Awaitable[None]]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    await work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  {label:<28} wall {wall:7.3f} s   client CPU {cpu:7.3f} s")


async def _gather(n: int, limit: int, one: Callable[[int], Awaitable[Any]]) -> None:
    gate = asyncio.Semaphore(limit)

    async def bounded(i: int) -> None:
        async with gate:
            await one(i)

    await asyncio.gather(*(bounded(i) for i in range(n)))


async def obstore_run(endpoint: str, bucket: str, n: int, concurrency: int) -> None:
    import obstore
    from obstore.store import S3Store

    store = S3Store(bucket, endpoint=endpoint, region="us-east-1", client_options={"allow_http": True})

    async def put(i: int) -> None:
        await obstore.put_async(store, f"obstore/{i}.json", BODY)

    async def get(i: int) -> None:
        result = await obstore.get_async(store, f"obstore/{i}.json")
        await result.bytes_async()

    async def sequential(op: Callable[[int], Awaitable[None]]) -> None:
        for i in range(n // 5):
            await op(i)

    print("obstore")
    await _timed(f"{n // 5} puts, one at a time", lambda: sequential(put))
    await _timed(f"{n // 5} gets, one at a time", lambda: sequential(get))
    await _timed(f"{n} puts, {concurrency} at a time", lambda: _gather(n, concurrency, put))
    await _timed(f"{n} gets, {concurrency} at a time", lambda: _gather(n, concurrency, get))


async def aiobotocore_run(endpoint: str, bucket: str, n: int, concurrency: int) -> None:
    # Imported by name: aiobotocore is not a dependency of the project (this script alone uses it).
    aio_config: Any = importlib.import_module("aiobotocore.config")
    aio_session: Any = importlib.import_module("aiobotocore.session")

    config = aio_config.AioConfig(max_pool_connections=concurrency)
    async with aio_session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config
    ) as client:

        async def put(i: int) -> None:
            await client.put_object(Bucket=bucket, Key=f"botocore/{i}.json", Body=BODY)

        async def get(i: int) -> None:
            response = await client.get_object(Bucket=bucket, Key=f"botocore/{i}.json")
            async with response["Body"] as stream:
                await stream.read()

        async def sequential(op: Callable[[int], Awaitable[None]]) -> None:
            for i in range(n // 5):
                await op(i)

        print("aiobotocore")
        await _timed(f"{n // 5} puts, one at a time", lambda: sequential(put))
        await _timed(f"{n // 5} gets, one at a time", lambda: sequential(get))
        await _timed(f"{n} puts, {concurrency} at a time", lambda: _gather(n, concurrency, put))
        await _timed(f"{n} gets, {concurrency} at a time", lambda: _gather(n, concurrency, get))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("AWS_REGION", "us-east-1")
    for _ in range(args.rounds):
        asyncio.run(obstore_run(args.endpoint, args.bucket, args.n, args.concurrency))
        asyncio.run(aiobotocore_run(args.endpoint, args.bucket, args.n, args.concurrency))


if __name__ == "__main__":
    main()
