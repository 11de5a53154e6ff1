"""The `pydantic-toast` command line (also `python -m pydantic_toast`).

    demo                               the quickstart story on the embedded SQLite default
    inspect URL ID [--class NAME]      print one stored envelope, its data decoded
    stats URL                          records per class, bytes, oldest/newest, expired
    copy SRC DST [--class NAME]        copy records between any two backends, resumable
    purge-expired URL                  delete expired records now
    upgrade URL --model module:Class   rewrite stored records at the model's current schema_version
    rotate-keys URL --model module:Class  re-encrypt every record of the model under its current key
    gc URL --roots module:Class        delete records no root reaches (--grace 1h; a dry run unless --yes)

`--import MODULE` imports a module first, so backends it registers in code serve their schemes.
Every error is one line on stderr; exit status 1 means the store failed, 2 a usage error (see
EXIT_CODES). No command ever prints a password: URLs are shown masked. Commands that only read
never create a SQLite database: a mistyped path is an error, not an empty store.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import importlib
import json
import re
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import pydantic_core

from . import __version__, codecs, encryption, garbage
from ._loading import load_many
from ._settings import coerce_reference
from ._writing import save_many_shallow
from .backends.base import Capability, StorageBackend, StoredRecord, format_timestamp
from .base import ExternalBaseModel
from .demo import demo
from .exceptions import (
    ExternalStorageError,
    RecordIntegrityError,
    StorageConnectionError,
    StorageValidationError,
    UnsupportedOperationError,
)
from .reference import parse_id
from .registry import backend_class
from .runtime import aclose
from .upgrades import upgraded_data
from .url import StorageURL, mask_secrets

__all__ = ["main"]

DEFAULT_BATCH = 500

EXIT_CODES = """\
exit status:
  0    success
  1    the store failed: unreachable, refused, missing database, record not found, a stored record
       that cannot be read (undecodable, tampered with), copy incomplete
  2    usage error: bad arguments, malformed URL or option, unknown scheme, --model or --import
       that cannot be imported, data the model cannot upgrade
  130  interrupted (Ctrl-C); an interrupted copy resumes when run again
