"""The `pydantic-toast` command line (also `python -m pydantic_toast`).

    demo                               the quickstart story on the embedded SQLite default
    inspect URL ID [--class NAME]      print one stored envelope
    stats URL                          records per class, bytes, oldest/newest, expired
    copy SRC DST [--class NAME]        copy records between any two backends, resumable
    purge-expired URL                  delete expired records now
    upgrade URL --model module:Class   rewrite stored records at the model's current schema_version

No command ever prints a password: URLs are shown masked.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import pydantic_core

from .backends.base import Capability, StorageBackend, StoredRecord, format_timestamp
from .demo import demo
from .exceptions import ExternalStorageError, StorageValidationError, UnsupportedOperationError
from .reference import parse_id
from .registry import backend_class
from .upgrades import upgraded_data
from .url import StorageURL

__all__ = ["main"]

DEFAULT_BATCH = 500


# What a command needs each optional capability for, and the method that provides it.
_NEEDED_FOR = {
    Capability.SCAN: (
        "list its records",
        "async def scan_records(self, *, cursor, limit, class_name=None, include_expired=False)",
    ),
    Capability.PURGE: ("purge expired records", "async def purge_expired(self) -> int"),
}


@asynccontextmanager
async def open_backend(url: str, *needs: Capability) -> AsyncIterator[StorageBackend]:
    """A connected backend for a one-off command, closed afterwards (not the runtime's pool).

    A backend lacking a capability in `needs` is refused before anything connects.
    """
    parsed = StorageURL.parse(url)
    backend_type = backend_class(parsed.scheme)
    backend_type.check_url(parsed)
    for capability in needs:
        if not backend_type.supports(capability):
            purpose, method = _NEEDED_FOR[capability]
            raise UnsupportedOperationError(
                f"the {backend_type.__name__} backend for {parsed.masked!r} cannot {purpose}, which this "
                f"command needs; implement '{method}' in the backend"
            )
    backend = backend_type(url)
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.disconnect()


async def scan_all(
    backend: StorageBackend,
    *,
    class_name: str | None = None,
    include_expired: bool = False,
    batch: int = 1000,
) -> AsyncIterator[list[StoredRecord]]:
    cursor: str | None = None
    while True:
        page, cursor = await backend.scan_records(
            cursor=cursor, limit=batch, class_name=class_name, include_expired=include_expired
        )
        if page:
            yield page
        if cursor is None:
            return


class Progress:
    """A progress display: rich's when installed, a plain counter line otherwise."""

    def __init__(self, label: str, total: int | None, stream: TextIO) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.done = 0
        self._rich: Any = None
        self._task: Any = None
        try:
            from rich.progress import Progress as RichProgress
        except ImportError:
            return
        self._rich = RichProgress(transient=False, console=None)

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.start()
            self._task = self._rich.add_task(self.label, total=self.total)
        return self

    def advance(self, count: int) -> None:
        self.done += count
        if self._rich is not None:
            self._rich.update(self._task, advance=count)
        else:
            total = f"/{self.total}" if self.total is not None else ""
            self.stream.write(f"\r{self.label}: {self.done}{total}")
            self.stream.flush()

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()
        else:
            self.stream.write("\n")


# --------------------------------------------------------------------------- commands


async def inspect_record(url: str, record_id: str, class_name: str | None, out: TextIO) -> int:
    identifier = parse_id(record_id)
    # Without a class name the record is found by id: a backend's own find_record, or a scan.
    by_id = class_name is None and backend_class(StorageURL.parse(url).scheme).find_record is (
        StorageBackend.find_record
    )
    async with open_backend(url, *((Capability.SCAN,) if by_id else ())) as backend:
        if class_name is not None:
            [record] = await backend.load_records([(identifier, class_name)])
        else:
            record = await backend.find_record(identifier)
    if record is None:
        suffix = f" of class {class_name!r}" if class_name else ""
        print(f"no record {identifier}{suffix} in {StorageURL.parse(url).masked}", file=sys.stderr)
        return 1
    envelope = {
        "class_name": record.class_name,
        "id": str(record.id),
        "schema_version": record.schema_version,
        "created_at": format_timestamp(record.created_at),
        "updated_at": format_timestamp(record.updated_at),
        "expires_at": None if record.expires_at is None else format_timestamp(record.expires_at),
        "data": pydantic_core.from_json(record.data_json),
    }
    out.write(json.dumps(envelope, indent=2, ensure_ascii=False) + "\n")
    return 0


@dataclass
class ClassStats:
    records: int = 0
    data_bytes: int = 0
    expired: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None

    def add(self, record: StoredRecord, now: datetime) -> None:
        self.records += 1
        self.data_bytes += len(record.data_json)
        if record.expires_at is not None and record.expires_at <= now:
            self.expired += 1
        if self.oldest is None or record.created_at < self.oldest:
            self.oldest = record.created_at
        if self.newest is None or record.updated_at > self.newest:
            self.newest = record.updated_at


async def collect_stats(url: str) -> dict[str, ClassStats]:
    now = datetime.now().astimezone()
    per_class: dict[str, ClassStats] = {}
    async with open_backend(url, Capability.SCAN) as backend:
        async for page in scan_all(backend, include_expired=True):
            for record in page:
                per_class.setdefault(record.class_name, ClassStats()).add(record, now)
    return per_class


async def print_stats(url: str, as_json: bool, out: TextIO) -> int:
    per_class = await collect_stats(url)
    rows = {
        name: {
            "records": stats.records,
            "bytes": stats.data_bytes,
            "expired": stats.expired,
            "oldest": None if stats.oldest is None else format_timestamp(stats.oldest),
            "newest": None if stats.newest is None else format_timestamp(stats.newest),
        }
        for name, stats in sorted(per_class.items())
    }
    if as_json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0
    out.write(f"{StorageURL.parse(url).masked}\n")
    header = f"{'class':<30} {'records':>9} {'bytes':>12} {'expired':>8}  {'oldest':<27} {'newest':<27}\n"
    out.write(header)
    for name, row in rows.items():
        out.write(
            f"{name:<30} {row['records']:>9} {row['bytes']:>12} {row['expired']:>8}  "
            f"{row['oldest'] or '-':<27} {row['newest'] or '-':<27}\n"
        )
    total = sum(stats.records for stats in per_class.values())
    out.write(f"{'total':<30} {total:>9}\n")
    return 0


@dataclass
class CopyState:
    """Where an interrupted copy stopped. Holds a hash of the URLs, never the URLs themselves."""

    path: Path
    key: str
    cursor: str | None = None
    copied: int = 0
    loaded: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, path: Path | None, source: str, destination: str, class_name: str | None) -> CopyState:
        key = hashlib.sha256(f"{source}\n{destination}\n{class_name}".encode()).hexdigest()[:16]
        state = cls(path=path or Path(f".pydantic-toast-copy-{key}.json"), key=key)
        if state.path.exists():
            saved = json.loads(state.path.read_text())
            if saved.get("key") != key:
                raise StorageValidationError(
                    f"state file {state.path} belongs to another copy; pass --state-file with a new path "
                    "or delete it",
                    expected=key,
                    actual=saved.get("key"),
                )
            state.cursor, state.copied, state.loaded = saved.get("cursor"), int(saved.get("copied", 0)), True
        return state

    def save(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"key": self.key, "cursor": self.cursor, "copied": self.copied}))
        temporary.replace(self.path)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


