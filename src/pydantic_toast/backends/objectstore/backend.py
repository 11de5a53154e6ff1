"""The object-store backends: `s3://bucket/prefix` (S3 and S3-compatible servers),
`az://container/prefix` (Azure Blob Storage), `gs://bucket/prefix` (Google Cloud Storage, untested)
and `file:///dir` (a local directory), all through obstore, with one object per record.

Every request of a batch goes out concurrently, at most `concurrency` (URL option, default 32)
at a time per backend instance. What an object holds and where it lives: `_layout.py`; the URL
options: `_config.py`; opening the store and credentials: `_client.py`.

S3 has no per-object expiry and no conditional multi-object write, so: expiry is stored in the
object and checked on every read (`purge_expired` deletes expired objects with multi-object
deletes; a bucket lifecycle rule does it server-side, see docs/backends/s3.md); revisions use
conditional puts (If-Match / If-None-Match; Azure has the same headers, GCS generation
preconditions), checked for the whole batch before any write.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from uuid import UUID

from ...exceptions import StorageConnectionError, StorageValidationError
from ...url import StorageURL
from .._errors import ErrorRow, ErrorTable, raise_unchained
from .._options import BackendOptions
from ..base import (
    Capability,
    RecordKey,
    RecordStorageBackend,
    RevisionConflict,
    StoredRecord,
    check_revision,
)
from ._client import open_store
from ._config import AzureOptions, FileOptions, GCSOptions, S3Options, StoreSettings, store_settings
from ._filelock import directory_lock
from ._layout import decode_object, encode_object, object_key, parse_key

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = ["AzureBackend", "FileStoreBackend", "GCSBackend", "ObjectStoreBackend", "S3Backend"]

T = TypeVar("T")

# S3 deletes at most 1000 keys per multi-object delete request.
_DELETE_CHUNK = 1000
_LIST_CHUNK = 1000
# Access key ids (not secrets, but nobody's business in a log) as AWS shapes them.
_S3_CODE = re.compile(r"<Code>([A-Za-z]{1,64})</Code>")
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")


_CREDENTIAL_HINTS = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the role",
    "az": "AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN, a service principal or the managed identity",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_SERVICE_ACCOUNT, or the instance's service account",
}


class _ConflictError(Exception):
    """A conditional put found another object than the one it was based on."""


class ObjectStoreBackend(RecordStorageBackend):
    """What S3 and local directories share; see the module docstring."""

    declared_capabilities = frozenset({Capability.TTL})

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = StorageURL.parse(url)
        self._settings: StoreSettings = store_settings(parsed)
        self._shown = parsed.masked
        self._store: ObjectStore | None = None
        self._gate: asyncio.Semaphore | None = None
        noun = {"s3": "bucket", "gs": "bucket", "az": "container"}.get(self._settings.kind, "directory")
        where = f"{noun} {self._settings.location!r}"
        credentials = _CREDENTIAL_HINTS.get(self._settings.kind, _CREDENTIAL_HINTS["s3"])
        self._errors = ErrorTable(
            [
                ErrorRow(
                    (),
                    lambda exc: f"the {where} does not exist; create it, or fix the storage URL",
                    words=("NoSuchBucket", "ContainerNotFound"),
                ),
                ErrorRow(
                    _driver_types("PermissionDeniedError", "UnauthenticatedError"),
                    lambda exc: (
                        f"the server refused the request ({_first_line(exc)}); check the "
                        f"credentials ({credentials}) and that they may read and write the {where}"
                    ),
                    words=("403 Forbidden", "401 Unauthorized"),
                ),
                ErrorRow(
                    (),
                    lambda exc: (
                        f"cannot reach the server ({_first_line(exc)}); check endpoint_url and "
                        f"the network; requests give up after timeout={self._settings.timeout:g} s"
                    ),
                    words=("error sending request", "timed out", "connection", "Connection"),
                ),
                ErrorRow(
                    (PermissionError,), lambda exc: f"no permission on the {where} ({_first_line(exc)})"
                ),
            ],
            default=_first_line,
        )

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        store_settings(url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._shown!r})"

    # ------------------------------------------------------------------ lifetime

    async def connect(self) -> None:
        if self._store is not None:
            return
        store = await self._call("connect", asyncio.to_thread, open_store, self._settings)
        if self._settings.kind != "file":
            # One listing request checks the bucket and the credentials now, not at first save.
            # A principal allowed objects but not listings (AccessDenied) still connects.
            from obstore import list as list_objects

            await self._call("connect", _probe, list_objects(store, None, chunk_size=1))
        self._gate = asyncio.Semaphore(self._settings.concurrency)
        self._store = store

    async def disconnect(self) -> None:
        # obstore's stores own no connection that needs closing: their pool goes with them.
        self._store = None
        self._gate = None

    # ------------------------------------------------------------------ requests

    def _connected(self) -> tuple[ObjectStore, asyncio.Semaphore]:
        if self._store is None or self._gate is None:
            raise StorageConnectionError(f"the backend for {self._shown!r} is not connected", url=self._shown)
        return self._store, self._gate

    async def _call(self, action: str, function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run one driver request; its failures leave as StorageConnectionError, unchained."""
        from obstore.exceptions import BaseError

        try:
            return await function(*args, **kwargs)
        except (BaseError, OSError) as exc:
            raise_unchained(
                StorageConnectionError(
                    f"{self._name()} {action} failed on {self._shown!r}: {self._errors.hint(exc)}",
                    url=self._shown,
                )
            )

    def _waves(self, requests: int) -> int:
        """Round trips of `requests` sent concurrently: one per `concurrency` of them, since S3 has
        no multi-object read or write and a batch waits for each wave, not for each request."""
        return -(-requests // self._settings.concurrency)

    def _name(self) -> str:
        return {"s3": "S3", "az": "Azure Blob", "gs": "GCS"}.get(self._settings.kind, "file store")

    async def _get(self, key: str) -> tuple[bytes, str | None] | None:
        """The object's bytes and ETag, None when there is no such key."""
        from obstore import get_async

        store, gate = self._connected()

        async def fetch() -> tuple[bytes, str | None] | None:
            try:
                result = await get_async(store, key)
                body = bytes(await result.bytes_async())
            except FileNotFoundError as exc:
                # A missing bucket answers 404 too; only a missing key means "no record".
                if _missing_container(exc):
                    raise
                return None
            return body, result.meta.get("e_tag")

        async with gate:
            return await self._call("load", fetch)

    async def _put(self, key: str, body: bytes, mode: Any = None) -> None:
        """Write one object; with a `mode` (a conditional put), `_ConflictError` when its condition fails."""
        from obstore import put_async
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        store, gate = self._connected()
        options: dict[str, Any] = {}
        if self._settings.kind != "file":
            options["attributes"] = {"Content-Type": "application/json"}

        async def put() -> None:
            try:
                await put_async(store, key, body, mode=mode, **options)
            except (AlreadyExistsError, PreconditionError):
                if mode is None:
                    raise
                raise _ConflictError from None

        async with gate:
            await self._call("save", put)

    async def _delete(self, keys: Sequence[str]) -> None:
        from obstore import delete_async

        store, gate = self._connected()
        for start in range(0, len(keys), _DELETE_CHUNK):
            chunk = list(keys[start : start + _DELETE_CHUNK])
            async with gate:
                # A list goes out as S3 multi-object deletes; a missing key is no error there.
                await self._call("delete", _ignore_missing, delete_async(store, chunk))

    # ------------------------------------------------------------------ records

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        latest = {record.key: record for record in records}
        await _all(self._put(object_key(*key), encode_object(record)) for key, record in latest.items())
        self.stats.add(round_trips=self._waves(len(latest)), written=len(latest))

    async def _read(self, key: RecordKey) -> tuple[StoredRecord | None, str | None]:
        """The stored record (expired ones too) and its ETag."""
        found = await self._get(object_key(*key))
        if found is None:
            return None, None
        return decode_object(key[0], key[1], found[0]), found[1]

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        unique = list(dict.fromkeys(keys))
        found = await _gather_all(self._read(key) for key in unique)
        now = datetime.now(UTC)
        live = {key: _live(record, now) for key, (record, _) in zip(unique, found, strict=True)}
        self.stats.add(round_trips=self._waves(len(unique)), read=sum(r is not None for r in live.values()))
        return [live[key] for key in keys]

    async def delete(self, id: UUID, class_name: str) -> bool:
        record, _ = await self._read((id, class_name))
        if record is None:
            self.stats.add()
            return False
        await self._delete([object_key(id, class_name)])
        self.stats.add(round_trips=2)
        return _live(record, datetime.now(UTC)) is not None

    async def _check_revisions(
        self, latest: Sequence[StoredRecord]
    ) -> tuple[list[RevisionConflict], dict[RecordKey, str | None], set[RecordKey]]:
        """Read the stored record of every checked record: the conflicts, each stored object's
        ETag (None: no object), and the records already stored by this very write (a repeat)."""
        checked = [record for record in latest if record.revision is not None]
        stored = await _gather_all(self._read(record.key) for record in checked)
        now = datetime.now(UTC)
        conflicts: list[RevisionConflict] = []
        etags: dict[RecordKey, str | None] = {}
        done: set[RecordKey] = set()
        for record, (found, etag) in zip(checked, stored, strict=True):
            current = _live(found, now)
            conflict = check_revision(
                record,
                None if current is None else current.revision or 0,
                None if current is None else current.updated_at,
            )
            if conflict is not None:
                conflicts.append(conflict)
            elif current is not None and current.revision == record.revision:
                done.add(record.key)
            etags[record.key] = etag
        self.stats.add(round_trips=self._waves(len(checked)))
        return conflicts, etags, done

    # ------------------------------------------------------------------ listing

    async def _list_keys(self, prefix: str | None, cursor: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to `limit` record keys after `cursor`, in key order, and whether more may follow."""
        from obstore import list as list_objects

        store, _ = self._connected()
        if self._settings.kind != "file":
            # S3, Azure and GCS list in key order. S3 and GCS start after `offset` on the server:
            # read only this page. obstore's Azure listing with an offset never ends against
            # Azurite, so Azure lists from the start and skips up to the cursor here.
            keys: list[str] = []
            server_offset = self._settings.kind != "az"
            stream = list_objects(
                store, prefix, offset=cursor if server_offset else None, chunk_size=min(limit, _LIST_CHUNK)
            )
            while len(keys) < limit:
                chunk = await self._call("scan", _next_chunk, stream)
                if chunk is None:
                    return keys, False
                keys.extend(
                    path
                    for path in (meta["path"] for meta in chunk)
                    if parse_key(path) is not None and (server_offset or cursor is None or path > cursor)
                )
            return keys[:limit], True
        # A directory walk has no order: read it all, then sort and cut the page.
        metas = await self._call("scan", list_objects(store, prefix).collect_async)
        ordered = sorted(
            path
            for path in (meta["path"] for meta in metas)
            if parse_key(path) is not None and (cursor is None or path > cursor)
        )
        return ordered[:limit], len(ordered) > limit

    async def scan_records(
        self, *, cursor: str | None, limit: int, class_name: str | None = None, include_expired: bool = False
    ) -> tuple[list[StoredRecord], str | None]:
        if cursor is not None:
            parsed = parse_key(cursor)
            if parsed is None or (class_name is not None and parsed[1] != class_name):
                raise StorageValidationError(
                    f"cursor {cursor[:80]!r} was not made by a listing of this object store; start "
                    "the listing again without a cursor",
                    expected="a cursor of this backend",
                    actual=cursor[:80],
                )
        prefix = None if class_name is None else f"{object_key(UUID(int=0), class_name).split('/')[0]}/"
        keys, more = await self._list_keys(prefix, cursor, limit)
        records = await _gather_all(self._read(_key_of(key)) for key in keys)
        now = datetime.now(UTC)
        page = [
            record
            for record, _ in records
            if record is not None and (include_expired or _live(record, now) is not None)
        ]
        self.stats.add(round_trips=1 + self._waves(len(keys)), read=len(page))
        return page, (keys[-1] if more and keys else None)

    async def find_record(self, id: UUID) -> StoredRecord | None:
        """One GET per storage name in the store (its top-level "directories"), not a full scan."""
        from obstore import list_with_delimiter_async

        store, _ = self._connected()
        listing = await self._call("scan", list_with_delimiter_async, store)
        names = [prefix.rstrip("/").rsplit("/", 1)[-1] for prefix in listing["common_prefixes"]]
        found = await _gather_all(self._read((id, name)) for name in names)
        self.stats.add(round_trips=1 + self._waves(len(names)))
        return next((record for record, _ in found if record is not None), None)

    async def purge_expired(self) -> int:
        """Read every record's expiry and delete the expired ones (multi-object deletes).

        A record saved again between this read and the delete is deleted with the expired ones:
        run it when nothing writes the expiring records, or let a lifecycle rule do the work.
        """
        now = datetime.now(UTC)
        expired: list[str] = []
        cursor: str | None = None
        while True:
            keys, more = await self._list_keys(None, cursor, _LIST_CHUNK)
            records = await _gather_all(self._read(_key_of(key)) for key in keys)
            expired.extend(
                key
                for key, (record, _) in zip(keys, records, strict=True)
                if record is not None and _live(record, now) is None
            )
            self.stats.add(round_trips=1 + self._waves(len(keys)))
            if not more or not keys:
                break
            cursor = keys[-1]
        await self._delete(expired)
        return len(expired)


class S3Backend(ObjectStoreBackend):
    """`s3://bucket[/prefix]`: AWS S3 and S3-compatible servers (MinIO, Ceph RGW, R2, moto...)."""

    options_model: ClassVar[type[BackendOptions] | None] = S3Options

    async def save_records_checked(self, records: Sequence[StoredRecord]) -> list[RevisionConflict]:
        """Check every revision (one GET each), then write each record with a conditional put.

        Nothing is written when the checks find a conflict. A writer that changes a record
        between the checks and the puts makes that put fail (If-Match / If-None-Match): its
        conflict is reported, and the batch's other records may already be written.
        """
        latest = list({record.key: record for record in records}.values())
        conflicts, etags, done = await self._check_revisions(latest)
        if conflicts:
            return conflicts

        async def write(record: StoredRecord) -> RevisionConflict | None:
            if record.revision is None:
                await self._put(object_key(*record.key), encode_object(record))
                return None
            etag = etags.get(record.key)
            try:
                # Replace only the object that was checked; create only if there was none.
                mode = "create" if etag is None else {"e_tag": etag}
                await self._put(object_key(*record.key), encode_object(record), mode)
            except _ConflictError:
                found, _ = await self._read(record.key)
                current = _live(found, datetime.now(UTC))
                found_revision = None if current is None else current.revision or 0
                return RevisionConflict(record.id, record.class_name, record.revision - 1, found_revision)
            return None

        pending = [record for record in latest if record.key not in done]
        results = await _gather_all(write(record) for record in pending)
        self.stats.add(round_trips=self._waves(len(pending)), written=len(pending))
        return [conflict for conflict in results if conflict is not None]


class AzureBackend(S3Backend):
    """`az://container[/prefix]`: Azure Blob Storage, with S3's conditional puts (If-Match on the
    blob's ETag, If-None-Match: * to create), so revisions are checked the same way."""

    options_model = AzureOptions


class GCSBackend(S3Backend):
    """`gs://bucket[/prefix]`: Google Cloud Storage; untested (no GCS server in the test suite).

    obstore maps conditional puts to GCS generation preconditions, so revisions work as on S3.
    """

    options_model = GCSOptions


class FileStoreBackend(ObjectStoreBackend):
    """`file:///abs/dir` or `file://relative/dir`: the same objects as files in a directory.

    Each file is written to a temporary name and renamed into place (obstore's LocalStore does
    both), so a reader sees the old file or the new one, never a part. Revisions are checked
    under a lock on the directory (`_filelock.py`), since a local store has no conditional replace.
    """

    options_model = FileOptions

    async def save_records_checked(self, records: Sequence[StoredRecord]) -> list[RevisionConflict]:
        """Check and write under the directory's lock (`_filelock.py`): atomic against every other
        checked writer, in this process or another; nothing is written when a check fails."""
        latest = list({record.key: record for record in records}.values())
        lock = directory_lock(Path(self._settings.location), self._settings.timeout)
        try:
            async with lock:
                conflicts, _, done = await self._check_revisions(latest)
                if conflicts:
                    return conflicts
                pending = [record for record in latest if record.key not in done]
                await _all(self._put(object_key(*r.key), encode_object(r)) for r in pending)
        except (TimeoutError, OSError) as exc:
            raise_unchained(
                StorageConnectionError(
                    f"file store save failed on {self._shown!r}: {_first_line(exc)}", url=self._shown
                )
            )
        self.stats.add(round_trips=self._waves(len(pending)), written=len(pending))
        return []


def _live(record: StoredRecord | None, now: datetime) -> StoredRecord | None:
    if record is None or (record.expires_at is not None and record.expires_at <= now):
        return None
    return record


def _key_of(key: str) -> RecordKey:
    parsed = parse_key(key)
    assert parsed is not None  # listings keep record keys only
    return parsed


async def _gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await all concurrently, each to its end, then raise the first failure: no request is left
    running when a batch fails."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]  # no exception left among them


async def _all(awaitables: Iterable[Awaitable[object]]) -> None:
    await _gather_all(awaitables)


async def _probe(stream: Any) -> None:
    """Read the first page of a listing; a principal allowed objects but not listings passes."""
    from obstore.exceptions import BaseError

    try:
        await _next_chunk(stream)
    except BaseError as exc:
        # AccessDenied: a policy without s3:ListBucket. A bad signature or key id still fails.
        if _s3_code(exc) != "AccessDenied":
            raise


async def _next_chunk(stream: Any) -> Any:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def _ignore_missing(request: Awaitable[None]) -> None:
    try:
        await request
    except FileNotFoundError as exc:
        if _missing_container(exc):
            raise


def _missing_container(exc: BaseException) -> bool:
    """A 404 about the bucket or container itself, not about one missing key."""
    text = str(exc)
    return "NoSuchBucket" in text or "ContainerNotFound" in text


def _driver_types(*names: str) -> tuple[type[BaseException], ...]:
    from obstore import exceptions

    return tuple(getattr(exceptions, name) for name in names)


def _s3_code(exc: BaseException) -> str | None:
    """The error code of S3's XML answer (`NoSuchBucket`, `SignatureDoesNotMatch`...), if any."""
    found = _S3_CODE.search(str(exc))
    return None if found is None else found[1]


def _first_line(exc: BaseException) -> str:
    """The driver's message, first line only (the rest is the answer's body and a debug dump, which
    may echo request details), plus S3's error code; access key ids masked."""
    text = str(exc).strip().split("\n", 1)[0].removesuffix('<?xml version="1.0" encoding="utf-8"?>').strip()
    code = _s3_code(exc)
    return f"{type(exc).__name__}: {_ACCESS_KEY_ID.sub('***', text)[:400]}" + (f" [{code}]" if code else "")