"""


# What a command needs each optional capability for, and the method that provides it.
_NEEDED_FOR = {
    Capability.SCAN: (
        "list its records",
        "async def scan_records(self, *, cursor, limit, class_name=None, include_expired=False)",
    ),
    Capability.PURGE: ("purge expired records", "async def purge_expired(self) -> int"),
}


@asynccontextmanager
async def open_backend(url: str, *needs: Capability, create: bool = False) -> AsyncIterator[StorageBackend]:
    """A connected backend for a one-off command, closed afterwards (not the runtime's pool).

    A backend lacking a capability in `needs` is refused before anything connects. Without
    `create`, a SQLite database and a PostgreSQL table must already exist: connecting would
    create them, turning a mistyped path or table name into an empty store and a write on a
    read path.
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
    if not create:
        _require_sqlite_table(parsed, backend_type)
    backend = _reader(url, backend_type) if not create else backend_type(url)
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.disconnect()


def _reader(url: str, backend_type: type[StorageBackend]) -> StorageBackend:
    """A backend that creates nothing when it connects, where the backend can promise that."""
    from .backends.postgresql import PostgreSQLBackend

    if issubclass(backend_type, PostgreSQLBackend):
        return backend_type(url, create=False)
    return backend_type(url)


def _require_sqlite_table(url: StorageURL, backend_type: type[StorageBackend]) -> None:
    from .backends.sqlite import SQLiteBackend, _settings

    if not issubclass(backend_type, SQLiteBackend):
        return
    path, options = _settings(url)
    table = options.table
    file = Path(path)
    if not file.is_file():
        raise StorageConnectionError(
            f"no SQLite database at {str(file.resolve())!r} (from {url.masked!r}); check the path: "
            "'sqlite:///name.db' is relative to the current directory, 'sqlite:////abs/name.db' "
            "absolute. This command only reads, so it does not create one",
            url=url.masked,
        )
    try:
        with closing(sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            found = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
    except sqlite3.Error as exc:
        raise StorageConnectionError(
            f"cannot read SQLite database {path!r} ({exc}); is it a SQLite file, and readable?",
            url=url.masked,
        ) from None
    if found is None:
        raise StorageConnectionError(
            f"SQLite database {path!r} has no table {table!r}, so no pydantic-toast records; check "
            "the path, or the '?table=' option if the models use one",
            url=url.masked,
        )


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
            from rich.console import Console
            from rich.progress import Progress as RichProgress
        except ImportError:
            return
        # On `stream` (stderr): stdout is the command's report, which scripts may parse.
        self._rich = RichProgress(transient=False, console=Console(file=stream))

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


async def inspect_record(
    url: str,
    record_id: str,
    class_name: str | None,
    out: TextIO,
    *,
    decrypt: bool = False,
    model_path: str | None = None,
) -> int:
    identifier = parse_id(record_id)
    # Keys come only from the model's configuration, never from the command line.
    pipeline = _decrypting_pipeline(model_path) if decrypt else None
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
        where = StorageURL.parse(url).masked
        print(f"pydantic-toast inspect: error: no record {identifier}{suffix} in {where}", file=sys.stderr)
        return 1
    envelope = {
        "class_name": record.class_name,
        "id": str(record.id),
        "schema_version": record.schema_version,
        "created_at": format_timestamp(record.created_at),
        "updated_at": format_timestamp(record.updated_at),
        "expires_at": None if record.expires_at is None else format_timestamp(record.expires_at),
        "encoding": record.encoding,
        "stored_bytes": len(record.payload),
    }
    if _encrypted(record):
        info = encryption.envelope_info(record.payload)
        envelope["encryption"] = {
            "algorithm": encryption.ALGORITHM,
            "format_version": None if info is None else info.format_version,
            "key_id": None if info is None else info.key_id,
            "nonce_bytes": None if info is None else info.nonce_bytes,
            "ciphertext_bytes": None if info is None else info.ciphertext_bytes,
        }
        if pipeline is None:
            envelope["data"] = "<encrypted: pass --decrypt --model module:Class to show it>"
        else:
            data = codecs.decode(record, pipeline)
            envelope["raw_bytes"] = len(data)  # the JSON before the codec stage
            envelope["data"] = pydantic_core.from_json(data)
    else:
        data = codecs.decode(record)
        envelope["raw_bytes"] = len(data)
        envelope["data"] = pydantic_core.from_json(data)
    out.write(json.dumps(envelope, indent=2, ensure_ascii=False) + "\n")
    return 0


def _encrypted(record: StoredRecord) -> bool:
    return record.encoding.rsplit("+", 1)[-1] == encryption.STEP


def _decrypting_pipeline(model_path: str | None) -> codecs.Pipeline:
    if model_path is None:
        raise StorageValidationError(
            "--decrypt needs --model module:Class: the keys come from that model's configuration",
            expected="--model",
            actual=None,
        )
    model = import_model(model_path)
    pipeline: codecs.Pipeline | None = model.__toast_settings__.codec
    if pipeline is None or pipeline.encryption is None:
        raise StorageValidationError(
            f"{model_path} has no encryption configured, so it holds no keys to decrypt with; set "
            "ExternalConfigDict(encryption=KeySet(...)) on it",
            expected="a model with encryption",
            actual=model_path,
        )
    return pipeline


@dataclass
class ClassStats:
    records: int = 0
    data_bytes: int = 0
    raw_bytes: int = 0  # the payloads' JSON before the codec stage (stored size if undecodable)
    expired: int = 0
    encodings: dict[str, int] = field(default_factory=dict)
    oldest: datetime | None = None
    newest: datetime | None = None

    def add(self, record: StoredRecord, now: datetime) -> None:
        self.records += 1
        self.data_bytes += len(record.payload)
        try:
            self.raw_bytes += len(codecs.decode(record))
        except ExternalStorageError:  # `inspect` names what is wrong with it; stats only counts
            self.raw_bytes += len(record.payload)
        self.encodings[record.encoding] = self.encodings.get(record.encoding, 0) + 1
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
            "raw_bytes": stats.raw_bytes,
            "encodings": dict(sorted(stats.encodings.items())),
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
    header = (
        f"{'class':<30} {'records':>9} {'bytes':>12} {'raw bytes':>12} {'expired':>8}  "
        f"{'oldest':<27} {'newest':<27}\n"
    )
    out.write(header)
    for name, row in rows.items():
        out.write(
            f"{name:<30} {row['records']:>9} {row['bytes']:>12} {row['raw_bytes']:>12} {row['expired']:>8}  "
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
        if not state.path.parent.is_dir():
            raise StorageValidationError(
                f"the directory of state file {str(state.path)!r} does not exist; create it or pass "
                "--state-file with another path",
                expected="an existing directory",
                actual=str(state.path.parent),
            )
        if state.path.exists():
            try:
                saved = json.loads(state.path.read_text())
                if not isinstance(saved, dict):
                    raise TypeError("not a JSON object")
            except (OSError, ValueError, TypeError) as exc:
                raise StorageValidationError(
                    f"cannot read state file {str(state.path)!r} ({exc}); it is not one this command "
                    "wrote: delete it, or pass --state-file with another path",
                    expected="a copy state file",
                    actual=str(state.path),
                ) from None
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
        try:
            temporary.write_text(json.dumps({"key": self.key, "cursor": self.cursor, "copied": self.copied}))
            temporary.replace(self.path)
        except OSError as exc:
            raise ExternalStorageError(
                f"cannot write the copy's state file {str(self.path)!r} ({exc}); the records copied so "
                "far are in the destination, and running the command again copies them again"
            ) from None

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
    async with open_backend(source, Capability.SCAN) as src, open_backend(destination, create=True) as dst:
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


def import_module(name: str, *, option: str) -> ModuleType:
    """Import a user's module named on the command line, as `python -m` would find it."""
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        return importlib.import_module(name)
    except Exception as exc:
        hint = (
            "; run from the directory that holds it, or install it in this environment"
            if isinstance(exc, ModuleNotFoundError) and exc.name == name.split(".")[0]
            else ""
        )
        raise StorageValidationError(
            f"{option} {name!r} failed to import: {type(exc).__name__}: {mask_secrets(str(exc))}{hint}",
            expected="an importable module",
            actual=name,
        ) from exc


def import_model(path: str, *, option: str = "--model") -> Any:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise StorageValidationError(
            f"{option} takes 'module:Class', e.g. 'myapp.models:UserProfile', got {path!r}",
            expected="module:Class",
            actual=path,
        )
    model = getattr(import_module(module_name, option=option), attribute, None)
    if not (isinstance(model, type) and issubclass(model, ExternalBaseModel)):
        raise StorageValidationError(
            f"{path} is not an ExternalBaseModel subclass", expected="ExternalBaseModel", actual=path
        )
    return model


async def upgrade_records(
    url: str, model_path: str, *, dry_run: bool, batch: int, out: TextIO, err: TextIO
) -> int:
    model = import_model(model_path)
    settings = model.__toast_settings__
    if StorageURL.parse(url).raw != settings.url.raw:
        raise StorageValidationError(
            f"{model.__qualname__} stores in {settings.url.masked!r}, not {StorageURL.parse(url).masked!r}; "
            "pass the model's own storage URL",
            expected=settings.url.masked,
            actual=StorageURL.parse(url).masked,
        )
    if settings.content_addressed:
        # Upgraded data hashes to another id: rewriting would add records, never replace the old ones.
        raise StorageValidationError(
            f"{model.__qualname__} is content_addressed: its records are never rewritten in place (upgraded "
            "data has another id, and references point at the old one), so 'upgrade' does not apply; "
            "upgrades run on every load instead",
            expected="a model without content_addressed",
            actual=model.__qualname__,
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
                    models = await load_many(model, [coerce_reference(model, record.id) for record in stale])
                    await save_many_shallow(models)
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
    await aclose()
    return 0


@dataclass
class Rotation:
    """What `rotate-keys` did and found."""

    rotated: int = 0
    already: int = 0
    changed_meanwhile: int = 0
    refused: list[str] = field(default_factory=list)
    verified: int = 0
    stale: int = 0
    unreadable: int = 0


async def rotate_keys(
    url: str, model: Any, *, batch: int, out: TextIO, err: TextIO, stop_after_batches: int | None = None
) -> int:
    """Re-encrypt every record of `model` under its key set's current key, then verify them all.

    Records already under the current key are skipped, so running it again resumes an interrupted
    rotation. Where the backend keeps revisions each rewrite is a compare-and-swap on the revision
    the scan saw: a record another writer changed meanwhile is left as that writer stored it.
    A record the model would refuse (failing authentication, or stored in plain text where
    encryption is required) is never rewritten: re-encrypting it would make it look legitimate.
    """
    settings = model.__toast_settings__
    parsed = StorageURL.parse(url)
    if parsed.raw != settings.url.raw:
        raise StorageValidationError(
            f"{model.__qualname__} stores in {settings.url.masked!r}, not {parsed.masked!r}; pass the "
            "model's own storage URL",
            expected=settings.url.masked,
            actual=parsed.masked,
        )
    pipeline: codecs.Pipeline | None = settings.codec
    if pipeline is None or pipeline.encryption is None:
        raise StorageValidationError(
            f"{model.__qualname__} has no encryption configured; set ExternalConfigDict("
            "encryption=KeySet(...)) with the new key as current (and the old ones) first",
            expected="a model with encryption",
            actual=model.__qualname__,
        )
    current = pipeline.encryption.current
    result = Rotation()
    async with open_backend(url, Capability.SCAN) as backend:
        checked = backend.supports(Capability.REVISIONS)
        batches = 0
        with Progress(f"re-encrypting under key {current!r}", None, err) as progress:
            async for page in scan_all(backend, class_name=settings.storage_name, batch=batch):
                rewrites: list[StoredRecord] = []
                for record in page:
                    if _key_id(record) == current:
                        result.already += 1
                        continue
                    try:
                        data = codecs.decode(record, pipeline)
                    except RecordIntegrityError:
                        result.refused.append(str(record.id))
                        continue
                    payload, encoding = codecs.encode(
                        pipeline,
                        data,
                        class_name=record.class_name,
                        id=record.id,
                        schema_version=record.schema_version,
                    )
                    # The data, its timestamps and expiry stay as they were: only the bytes change.
                    revision = (record.revision or 0) + 1 if checked else record.revision
                    rewrites.append(
                        dataclasses.replace(record, payload=payload, encoding=encoding, revision=revision)
                    )
                if rewrites:
                    written = await _write_rotated(backend, rewrites, checked)
                    result.rotated += written
                    result.changed_meanwhile += len(rewrites) - written
                progress.advance(len(page))
                batches += 1
                if stop_after_batches is not None and batches >= stop_after_batches:
                    return 3
        async for page in scan_all(backend, class_name=settings.storage_name, batch=batch):
            for record in page:
                result.verified += 1
                if _key_id(record) != current:
                    result.stale += 1
                    continue
                try:
                    codecs.decode(record, pipeline)
                except RecordIntegrityError:
                    result.unreadable += 1
    refused = ""
    if result.refused:
        shown = ", ".join(result.refused[:10]) + (" ..." if len(result.refused) > 10 else "")
        refused = (
            f"; {len(result.refused)} refused and left untouched (they fail authentication or are not "
            f"encrypted; 'pydantic-toast inspect' one to see why): {shown}"
        )
    out.write(
        f"re-encrypted {result.rotated} {settings.storage_name} records under key {current!r}; "
        f"{result.already} already were; {result.changed_meanwhile} were changed by another writer "
        f"meanwhile and left as written{refused}. Verified {result.verified}: {result.stale} not under "
        f"key {current!r}, {result.unreadable} failing authentication\n"
    )
    if result.stale or result.unreadable:
        err.write(
            "pydantic-toast rotate-keys: some records are not under the current key yet; run the same "
            "command again (records already rotated are skipped), and check that every writer has the "
            f"new key set (current={current!r})\n"
        )
        return 1
    return 0


def _key_id(record: StoredRecord) -> str | None:
    if not _encrypted(record):
        return None
    info = encryption.envelope_info(record.payload)
    return None if info is None else info.key_id


async def _write_rotated(backend: StorageBackend, records: list[StoredRecord], checked: bool) -> int:
    """Write re-encrypted records; how many were written (the others changed meanwhile)."""
    if not checked:
        # No revisions to compare: a save landing between this batch's scan and this write is
        # overwritten with the data scanned (docs/security.md, "Rotating keys").
        await backend.save_records(records)
        return len(records)
    pending = records
    while pending:
        conflicts = await backend.save_records_checked(pending)
        if not conflicts:
            return len(pending)
        # A batch with a conflict writes nothing: drop the records changed meanwhile, try the rest.
        changed = {(conflict.id, conflict.class_name) for conflict in conflicts}
        pending = [record for record in pending if record.key not in changed]
    return 0


async def collect_garbage(
    url: str, roots: Sequence[str], *, grace: timedelta, yes: bool, batch: int, out: TextIO, err: TextIO
) -> int:
    models = [import_model(path, option="--roots") for path in roots]
    parsed = StorageURL.parse(url)
    _require_sqlite_table(parsed, backend_class(parsed.scheme))
    try:
        found = await garbage.collect(
            url,
            models,
            grace=grace,
            delete=yes,
            batch=batch,
            progress=lambda label, total: Progress(label, total, err),
        )
    finally:
        await aclose()
    out.write(f"{found.url.masked}: {found.scanned} records scanned\n")
    out.write(f"  kept: {found.roots} of the root classes, {found.reached} reached from them, ")
    out.write(f"{found.young} written within the grace period ({_duration_text(found.grace)})\n")
    for name, count in sorted(found.unknown.items()):
        out.write(f"  class {name!r} is not defined by the imported modules: {count} records\n")
    for name in sorted(found.unread):
        out.write(f"  live records of class {name} are not defined by the imported modules\n")
    if found.garbage:
        out.write(f"  {'class':<30} {'records':>9} {'bytes':>12}\n")
        for name, totals in sorted(found.garbage.items()):
            out.write(f"  {name:<30} {totals.records:>9} {totals.bytes:>12}\n")
    records, size = found.garbage_records, found.garbage_bytes
    if found.deleted is None:
        out.write(
            f"dry run: {records} unreachable records ({size} bytes) would be deleted; run again with "
            "--yes to delete them\n"
        )
    else:
        out.write(f"deleted {found.deleted} unreachable records ({size} bytes)\n")
    return 0


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"must be a number and a unit: s, m, h or d (e.g. 30m, 1h, 2d), got {text!r}"
        )
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def _duration_text(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _url_argument(parser: argparse.ArgumentParser, name: str, what: str) -> None:
    parser.add_argument(
        name,
        metavar=name.upper(),
        help=f"{what}, as in the model's storage=, e.g. 'sqlite:///toast.db' (quote it in the shell)",
    )


def _import_option(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "--import",
        dest=dest,
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first, e.g. one that calls register_backend() for its own URL scheme "
        "(repeatable)",
    )


def _command(
    commands: Any, name: str, summary: str, description: str, *, epilog: str = EXIT_CODES
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 79, break_on_hyphens=False),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _import_option(parser, "command_imports")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pydantic-toast",
        description=textwrap.fill(
            "Look after the records pydantic-toast models keep in a store: inspect, count, copy, "
            "expire and upgrade them. A store is named by the same URL as in the models' "
            "ExternalConfigDict(storage=...).",
            79,
            break_on_hyphens=False,
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _import_option(parser, "imports")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of these; 'COMMAND --help' tells more"
    )

    demo_parser = _command(
        commands,
        "demo",
        "define a model, dump it to a reference, restore it",
        "Run the quickstart story: define a model, dump it to a small reference, validate the reference "
        "back into the model, then the async API. It deletes its record at the end.",
    )
    demo_parser.add_argument(
        "--storage", metavar="URL", help="storage URL to run it on (default: SQLite in a temporary directory)"
    )

    inspect_parser = _command(
        commands,
        "inspect",
        "print the stored envelope of one record",
        "Print one record as JSON: class name, id, schema version, timestamps and the stored data.",
    )
    _url_argument(inspect_parser, "url", "storage URL")
    inspect_parser.add_argument(
        "id", metavar="ID", help="the record's id: the 'id' of its reference (a UUID)"
    )
    inspect_parser.add_argument(
        "--class",
        dest="class_name",
        metavar="NAME",
        help="the record's class name (its reference's 'class_name'); without it every class is searched",
    )
    inspect_parser.add_argument(
        "--decrypt",
        action="store_true",
        help="show the data of an encrypted record, decrypted with the keys of --model's configuration "
        "(without it, only the encryption metadata is shown)",
    )
    inspect_parser.add_argument(
        "--model", dest="model", metavar="MODULE:CLASS", help="with --decrypt: the model whose keys to use"
    )

    stats_parser = _command(
        commands,
        "stats",
        "records per class, bytes, oldest/newest, expired",
        "Count the records per class: how many, the bytes their payloads take in the store "
        "(compressed, where compression is on; --json also counts the records per encoding), how "
        "many have expired but are not purged yet, the oldest creation and the newest update.",
    )
    _url_argument(stats_parser, "url", "storage URL")
    stats_parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    copy_parser = _command(
        commands,
        "copy",
        "copy records between two backends (resumable)",
        "Copy records from SOURCE to DESTINATION (any two backends) in batches, then check that every "
        "source record is in the destination. Records keep their ids; one already in the destination "
        "with the same id is overwritten. The destination is created if needed. Progress is kept in a "
        "state file (default: .pydantic-toast-copy-<hash>.json in the current directory, removed when "
        "the copy completes), so running the same command again after an interruption resumes it.",
    )
    _url_argument(copy_parser, "source", "storage URL to read from")
    _url_argument(copy_parser, "destination", "storage URL to write to")
    copy_parser.add_argument("--class", dest="class_name", metavar="NAME", help="copy only this class")
    copy_parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"records read and written per round trip (default {DEFAULT_BATCH})",
    )
    copy_parser.add_argument(
        "--state-file", type=Path, metavar="PATH", help="where progress is kept for resuming"
    )
    copy_parser.add_argument("--restart", action="store_true", help="ignore a saved state and start over")

    purge_parser = _command(
        commands,
        "purge-expired",
        "delete expired records now",
        "Delete the records whose ttl has passed. Expired records are never returned anyway; the SQL "
        "and memory backends keep their rows until this runs, Redis expires keys by itself.",
    )
    _url_argument(purge_parser, "url", "storage URL")

    upgrade_parser = _command(
        commands,
        "upgrade",
        "rewrite records at the model's schema_version",
        "Load every record of the model stored at an older schema_version, run its @upgrade steps and "
        "store it again at the current version.",
    )
    _url_argument(upgrade_parser, "url", "the model's storage URL")
    upgrade_parser.add_argument(
        "--model",
        required=True,
        metavar="MODULE:CLASS",
        help="the model, e.g. 'myapp.models:UserProfile' (importable from the current directory)",
    )
    upgrade_parser.add_argument("--dry-run", action="store_true", help="only count what would change")
    upgrade_parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"records read and rewritten per round trip (default {DEFAULT_BATCH})",
    )

    rotate_parser = _command(
        commands,
        "rotate-keys",
        "re-encrypt a model's records under its current key",
        "Re-encrypt every record of the model under the current key of its ExternalConfigDict("
        "encryption=KeySet(...)), in batches, then check that every record is under that key and "
        "authenticates. Records already under the current key are skipped, so running the command "
        "again resumes an interrupted rotation. Loads and saves keep working meanwhile; see "
        "docs/security.md for the procedure and for writers without optimistic_concurrency.",
    )
    _url_argument(rotate_parser, "url", "the model's storage URL")
    rotate_parser.add_argument(
        "--model",
        required=True,
        metavar="MODULE:CLASS",
        help="the model, e.g. 'myapp.models:UserProfile' (importable from the current directory); its "
        "configuration holds the keys",
    )
    rotate_parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"records read and rewritten per round trip (default {DEFAULT_BATCH})",
    )

    gc_parser = _command(
        commands,
        "gc",
        "delete records that no root record reaches (dry run unless --yes)",
        "Find the records of the store that nothing live points at, and delete them with --yes. "
        "Live: every record of a --roots class (and its subclasses), every record written within "
        "the grace period, and every record these refer to, at any depth and in any store. The "
        "others are garbage: children of parents deleted without cascade, replaced children, the "
        "leftovers of failed dumps. Without --yes it only reports what it would delete, per class, "
        "with their bytes. The grace period is what makes it safe while applications write: make it "
        "longer than any dump takes, plus clock differences between machines. Every stored class "
        "must be defined by the imported modules (--roots, --import), or nothing is deleted.",
    )
    _url_argument(gc_parser, "url", "storage URL to collect")
    gc_parser.add_argument(
        "--roots",
        action="append",
        required=True,
        metavar="MODULE:CLASS",
        help="a class whose records are live by themselves, e.g. 'myapp.models:Order' (repeatable)",
    )
    gc_parser.add_argument(
        "--grace",
        type=_duration,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="keep records written less than this long ago, and what they refer to: 30m, 1h, 2d (default 1h)",
    )
    mode = gc_parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="only report (the default)")
    mode.add_argument("--yes", action="store_true", help="delete the unreachable records")
    gc_parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"records read or deleted per round trip (default {DEFAULT_BATCH})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for module in [*args.imports, *args.command_imports]:
            import_module(module, option="--import")
        return _dispatch(args, sys.stdout, sys.stderr)
    except StorageValidationError as exc:
        print(f"pydantic-toast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ExternalStorageError as exc:
        print(f"pydantic-toast {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        again = "; run the same command again to resume" if args.command in ("copy", "rotate-keys") else ""
        print(f"pydantic-toast {args.command}: interrupted{again}", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "demo":
        demo(args.storage)
        return 0
    if args.command == "inspect":
        return asyncio.run(
            inspect_record(
                args.url, args.id, args.class_name, out, decrypt=args.decrypt, model_path=args.model
            )
        )
    if args.command == "rotate-keys":
        model = import_model(args.model)
        return asyncio.run(rotate_keys(args.url, model, batch=args.batch_size, out=out, err=err))
    if args.command == "stats":
        return asyncio.run(print_stats(args.url, args.json, out))
    if args.command == "copy":
        return asyncio.run(
            copy_records(
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
        return asyncio.run(purge_expired(args.url, out))
    if args.command == "gc":
        return asyncio.run(
            collect_garbage(
                args.url, args.roots, grace=args.grace, yes=args.yes, batch=args.batch_size, out=out, err=err
            )
        )
    return asyncio.run(
        upgrade_records(args.url, args.model, dry_run=args.dry_run, batch=args.batch_size, out=out, err=err)
    )
