"""Count the CPU instructions of one pydantic-toast operation on memory:// with callgrind.

    python benchmarks/count_instructions.py nested_load [--calls 10] [--no-gc] [--backend sqlite]

Instruction counts are stable on a shared, loaded machine where wall time is not: the count is
the library's own work plus pydantic's, with no I/O (memory://). The operation runs `--calls`
times inside one `functools.reduce` call, and callgrind counts only inside it
(`--toggle-collect=functools_reduce`), so setup and interpreter start-up are left out. Needs
valgrind. `--no-gc` disables the garbage collector around the counted calls (after one
`gc.collect()`), to tell the collector's share.

Operations: load (10 fields), load_many (1,000 records of 10 fields), flat101 (`load_many` of 101
children), nested_load (a parent with 100 external children), new_save_many (building 1,000 new
models of 10 fields and `save_many` of them), save_many (1,000 records of 10 fields, written
again each call), and baseline_save_many (the hand-written `save_many` of baselines.py on the
same records), baseline_load_many (the hand-written `load_many`, with validation),
baseline_fetch_many (the hand-written `load_many`'s fetch alone: its rows, not validated),
records_load_many (the backend layer alone: `load_records` of the same 1,000 keys) and
records_save_many (the backend layer alone: `save_records` of 1,000 ten-field records): these five
compare the backend with code a user writes, with `--backend sqlite` (or `postgresql`, all but
records_save_many); and sync_dump (a sync `model_dump()` of a changed 10-field model inside the
running loop).

`--backend sqlite` runs against a SQLite file in a temporary directory instead of memory://: the
count then includes the writer thread's work (sqlite3's parameter binding, SQLite itself), since
callgrind counts every thread while collection is on. `--backend redis` (TOAST_TEST_REDIS_URL or
127.0.0.1:6379) is counted the same way: the client's CPU work in every thread (the library's I/O
thread included), not the server's nor the time spent waiting.

`--backend postgresql` runs against `TOAST_TEST_POSTGRES_URL` (else the server on
127.0.0.1:5432, database `test`) in tables of its own, dropped afterwards. asyncpg runs on the
loop's thread, so only the client process is counted, never the server's work. It adds save
(10 fields), save100 and load100 (100 fields), concurrent (50 saves and 50 loads gathered),
records_load_many (the backend's `load_records` of the 1,000 keys alone, no models built), and
the hand-written twins from baselines.py: baseline_save, baseline_load, baseline_save100,
baseline_load100, baseline_load_many, baseline_concurrent, and baseline_fetch_many (its
`load_many` query alone, no models built).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

from baselines import PostgresBaseline, SQLiteBaseline
from bench_models import FLAT10, WIDE100, model_set, values_for

from pydantic_toast import runtime
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.backends.postgresql import PostgreSQLBackend
from pydantic_toast.url import StorageURL

OPERATIONS = (
    "load",
    "load_many",
    "flat101",
    "nested_load",
    "new_save_many",
    "save_many",
    "baseline_save_many",
    "sync_dump",
    "baseline_load_many",
    "baseline_fetch_many",
    "records_load_many",
    "records_save_many",
)
_SQLITE_ONLY = (
    "baseline_save_many",
    "baseline_load_many",
    "baseline_fetch_many",
    "records_load_many",
    "records_save_many",
)
POSTGRESQL_OPERATIONS = (
    "save",
    "save100",
    "load100",
    "concurrent",
    "records_load_many",
    "baseline_save",
    "baseline_load",
    "baseline_save100",
    "baseline_load100",
    "baseline_load_many",
    "baseline_concurrent",
    "baseline_fetch_many",
)
BACKENDS = ("memory", "sqlite", "redis", "postgresql")
_REDIS_URL = os.environ.get("TOAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_REDIS_PREFIX = f"count_{uuid4().hex[:8]}"
POSTGRESQL_URL = os.environ.get("TOAST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _operation(
    name: str, backend: str, directory: str, cleanup: list[Callable[[], Coroutine[Any, Any, object]]]
) -> Callable[[], Awaitable[object]]:
    if backend == "postgresql":
        return await _postgresql_operation(name, cleanup)
    if name in POSTGRESQL_OPERATIONS and name not in OPERATIONS:
        raise SystemExit(f"{name} runs with --backend postgresql")
    if backend == "redis":
        cleanup.append(_drop_redis_keys)
    urls = {
        "memory": "memory://count-instructions",
        "sqlite": f"sqlite:///{directory}/count.db",
        "redis": f"{_REDIS_URL}?prefix={_REDIS_PREFIX}",
    }
    url = urls[backend]
    models = model_set(url)
    flat10, child = models.flat10, models.child
    reference = await flat10(**values_for(FLAT10, 1)).save()
    references = await flat10.save_many([flat10(**values_for(FLAT10, seed)) for seed in range(1000)])
    children = [child(name=f"child {n}", value=n, tags=["a", "b"]) for n in range(101)]
    flat_references = await child.save_many(children)
    parent_reference = await models.parent(title="parent", children=children[:100]).save()
    rows = [values_for(FLAT10, seed) for seed in range(1000)]
    batch = [flat10(**values_for(FLAT10, seed)) for seed in range(1000)]
    baseline = SQLiteBaseline(f"{directory}/baseline.db", "baseline")
    items = [(uuid4(), models.plain_flat10(**values_for(FLAT10, seed))) for seed in range(1000)]
    ids = [id for id, _ in items]
    if name in _SQLITE_ONLY:
        if backend != "sqlite":
            raise SystemExit(f"{name} runs with --backend sqlite")
        await baseline.start()
        await baseline.save_many(items)
    storage = await runtime.get_backend(StorageURL.parse(url))
    keys = [(reference.id, reference.class_name) for reference in references]
    now = datetime.now(UTC)
    records = [
        StoredRecord(id, "PlainRecord", model.model_dump_json().encode(), 1, now, now) for id, model in items
    ]

    class RowsAsTheyCome:
        """The plain model's name, for the baseline's class filter, and no validation: what its
        `load_many` gives back is then its fetch alone."""

        @staticmethod
        def model_validate_json(data: str) -> str:
            return data

    RowsAsTheyCome.__name__ = models.plain_flat10.__name__
    changed = flat10(**values_for(FLAT10, 2))

    async def sync_dump() -> object:
        changed.visits += 1  # type: ignore[attr-defined]
        return changed.model_dump()  # a sync call inside the running loop

    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "load": lambda: flat10.load(reference),
        "load_many": lambda: flat10.load_many(references),
        "flat101": lambda: child.load_many(flat_references),
        "nested_load": lambda: models.parent.load(parent_reference),
        # Building the models is counted too: where a new model's record state is made.
        "new_save_many": lambda: flat10.save_many([flat10(**row) for row in rows]),
        "save_many": lambda: flat10.save_many(batch),
        "baseline_save_many": lambda: baseline.save_many(items),
        "sync_dump": sync_dump,
        "baseline_load_many": lambda: baseline.load_many(ids, models.plain_flat10),
        "baseline_fetch_many": lambda: baseline.load_many(ids, RowsAsTheyCome),  # type: ignore[type-var]
        "records_load_many": lambda: storage.load_records(keys),
        "records_save_many": lambda: storage.save_records(records),
    }
    call = operations[name]
    for _ in range(5):  # warm: validators built, caches filled
        await call()
    return call


async def _postgresql_operation(
    name: str, cleanup: list[Callable[[], Coroutine[Any, Any, object]]]
) -> Callable[[], Awaitable[object]]:
    table = f"count_{uuid4().hex[:12]}"
    url = f"{POSTGRESQL_URL}{'&' if '?' in POSTGRESQL_URL else '?'}table={table}"
    models = model_set(url)
    flat10, wide100 = models.flat10, models.wide100
    plain_flat10, plain_wide100 = models.plain_flat10, models.plain_wide100
    baseline = PostgresBaseline(POSTGRESQL_URL, f"{table}_baseline")
    await baseline.start()
    backend = PostgreSQLBackend(url)
    await backend.connect()

    async def drop() -> None:
        await baseline.drop()
        await baseline.close()
        await backend._pool.execute(f'DROP TABLE IF EXISTS "{table}"')
        await backend.disconnect()

    cleanup.append(drop)
    model, wide = flat10(**values_for(FLAT10, 1)), wide100(**values_for(WIDE100, 1))
    reference, wide_reference = await model.save(), await wide.save()
    plain, plain_wide = plain_flat10(**values_for(FLAT10, 1)), plain_wide100(**values_for(WIDE100, 1))
    plain_id, plain_wide_id = uuid4(), uuid4()
    await baseline.save(plain_id, plain)
    await baseline.save(plain_wide_id, plain_wide)
    references = await flat10.save_many([flat10(**values_for(FLAT10, seed)) for seed in range(1000)])
    keys = [(r.id, r.class_name) for r in references]
    batch = [flat10(**values_for(FLAT10, seed)) for seed in range(1000)]
    items = [(uuid4(), plain_flat10(**values_for(FLAT10, seed))) for seed in range(1000)]
    await baseline.save_many(items)
    ids = [id for id, _ in items]
    writers = [flat10(**values_for(FLAT10, seed)) for seed in range(50)]
    readers = [await flat10(**values_for(FLAT10, seed)).save() for seed in range(50)]
    plain_writers = [(uuid4(), plain_flat10(**values_for(FLAT10, seed))) for seed in range(50)]
    plain_readers = [uuid4() for _ in range(50)]
    for id in plain_readers:
        await baseline.save(id, plain)

    async def concurrent() -> None:
        await asyncio.gather(*(w.save() for w in writers), *(flat10.load(r) for r in readers))

    async def baseline_concurrent() -> None:
        await asyncio.gather(
            *(baseline.save(id, m) for id, m in plain_writers),
            *(baseline.load(id, plain_flat10) for id in plain_readers),
        )

    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "save": model.save,
        "load": lambda: flat10.load(reference),
        "save100": wide.save,
        "load100": lambda: wide100.load(wide_reference),
        "load_many": lambda: flat10.load_many(references),
        "save_many": lambda: flat10.save_many(batch),
        "concurrent": concurrent,
        "records_load_many": lambda: backend.load_records(keys),
        "baseline_save": lambda: baseline.save(plain_id, plain),
        "baseline_load": lambda: baseline.load(plain_id, plain_flat10),
        "baseline_save100": lambda: baseline.save(plain_wide_id, plain_wide),
        "baseline_load100": lambda: baseline.load(plain_wide_id, plain_wide100),
        "baseline_save_many": lambda: baseline.save_many(items),
        "baseline_load_many": lambda: baseline.load_many(ids, plain_flat10),
        "baseline_concurrent": baseline_concurrent,
        "baseline_fetch_many": lambda: baseline._pool.fetch(baseline._load_many, ids),
    }
    if name not in operations:
        raise SystemExit(f"{name} has no PostgreSQL form")
    call = operations[name]
    for _ in range(5):  # warm: validators built, statements prepared, caches filled
        await call()
    return call


async def _drop_redis_keys() -> None:
    import redis

    client = redis.Redis.from_url(_REDIS_URL)
    for key in client.scan_iter(match=f"{_REDIS_PREFIX}:*", count=1000):
        client.delete(key)
    client.close()


def measured(name: str, calls: int, no_gc: bool, backend: str) -> None:
    """Run under callgrind: `calls` operations inside one functools.reduce call."""
    cleanup: list[Callable[[], Coroutine[Any, Any, object]]] = []
    with asyncio.Runner() as runner, tempfile.TemporaryDirectory() as directory:
        try:
            call = runner.run(_operation(name, backend, directory, cleanup))

            async def repeat() -> None:
                for _ in range(calls):
                    await call()

            gc.collect()
            if no_gc:
                gc.disable()
            functools.reduce(lambda _, __: runner.run(repeat()), [0], None)
            gc.enable()
        finally:
            for step in cleanup:
                runner.run(step())


def count(name: str, calls: int, no_gc: bool, backend: str) -> int:
    """Instructions per operation, from a callgrind run of this script.

    Callgrind's collection toggle is per thread, and SQLite's work runs on the backend's writer
    thread: with `--backend sqlite` the whole process is counted twice, with `calls` operations
    and with none (the same set-up and warm-up), and the difference is theirs.
    """
    if backend in ("memory", "postgresql"):
        return _callgrind(name, calls, no_gc, backend, toggle=True) // calls
    with_calls = _callgrind(name, calls, no_gc, backend, toggle=False)
    return (with_calls - _callgrind(name, 0, no_gc, backend, toggle=False)) // calls


def _callgrind(name: str, calls: int, no_gc: bool, backend: str, *, toggle: bool) -> int:
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            *(["--toggle-collect=functools_reduce"] if toggle else []),
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--measured",
            name,
            "--calls",
            str(calls),
            *(["--no-gc"] if no_gc else []),
            "--backend",
            backend,
        ]
        environment = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(command, check=True, env=environment, capture_output=True)
        totals = re.search(r"^(?:totals|summary): (\d+)", out.read_text(), re.MULTILINE)
        if totals is None:
            raise SystemExit("callgrind wrote no totals")
        return int(totals.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("operation", choices=OPERATIONS + POSTGRESQL_OPERATIONS)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--no-gc", action="store_true", help="garbage collector off while counting")
    parser.add_argument("--backend", choices=BACKENDS, default="memory")
    parser.add_argument("--measured", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measured:
        measured(args.operation, args.calls, args.no_gc, args.backend)
    else:
        instructions = count(args.operation, args.calls, args.no_gc, args.backend)
        gc_note = ", GC off" if args.no_gc else ""
        print(f"{args.operation} ({args.backend}): {instructions:,} instructions per call{gc_note}")


if __name__ == "__main__":
    main()
