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
same records; `--backend sqlite` only), baseline_load_many (the hand-written `load_many`, with
validation), baseline_fetch_many (the hand-written `load_many`'s fetch alone: its rows, not
validated), records_load_many (the backend layer alone: `load_records` of the same 1,000 keys)
and records_save_many (the backend layer alone: `save_records` of 1,000 ten-field records); the
last four compare the backend with code a user writes (`--backend sqlite`).

`--backend sqlite` runs against a SQLite file in a temporary directory instead of memory://: the
count then includes the writer thread's work (sqlite3's parameter binding, SQLite itself), since
callgrind counts every thread while collection is on.
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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from baselines import SQLiteBaseline
from bench_models import FLAT10, model_set, values_for

from pydantic_toast import runtime
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.url import StorageURL

OPERATIONS = (
    "load",
    "load_many",
    "flat101",
    "nested_load",
    "new_save_many",
    "save_many",
    "baseline_save_many",
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
BACKENDS = ("memory", "sqlite")


async def _operation(name: str, backend: str, directory: str) -> Callable[[], Awaitable[object]]:
    url = "memory://count-instructions" if backend == "memory" else f"sqlite:///{directory}/count.db"
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
    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "load": lambda: flat10.load(reference),
        "load_many": lambda: flat10.load_many(references),
        "flat101": lambda: child.load_many(flat_references),
        "nested_load": lambda: models.parent.load(parent_reference),
        # Building the models is counted too: where a new model's record state is made.
        "new_save_many": lambda: flat10.save_many([flat10(**row) for row in rows]),
        "save_many": lambda: flat10.save_many(batch),
        "baseline_save_many": lambda: baseline.save_many(items),
        "baseline_load_many": lambda: baseline.load_many(ids, models.plain_flat10),
        "baseline_fetch_many": lambda: baseline.load_many(ids, RowsAsTheyCome),  # type: ignore[type-var]
        "records_load_many": lambda: storage.load_records(keys),
        "records_save_many": lambda: storage.save_records(records),
    }
    call = operations[name]
    for _ in range(5):  # warm: validators built, caches filled
        await call()
    return call


def measured(name: str, calls: int, no_gc: bool, backend: str) -> None:
    """Run under callgrind: `calls` operations inside one functools.reduce call."""
    with asyncio.Runner() as runner, tempfile.TemporaryDirectory() as directory:
        call = runner.run(_operation(name, backend, directory))

        async def repeat() -> None:
            for _ in range(calls):
                await call()

        gc.collect()
        if no_gc:
            gc.disable()
        functools.reduce(lambda _, __: runner.run(repeat()), [0], None)
        gc.enable()


def count(name: str, calls: int, no_gc: bool, backend: str) -> int:
    """Instructions per operation, from a callgrind run of this script.

    Callgrind's collection toggle is per thread, and SQLite's work runs on the backend's writer
    thread: with `--backend sqlite` the whole process is counted twice, with `calls` operations
    and with none (the same set-up and warm-up), and the difference is theirs.
    """
    if backend == "memory":
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
    parser.add_argument("operation", choices=OPERATIONS)
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
