"""pydantic-toast benchmarks: `python benchmarks/run.py [--smoke] [--json PATH] [--plot PATH]`.

Runs every scenario (scenarios.py) on SQLite, PostgreSQL and Redis, pydantic-toast interleaved
with hand-written driver code (baselines.py) and peer libraries (peers.py), and prints one table
of medians, p50/p99 and ratios (pydantic-toast time / other time). A backend whose driver or
server is missing is reported as "not run: <reason>". Exit status: 0 when every scenario that
ran finished, 1 when one crashed, 2 with --strict when a target was missed (never in --smoke).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from baselines import (
    Baseline,
    LoopThread,
    ObjectStoreBaseline,
    PostgresBaseline,
    RedisBaseline,
    SQLiteBaseline,
    delete_redis_prefix,
)
from bench_compression import compression_rows, format_rows
from bench_models import model_set
from peers import UNAVAILABLE, Peer, redis_peers
from scenarios import Counts, Env, Scenario, peer_target_for, scenarios, sync_plain_contenders
from timing import Contender, Samples, Summary, measure_async, measure_sync, ratio_range

import pydantic_toast

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BACKENDS = ("sqlite", "postgresql", "redis", "s3", "file")
# Object stores make one request per record, so their rows are the ones the issue asks for:
# single save/load, batches and nesting (a full run on moto would take most of an hour).
_GROUPS = {"s3": ("single", "batch", "nested"), "file": ("single", "batch", "nested")}


# ---------------------------------------------------------------------------- results


@dataclass(slots=True)
class Result:
    backend: str
    scenario: str
    group: str
    ops: int
    status: str  # "ok" or "error: ..."
    note: str = ""
    summaries: list[Summary] = field(default_factory=list)
    targets: dict[str, float] = field(default_factory=dict)

    def toast(self) -> Summary | None:
        return next((s for s in self.summaries if s.kind == "toast"), None)

    def ratio(self, other: Summary) -> float | None:
        toast = self.toast()
        if toast is None or other.kind == "toast" or other.median <= 0:
            return None
        return toast.median / other.median

    def spread(self, other: Summary) -> tuple[float, float] | None:
        toast = self.toast()
        return None if toast is None or other.kind == "toast" else ratio_range(toast, other)

    def verdicts(self) -> list[tuple[str, float, float, bool]]:
        """(contender, ratio, target, met) for every contender with a target."""
        out = []
        for summary in self.summaries:
            target = self.targets.get(summary.name)
            ratio = self.ratio(summary)
            if target is not None and ratio is not None:
                out.append((summary.name, ratio, target, ratio <= target))
        return out


@dataclass(slots=True)
class BackendReport:
    name: str
    ran: bool
    reason: str = ""
    peers: dict[str, str] = field(default_factory=dict)  # name -> "ran" or why not


# ---------------------------------------------------------------------------- backends


@dataclass(slots=True)
class BackendSetup:
    name: str
    toast_url: str
    make_baseline: Callable[[], Baseline]
    make_peers: Callable[[], tuple[list[Peer], dict[str, str]]]
    cleanup: Callable[[], Coroutine[Any, Any, None]]


def _with_query(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


def _unreachable(url: str, exc: Exception) -> str:
    parts = urlsplit(url)
    return f"server not answering at {parts.hostname}:{parts.port}: {type(exc).__name__}: {exc}"


async def _probe_postgres(url: str) -> str | None:
    try:
        import asyncpg  # type: ignore[import-untyped]

        import pydantic_toast.backends.postgresql  # noqa: F401
    except ImportError as exc:
        return f"cannot import the driver or backend ({exc})"
    try:
        connection = await asyncpg.connect(url, timeout=3)
        await connection.close()
    except Exception as exc:
        return _unreachable(url, exc)
    return None


async def _probe_redis(url: str) -> str | None:
    try:
        from redis.asyncio import Redis

        import pydantic_toast.backends.redis  # noqa: F401
    except ImportError as exc:
        return f"cannot import the driver or backend ({exc})"
    client = Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        await client.ping()
    except Exception as exc:
        return _unreachable(url, exc)
    finally:
        await client.aclose()
    return None


def _setup(name: str, token: str, workdir: Path, with_peers: bool) -> tuple[BackendSetup | None, str]:
    """The backend's URLs and helpers, or None and the reason it cannot run."""
    if name == "sqlite":
        path = workdir / "bench.db"
        return (
            BackendSetup(
                name,
                f"sqlite:///{path}?table={token}_toast",
                lambda: SQLiteBaseline(str(path), f"{token}_base"),
                lambda: ([], {}),
                _nothing,
            ),
            "",
        )
    if name == "postgresql":
        url = os.environ.get("TOAST_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
        reason = asyncio.run(_probe_postgres(url))
        if reason:
            return None, reason

        async def drop_tables() -> None:
            import asyncpg

            connection = await asyncpg.connect(url)
            try:
                for suffix in ("toast", "base"):
                    await connection.execute(f"DROP TABLE IF EXISTS {token}_{suffix}")
            finally:
                await connection.close()

        return (
            BackendSetup(
                name,
                _with_query(url, f"table={token}_toast"),
                lambda: PostgresBaseline(url, f"{token}_base"),
                lambda: (
                    [],
                    {
                        "(PostgreSQL peers)": "none wired in: no pydantic-model-as-JSON store for PostgreSQL "
                        "among the peers installed here (SQLModel maps columns, not documents)"
                    },
                ),
                drop_tables,
            ),
            "",
        )
    if name == "redis":
        url = os.environ.get("TOAST_TEST_REDIS_URL", DEFAULT_REDIS_URL)
        reason = asyncio.run(_probe_redis(url))
        if reason:
            return None, reason
        parts = urlsplit(url)
        db = int((parts.path or "/0").strip("/") or 0)

        def make_peers() -> tuple[list[Peer], dict[str, str]]:
            if not with_peers:
                return [], {"peers": "skipped (--no-peers)"}
            return redis_peers(url, parts.hostname or "127.0.0.1", parts.port or 6379, db, token)

        async def delete_keys() -> None:
            await delete_redis_prefix(url, token, pattern=f"{token}*")

        return (
            BackendSetup(
                name,
                _with_query(url, f"prefix={token}_toast"),
                lambda: RedisBaseline(url, f"{token}_base"),
                make_peers,
                delete_keys,
            ),
            "",
        )
    if name in {"s3", "file"}:
        return _object_store_setup(name, token, workdir)
    return None, f"unknown backend {name!r}"


def _object_store_setup(name: str, token: str, workdir: Path) -> tuple[BackendSetup | None, str]:
    """s3: moto started here (or TOAST_BENCH_S3_URL); file: a temp directory. obstore for both."""
    try:
        from obstore.store import LocalStore, S3Store

        import pydantic_toast.backends.objectstore  # noqa: F401
    except ImportError as exc:
        return None, f"cannot import obstore or the backend ({exc}); pip install 'pydantic-toast[s3]'"
    if name == "file":
        directory = workdir / "objects"
        directory.mkdir()
        return (
            BackendSetup(
                name,
                f"file://{directory}/{token}_toast",
                lambda: ObjectStoreBaseline(
                    lambda: LocalStore(directory), f"{token}_base", content_type=False
                ),
                lambda: ([], {}),
                _nothing,
            ),
            "",
        )
    configured = os.environ.get("TOAST_BENCH_S3_URL")
    server = None
    if configured:
        toast_url = configured
        parts = urlsplit(configured)
        bucket, options = parts.netloc, dict(item.split("=", 1) for item in parts.query.split("&") if item)
        endpoint = options.get("endpoint_url")
    else:
        from s3_server import start_moto

        try:
            server = start_moto()
        except Exception as exc:
            return (
                None,
                f"could not start moto's S3 server ({type(exc).__name__}: {exc}); pip install 'moto[server]'",
            )
        bucket, endpoint = server.bucket, server.endpoint
        toast_url = f"s3://{bucket}/{token}_toast?endpoint_url={endpoint}&region=us-east-1"

    def make_store() -> object:
        http = {"allow_http": True} if (endpoint or "").startswith("http://") else {}
        return S3Store(bucket, endpoint=endpoint, region="us-east-1", client_options=http)  # type: ignore[arg-type]

    async def stop() -> None:
        if server is not None:
            server.stop()

    return (
        BackendSetup(
            name,
            toast_url,
            lambda: ObjectStoreBaseline(make_store, f"{token}_base", content_type=True),
            lambda: ([], {"peers": "none wired in for object stores"}),
            stop,
        ),
        "",
    )


async def _nothing() -> None:
    return None


# ---------------------------------------------------------------------------- running


@dataclass(slots=True)
class Options:
    counts: Counts
    rounds: int
    smoke: bool
    only: tuple[str, ...]


def _selected(scenario: Scenario, only: Sequence[str]) -> bool:
    return not only or any(word.lower() in scenario.name.lower() or word == scenario.group for word in only)


def _summaries(samples: list[Samples]) -> list[Summary]:
    return [s.summary() for s in samples]


def _error(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {str(exc)[:300]}"


async def _async_phase(
    setup: BackendSetup, options: Options, report: BackendReport, results: list[Result]
) -> None:
    models = model_set(setup.toast_url)
    baseline = setup.make_baseline()
    bridge = LoopThread()
    bridge_baseline = setup.make_baseline()
    peers, skipped = setup.make_peers()
    report.peers.update(skipped)
    started: list[Peer] = []
    await baseline.start()
    bridge.run(bridge_baseline.start())
    for peer in peers:
        try:
            await peer.start()
        except Exception as exc:
            report.peers[peer.name] = f"could not start: {type(exc).__name__}: {exc}"
        else:
            started.append(peer)
            report.peers[peer.name] = "ran"
    env = Env(setup.name, models, baseline, bridge, bridge_baseline, started, options.counts)
    try:
        for scenario in scenarios(options.counts, peers=bool(started)):
            if not _selected(scenario, options.only) or scenario.group not in _GROUPS.get(
                setup.name, (scenario.group,)
            ):
                continue
            result = Result(setup.name, scenario.name, scenario.group, scenario.ops, "ok", scenario.note)
            results.append(result)
            env.scenario = scenario.name
            _progress(setup.name, scenario.name)
            try:
                if scenario.mode == "sync":
                    # Timed in a worker thread with no event loop: "plain code".
                    contenders, samples = await asyncio.to_thread(_run_sync, env, scenario, options.rounds)
                else:
                    contenders = await scenario.build(env)
                    samples = await measure_async(
                        contenders,
                        rounds=options.rounds,
                        iterations=scenario.iterations,
                        warmup=_warmup(scenario),
                    )
                result.summaries = _summaries(samples)
                result.targets = {**scenario.targets, **peer_target_for(contenders)}
            except Exception as exc:
                result.status = _error(exc)
                traceback.print_exc(file=sys.stderr)
    finally:
        report.peers.update(env.peer_failures)
        for peer in started:
            try:
                await peer.close()
            except Exception as exc:
                print(f"  (closing {peer.name} failed: {exc})", file=sys.stderr)
        bridge.run(bridge_baseline.drop())
        bridge.run(bridge_baseline.close())
        bridge.stop()
        await baseline.drop()
        await baseline.close()
        await pydantic_toast.aclose()


def _run_sync(env: Env, scenario: Scenario, rounds: int) -> tuple[list[Contender], list[Samples]]:
    operation = "dump" if "dump" in scenario.name else "validate"
    contenders = sync_plain_contenders(env, operation)
    return contenders, measure_sync(
        contenders, rounds=rounds, iterations=scenario.iterations, warmup=_warmup(scenario)
    )


def _warmup(scenario: Scenario) -> int:
    """Untimed calls per contender before the rounds: pools and caches reach their steady state."""
    return max(1, min(10, scenario.iterations // 2))


def _progress(backend: str, scenario: str) -> None:
    print(f"  {backend:<10} {scenario}", file=sys.stderr, flush=True)


def run_backend(
    name: str, options: Options, token: str, workdir: Path, with_peers: bool
) -> tuple[BackendReport, list[Result]]:
    setup, reason = _setup(name, token, workdir, with_peers)
    if setup is None:
        return BackendReport(name, False, reason), []
    report = BackendReport(name, True)
    results: list[Result] = []
    try:
        asyncio.run(_async_phase(setup, options, report, results))
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        results.append(Result(name, "(setup)", "setup", 0, _error(exc)))
    finally:
        pydantic_toast.close()
        try:
            asyncio.run(setup.cleanup())
        except Exception as exc:
            print(f"cleanup of {name} failed: {exc}", file=sys.stderr)
    return report, results


# ---------------------------------------------------------------------------- output


def _time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _spread(spread: tuple[float, float] | None) -> str:
    return "" if spread is None else f"{spread[0]:.2f}-{spread[1]:.2f}"


def table(results: Sequence[Result], *, thresholds: bool) -> str:
    """One row per contender: median, p50, p99 per call, ratio toast/contender (overall and the
    lowest-highest of the per-round ratios) and the verdict."""
    header = (
        "backend",
        "scenario",
        "contender",
        "calls",
        "median",
        "p50",
        "p99",
        "ratio",
        "rounds",
        "target",
        "",
    )
    rows: list[tuple[str, ...]] = [header]
    for result in results:
        if result.status != "ok":
            rows.append((result.backend, result.scenario, "-", "", "", "", "", "", "", "", result.status))
            continue
        for summary in result.summaries:
            ratio = result.ratio(summary)
            target = result.targets.get(summary.name)
            verdict = ""
            if thresholds and ratio is not None and target is not None:
                verdict = "met" if ratio <= target else "MISSED"
            rows.append(
                (
                    result.backend,
                    result.scenario,
                    summary.name,
                    str(summary.calls),
                    _time(summary.median),
                    _time(summary.p50),
                    _time(summary.p99),
                    "" if ratio is None else f"{ratio:.2f}",
                    _spread(result.spread(summary)),
                    "" if target is None else f"≤ {target:.2f}",
                    verdict,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown(results: Sequence[Result], reports: Sequence[BackendReport], options: Options) -> str:
    """The results as Markdown: one table per backend, then which backends and peers ran."""
    lines: list[str] = []
    for backend in dict.fromkeys(r.backend for r in results):
        lines += [
            f"### {backend}",
            "",
            "| scenario | contender | median | p50 | p99 | ratio | per-round ratios | target | |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for result in (r for r in results if r.backend == backend):
            if result.status != "ok":
                lines.append(f"| {result.scenario} | | | | | | | | {result.status} |")
                continue
            for summary in result.summaries:
                ratio = result.ratio(summary)
                target = result.targets.get(summary.name)
                verdict = ""
                if not options.smoke and ratio is not None and target is not None:
                    verdict = "met" if ratio <= target else "**missed**"
                cells = [
                    result.scenario,
                    summary.name,
                    _time(summary.median),
                    _time(summary.p50),
                    _time(summary.p99),
                    "" if ratio is None else f"{ratio:.2f}",
                    _spread(result.spread(summary)),
                    "" if target is None else f"≤ {target:.2f}",
                    verdict,
                ]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["| backend or peer | status |", "|---|---|"]
    for report in reports:
        lines.append(f"| {report.name} | {'ran' if report.ran else 'not run: ' + report.reason} |")
        lines += [f"| peer {peer} | {status} |" for peer, status in report.peers.items()]
    lines += [f"| peer {peer} | not run: {reason} |" for peer, reason in UNAVAILABLE.items()]
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pydantic_toast": pydantic_toast.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def to_json(
    results: Sequence[Result], reports: Sequence[BackendReport], options: Options, seconds: float
) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "smoke": options.smoke,
        "rounds": options.rounds,
        "seconds": round(seconds, 1),
        "backends": [asdict(report) for report in reports],
        "unavailable_peers": UNAVAILABLE,
        "results": [
            {
                "backend": r.backend,
                "scenario": r.scenario,
                "group": r.group,
                "ops": r.ops,
                "status": r.status,
                "note": r.note,
                "targets": r.targets,
                "contenders": [
                    {
                        **asdict(s),
                        "ratio": r.ratio(s),
                        "ratio_per_round_range": r.spread(s),
                        "target": r.targets.get(s.name),
                    }
                    for s in r.summaries
                ],
            }
            for r in results
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts, 2 rounds, no thresholds (for CI)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="draw the ratios as a PNG (needs matplotlib)")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all)")
    parser.add_argument("--scenarios", default="", help="comma-separated words: a group or part of a name")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 9, smoke 2)")
    parser.add_argument("--no-peers", action="store_true", help="skip peer libraries")
    parser.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    args = parser.parse_args(argv)

    counts = Counts.smoke() if args.smoke else Counts()
    rounds = args.rounds or (2 if args.smoke else 9)
    only = tuple(word.strip() for word in args.scenarios.split(",") if word.strip())
    options = Options(counts, rounds, args.smoke, only)
    token = f"bench_{os.getpid()}_{secrets.token_hex(3)}"
    workdir = Path(tempfile.mkdtemp(prefix="pydantic-toast-bench-"))
    started = time.perf_counter()
    reports: list[BackendReport] = []
    results: list[Result] = []
    try:
        for name in (b.strip() for b in args.backends.split(",") if b.strip()):
            print(f"{name}:", file=sys.stderr, flush=True)
            report, backend_results = run_backend(name, options, token, workdir, not args.no_peers)
            reports.append(report)
            results.extend(backend_results)
            if not report.ran:
                print(f"  not run: {report.reason}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # Codecs on one payload, not per backend: selected by the word "compression" (or by default).
    compression = compression_rows(smoke=args.smoke) if not only or "compression" in only else []
    seconds = time.perf_counter() - started

    print(table(results, thresholds=not args.smoke))
    print()
    if compression:
        print(format_rows(compression) + "\n")
    for report in reports:
        line = f"{report.name}: {'ran' if report.ran else 'not run: ' + report.reason}"
        print(line)
        for peer, status in report.peers.items():
            print(f"    peer {peer}: {status}")
    for peer, reason in UNAVAILABLE.items():
        print(f"peer {peer}: not run: {reason}")
    crashed = [r for r in results if r.status != "ok"]
    missed = [(r, v) for r in results if r.status == "ok" for v in r.verdicts() if not v[3]]
    if not args.smoke:
        print(f"\ntargets missed: {len(missed)}")
        for result, (name, ratio, target, _) in missed:
            print(f"  {result.backend} / {result.scenario}: {ratio:.2f} vs {name} (target ≤ {target:.2f})")
    print(f"\n{len(results)} scenarios, {len(crashed)} failed, {seconds:.0f} s")

    if args.json:
        data = {
            **to_json(results, reports, options, seconds),
            "compression": [asdict(r) for r in compression],
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, reports, options))
    if args.plot:
        from plot import draw

        draw(to_json(results, reports, options, seconds), Path(args.plot))
    if crashed:
        return 1
    if args.strict and missed and not args.smoke:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