async def copy_records(
    source: str,
    destination: str,
    *,
    class_name: str | None,
    batch: int,
    state_file: Path | None,
    restart: bool,
    out: TextIO,
    err: TextIO,
    stop_after_batches: int | None = None,
) -> int:
    state = CopyState.open(state_file, source, destination, class_name)
    if restart:
        state.cursor, state.copied = None, 0
    elif state.loaded:
        err.write(f"resuming after {state.copied} records (state in {state.path})\n")
    async with open_backend(source, Capability.SCAN) as src, open_backend(destination) as dst:
        batches = 0
        with Progress("copying", None, err) as progress:
            progress.advance(state.copied)
            while True:
                page, cursor = await src.scan_records(cursor=state.cursor, limit=batch, class_name=class_name)
                if page:
                    await dst.save_records(page)
                    state.copied += len(page)
                    progress.advance(len(page))
                state.cursor = cursor
                state.save()
                batches += 1
                if cursor is None:
                    break
                if stop_after_batches is not None and batches >= stop_after_batches:
                    return 3
        source_count, missing = await _verify(src, dst, class_name)
        destination_count = await _count(dst, class_name)
    state.finish()
    scope = f"class {class_name!r}" if class_name else "all classes"
    out.write(
        f"copied {state.copied} records ({scope}); source holds {source_count}, destination holds "
        f"{destination_count}; missing in destination: {missing}\n"
    )
    return 0 if missing == 0 else 1


async def _count(backend: StorageBackend, class_name: str | None) -> int:
    return sum([len(page) async for page in scan_all(backend, class_name=class_name)])


async def _verify(src: StorageBackend, dst: StorageBackend, class_name: str | None) -> tuple[int, int]:
    """Every live source record must be in the destination; returns (source count, missing)."""
    total = missing = 0
    async for page in scan_all(src, class_name=class_name):
        total += len(page)
        found = await dst.load_records([record.key for record in page])
        missing += sum(record is None for record in found)
    return total, missing


async def purge_expired(url: str, out: TextIO) -> int:
    async with open_backend(url, Capability.PURGE) as backend:
        purged = await backend.purge_expired()
    out.write(f"purged {purged} expired records from {StorageURL.parse(url).masked}\n")
    return 0


