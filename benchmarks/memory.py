"""Peak memory of one large `load_many`: pydantic-toast against hand-written driver code.

`python benchmarks/memory.py [--records 100000] [--rounds 3] [--backends sqlite,postgresql,redis]`

Each backend is filled once with N ten-field records by each side (the library's `save_many`
and the hand-written baseline's, in chunks), then every measurement runs in a fresh child
process, the two sides alternating round by round: import, connect, load one record (so pools,
schemas and caches exist), build the list of ids or references, collect garbage, reset the
kernel's peak-RSS mark (`/proc/self/clear_refs`), load all N in one call and read the peak
(`VmHWM`). What is compared is the growth of the peak over the process's size just before the
call: the memory the load itself needed, with the result alive. The absolute peaks are printed
too (the library's process imports more before it starts), and the growth per record, whose
difference between the sides is what the library keeps or allocates per model (its record
state, the record's bytes kept so an unchanged dump writes nothing, its batch bookkeeping).
Linux only: it reads /proc.

`--smoke` (2,000 records, one round, SQLite only) keeps the harness running in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from baselines import Baseline, PostgresBaseline, RedisBaseline, SQLiteBaseline
from bench_models import FLAT10, model_set, values_for

from pydantic_toast import ExternalReference

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
FILL_CHUNK = 5_000
TARGET = 1.2


def _status() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process, in KiB."""
    text = Path("/proc/self/status").read_text()
    return {key: int(value) for key, value in re.findall(r"(VmHWM|VmRSS):\s+(\d+)", text)}


def _urls(backend: str, token: str, workdir: Path) -> tuple[str, dict[str, str]]:
    """The library's storage URL and what the baseline needs, for one backend."""
    if backend == "sqlite":
        path = workdir / "memory.db"
        return f"sqlite:///{path}?table={token}_toast", {"path": str(path), "table": f"{token}_base"}
    if backend == "postgresql":
        url = os.environ.get("TOAST_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
        return f"{url}?table={token}_toast", {"url": url, "table": f"{token}_base"}
    if backend == "redis":
        url = os.environ.get("TOAST_TEST_REDIS_URL", DEFAULT_REDIS_URL)
        return f"{url}?prefix={token}_toast", {"url": url, "prefix": f"{token}_base"}
    raise SystemExit(f"unknown backend {backend!r}: choose sqlite, postgresql or redis")


def _baseline(backend: str, where: dict[str, str]) -> Baseline:
    if backend == "sqlite":
        return SQLiteBaseline(where["path"], where["table"])
    if backend == "postgresql":
        return PostgresBaseline(where["url"], where["table"])
    return RedisBaseline(where["url"], where["prefix"])


async def _fill(backend: str, storage: str, where: dict[str, str], records: int) -> dict[str, list[str]]:
    """Store `records` records with each side; their ids, per side."""
    models = model_set(storage)
    baseline = _baseline(backend, where)
    await baseline.start()
    toast_ids: list[UUID] = []
    base_ids: list[UUID] = []
    try:
        for start in range(0, records, FILL_CHUNK):
            rows = [values_for(FLAT10, seed) for seed in range(start, min(records, start + FILL_CHUNK))]
            references = await models.flat10.save_many([models.flat10(**row) for row in rows])
            toast_ids.extend(reference.id for reference in references)
            items = [(uuid4(), models.plain_flat10(**row)) for row in rows]
            await baseline.save_many(items)
            base_ids.extend(id for id, _ in items)
    finally:
        await baseline.close()
    return {"toast": [str(id) for id in toast_ids], "baseline": [str(id) for id in base_ids]}


async def _drop(backend: str, storage: str, where: dict[str, str]) -> None:
    baseline = _baseline(backend, where)
    await baseline.start()
    try:
        await baseline.drop()
    finally:
        await baseline.close()
    if backend == "postgresql":
        import asyncpg  # type: ignore[import-untyped]

        connection = await asyncpg.connect(where["url"])
        try:
            await connection.execute(f"DROP TABLE IF EXISTS {where['table'].removesuffix('_base')}_toast")
        finally:
            await connection.close()
    elif backend == "redis":
        from baselines import delete_redis_prefix

        await delete_redis_prefix(where["url"], where["prefix"].removesuffix("_base"))


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


async def _measure(
    side: str, backend: str, storage: str, where: dict[str, str], ids: list[UUID]
) -> dict[str, int]:
    """In a fresh process: the peak growth of one `load_many` of every stored id."""
    models = model_set(storage)
    result: list[Any]
    if side == "toast":
        flat10 = models.flat10
        references = [ExternalReference(class_name=flat10.__name__, id=id) for id in ids]
        await flat10.load_many(references[:1])
        gc.collect()
        before = _status()["VmRSS"]
        _reset_peak()
        result = await flat10.load_many(references)
    else:
        baseline = _baseline(backend, where)
        await baseline.start()
        await baseline.load_many(ids[:1], models.plain_flat10)
        gc.collect()
        before = _status()["VmRSS"]
        _reset_peak()
        result = await baseline.load_many(ids, models.plain_flat10)
    peak = _status()["VmHWM"]
    assert len(result) == len(ids)
    return {"before_kib": before, "peak_kib": peak, "growth_kib": peak - before}


def _child(args: argparse.Namespace) -> None:
    where = json.loads(args.where)
    ids = [UUID(text) for text in json.loads(Path(args.ids).read_text())[args.child]]
    figures = asyncio.run(_measure(args.child, args.backend, args.storage, where, ids))
    print(json.dumps(figures))
    sys.stdout.flush()
    os._exit(0)  # the result list is freed by the kernel, not by a minute of deallocation


def _run_child(
    side: str, backend: str, storage: str, where: dict[str, str], ids_file: Path
) -> dict[str, int]:
    command = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--backend",
        backend,
        "--storage",
        storage,
        "--where",
        json.dumps(where),
        "--ids",
        str(ids_file),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{backend} {side} child failed:\n{done.stderr}")
    figures: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql,redis")
    parser.add_argument("--smoke", action="store_true", help="2,000 records, one round, SQLite only")
    parser.add_argument("--child", choices=("toast", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--where", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if args.smoke:
        args.records, args.rounds, args.backends = 2_000, 1, "sqlite"
    print(f"peak memory of load_many({args.records:,}) of ten-field records; growth = peak - size before")
    print(
        f"{'backend':<11} {'side':<15} {'growth MiB (median)':>20} {'B/record':>9} {'peak MiB':>9}"
        "  runs (growth MiB)"
    )
    failed_target = False
    with tempfile.TemporaryDirectory(prefix="toast-memory-") as directory:
        workdir = Path(directory)
        for backend in args.backends.split(","):
            token = f"mem_{secrets.token_hex(4)}"
            storage, where = _urls(backend, token, workdir)
            ids_file = workdir / f"{backend}-ids.json"
            ids_file.write_text(json.dumps(asyncio.run(_fill(backend, storage, where, args.records))))
            try:
                runs: dict[str, list[dict[str, int]]] = {"toast": [], "baseline": []}
                for _ in range(args.rounds):
                    for side in ("toast", "baseline"):
                        runs[side].append(_run_child(side, backend, storage, where, ids_file))
            finally:
                asyncio.run(_drop(backend, storage, where))
            medians = {}
            for side, label in (("toast", "pydantic-toast"), ("baseline", "hand-written")):
                growth = [run["growth_kib"] / 1024 for run in runs[side]]
                medians[side] = statistics.median(growth)
                peak = statistics.median(run["peak_kib"] / 1024 for run in runs[side])
                shown = ", ".join(f"{value:.0f}" for value in growth)
                per_record = medians[side] * 1024 * 1024 / args.records
                figures = f"{medians[side]:>20.1f} {per_record:>9.0f} {peak:>9.1f}"
                print(f"{backend:<11} {label:<15} {figures}  {shown}")
            ratio = medians["toast"] / medians["baseline"]
            failed_target |= ratio > TARGET
            extra = (medians["toast"] - medians["baseline"]) * 1024 * 1024 / args.records
            print(f"{backend:<11} {'ratio':<15} {ratio:>20.2f} {extra:>+9.0f}  (target <= {TARGET})")
    if failed_target and not args.smoke:
        print("a ratio is over the target")


if __name__ == "__main__":
    main()