def import_model(path: str) -> Any:
    from .base import ExternalBaseModel

    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise StorageValidationError(
            f"--model takes 'module:Class', e.g. 'myapp.models:UserProfile', got {path!r}",
            expected="module:Class",
            actual=path,
        )
    if "" not in sys.path:
        sys.path.insert(0, "")
    model = getattr(importlib.import_module(module_name), attribute, None)
    if not (isinstance(model, type) and issubclass(model, ExternalBaseModel)):
        raise StorageValidationError(
            f"{path} is not an ExternalBaseModel subclass", expected="ExternalBaseModel", actual=path
        )
    return model


async def upgrade_records(
    url: str, model_path: str, *, dry_run: bool, batch: int, out: TextIO, err: TextIO
) -> int:
    from . import persistence

    model = import_model(model_path)
    settings = model.__toast_settings__
    if StorageURL.parse(url).raw != settings.url.raw:
        raise StorageValidationError(
            f"{model.__qualname__} stores in {settings.url.masked!r}, not {StorageURL.parse(url).masked!r}; "
            "pass the model's own storage URL",
            expected=settings.url.masked,
            actual=StorageURL.parse(url).masked,
        )
    current = settings.schema_version
    outdated: dict[int, int] = {}
    rewritten = 0
    async with open_backend(url, Capability.SCAN) as backend:
        with Progress("upgrading" if not dry_run else "checking", None, err) as progress:
            async for page in scan_all(backend, class_name=settings.storage_name, batch=batch):
                stale = [record for record in page if record.schema_version < current]
                for record in stale:
                    outdated[record.schema_version] = outdated.get(record.schema_version, 0) + 1
                    upgraded_data(model, record)  # fails early on a gap in the chain
                if stale and not dry_run:
                    models = await persistence.load_many(
                        model, [persistence.coerce_reference(model, record.id) for record in stale]
                    )
                    await persistence.save_many_shallow(models)
                    rewritten += len(models)
                progress.advance(len(page))
    summary = (
        ", ".join(f"{count} at version {version}" for version, count in sorted(outdated.items())) or "none"
    )
    if dry_run:
        out.write(
            f"dry run: {sum(outdated.values())} records would be upgraded to version {current} ({summary})\n"
        )
    else:
        out.write(f"upgraded {rewritten} records to version {current} ({summary})\n")
    await _close_runtime()
    return 0


async def _close_runtime() -> None:
    from .runtime import aclose

    await aclose()


def _run(coroutine_factory: Callable[[], Any]) -> int:
    try:
        result: int = asyncio.run(coroutine_factory())
    except ExternalStorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pydantic-toast", description="pydantic-toast operator commands")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo_parser = commands.add_parser("demo", help="define a model, dump it to a reference, restore it")
    demo_parser.add_argument("--storage", help="storage URL (default: SQLite in a temporary directory)")

    inspect_parser = commands.add_parser("inspect", help="print the stored envelope of one record")
    inspect_parser.add_argument("url")
    inspect_parser.add_argument("id")
    inspect_parser.add_argument("--class", dest="class_name", help="class name (faster on some backends)")

    stats_parser = commands.add_parser("stats", help="records per class, bytes, oldest/newest, expired")
    stats_parser.add_argument("url")
    stats_parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    copy_parser = commands.add_parser("copy", help="copy records between two backends (resumable)")
    copy_parser.add_argument("source")
    copy_parser.add_argument("destination")
    copy_parser.add_argument("--class", dest="class_name", help="copy only this class")
    copy_parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    copy_parser.add_argument("--state-file", type=Path, help="where progress is kept for resuming")
    copy_parser.add_argument("--restart", action="store_true", help="ignore a saved state and start over")

    purge_parser = commands.add_parser("purge-expired", help="delete expired records now")
    purge_parser.add_argument("url")

    upgrade_parser = commands.add_parser("upgrade", help="rewrite records at the model's schema_version")
    upgrade_parser.add_argument("url")
    upgrade_parser.add_argument("--model", required=True, help="the model, as module:Class")
    upgrade_parser.add_argument("--dry-run", action="store_true", help="count what would change")
    upgrade_parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    if getattr(args, "batch_size", 1) < 1:
        print("error: --batch-size must be at least 1", file=err)
        return 2
    if args.command == "demo":
        demo(args.storage)
        return 0
    if args.command == "inspect":
        return _run(lambda: inspect_record(args.url, args.id, args.class_name, out))
    if args.command == "stats":
        return _run(lambda: print_stats(args.url, args.json, out))
    if args.command == "copy":
        return _run(
            lambda: copy_records(
                args.source,
                args.destination,
                class_name=args.class_name,
                batch=args.batch_size,
                state_file=args.state_file,
                restart=args.restart,
                out=out,
                err=err,
            )
        )
    if args.command == "purge-expired":
        return _run(lambda: purge_expired(args.url, out))
    return _run(
        lambda: upgrade_records(
            args.url, args.model, dry_run=args.dry_run, batch=args.batch_size, out=out, err=err
        )
    )
