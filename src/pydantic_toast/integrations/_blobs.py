"""Content-addressed byte blobs in any pydantic-toast storage: what the adapters offload.

Temporal payloads and LangGraph checkpoint values are opaque bytes, not models. A `BlobStore`
keeps each one as a record of a private `ExternalBaseModel` subclass configured with the user's
storage URL, so every backend, the codec pipeline (compression) and the record envelope work
unchanged. The record's id is derived from the SHA-256 of the bytes: the same blob stored again
(every LangGraph step, every retried Temporal task) lands on the same record, and a store that
already holds it in this process is not written again.

This is the one seam for the core's coming content addressing and `ExternalTypeAdapter`: once
the core derives ids from content itself, `_content_record` becomes a plain constructor call and
the private `state_of` assignment below goes away; nothing else in the adapters changes.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .. import forksafe
from .._record_state import state_of
from ..base import ExternalBaseModel, ExternalConfigDict
from ..exceptions import RecordIntegrityError, StorageValidationError

__all__ = ["DEFAULT_BLOB_STORAGE_NAME", "BlobStore", "content_id"]

DEFAULT_BLOB_STORAGE_NAME = "pydantic_toast_blob"

# Ids of blobs this process wrote, per store: a bounded memory, so a long-running worker does not
# grow without end. Forgetting an id costs one idempotent rewrite of the same record, no more.
_REMEMBERED_IDS = 4096
# Seconds a thread waits for another thread writing the same blob before writing it too.
_WAIT_FOR_WRITER = 60.0


class _BlobRecord(ExternalBaseModel):
    """One stored blob and the digest it must match when read back (abstract: no storage)."""

    sha256: str
    data: bytes


_models_lock = forksafe.Lock()
_models: dict[tuple[str, str, str | None], type[_BlobRecord]] = {}


def _blob_model(storage: str, storage_name: str, compression: str | None) -> type[_BlobRecord]:
    """The blob record class for one store, defined once per process (a class claims its name)."""
    key = (storage, storage_name, compression)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            config = ExternalConfigDict(storage=storage, storage_name=storage_name)
            if compression is not None:
                config["compression"] = compression
            model = type(
                "PydanticToastBlob",
                (_BlobRecord,),
                {"__module__": __name__, "model_config": config},
            )
            _models[key] = model
        return model


def content_id(data: bytes) -> tuple[uuid.UUID, str]:
    """The record id and the SHA-256 hex digest of `data`: equal bytes, equal id, in any process."""
    digest = hashlib.sha256(data).digest()
    # Shaped as a version-4 UUID (the form every backend stores); 122 bits of the hash remain.
    return uuid.UUID(bytes=digest[:16], version=4), digest.hex()


class BlobStore:
    """Bytes in and out of a pydantic-toast storage, keyed by their content.

    `put`/`get` are sync (the library's bridge thread does the I/O, so they work inside a running
    loop, blocking it for the I/O time); `aput_many`/`aget_many` run on the caller's loop, one
    batch per call.
    """

    def __init__(
        self,
        storage: str,
        *,
        storage_name: str = DEFAULT_BLOB_STORAGE_NAME,
        compression: str | None = None,
    ) -> None:
        self._model = _blob_model(storage, storage_name, compression)
        self._ids_lock = forksafe.Lock()  # Celery's prefork pool forks workers
        self._written: OrderedDict[uuid.UUID, None] = OrderedDict()
        self._writing: dict[uuid.UUID, threading.Event] = {}
        _stores.add(self)

    @property
    def storage_name(self) -> str:
        """The class name the blob records carry in the store."""
        return self._model.__toast_settings__.storage_name

    # ------------------------------------------------------------------ writing

    def put(self, data: bytes) -> uuid.UUID:
        """Store `data` unless this process already did; return its content id.

        Threads putting the same bytes at once (LangGraph writes a step's checkpoint and its
        pending writes from a background thread) wait for the first one's write, not write too.
        """
        record_id, digest = content_id(data)
        mine: threading.Event | None = None
        while mine is None:
            with self._ids_lock:
                if record_id in self._written:
                    self._written.move_to_end(record_id)
                    return record_id
                theirs = self._writing.get(record_id)
                if theirs is None:
                    mine = self._writing[record_id] = threading.Event()
                    break
            # Another thread writes these bytes: wait, then look again (it may have failed). A
            # writer that never finishes (a hung store) is overtaken: the write is idempotent.
            if not theirs.wait(_WAIT_FOR_WRITER):
                break
        try:
            self._content_record(record_id, digest, data).model_dump()
            self._remember(record_id)
        finally:
            if mine is not None:
                with self._ids_lock:
                    self._writing.pop(record_id, None)
                mine.set()
        return record_id

    async def aput_many(self, blobs: Sequence[bytes]) -> list[uuid.UUID]:
        """Store every blob not yet written by this process, in one batch; return their ids."""
        ids: list[uuid.UUID] = []
        pending: dict[uuid.UUID, _BlobRecord] = {}
        for data in blobs:
            record_id, digest = content_id(data)
            ids.append(record_id)
            if record_id not in pending and not self._seen(record_id):
                pending[record_id] = self._content_record(record_id, digest, data)
        if pending:
            await self._model.save_many(pending.values())
            for record_id in pending:
                self._remember(record_id)
        return ids

    def _content_record(self, record_id: uuid.UUID, digest: str, data: bytes) -> _BlobRecord:
        record = self._model(sha256=digest, data=data)
        # The content id instead of a random one: the only use of the core's private state here.
        state_of(record).id = record_id
        return record

    def _seen(self, record_id: uuid.UUID) -> bool:
        with self._ids_lock:
            if record_id in self._written:
                self._written.move_to_end(record_id)
                return True
            return False

    def _remember(self, record_id: uuid.UUID) -> None:
        with self._ids_lock:
            self._written[record_id] = None
            while len(self._written) > _REMEMBERED_IDS:
                self._written.popitem(last=False)

    # ------------------------------------------------------------------ reading

    def get(self, record_id: uuid.UUID | str) -> bytes:
        """The bytes stored under `record_id`, checked against their digest."""
        parsed = _parse_id(record_id)
        record = self._model.model_validate({"class_name": self.storage_name, "id": str(parsed)})
        return self._checked(parsed, record)

    async def aget_many(self, record_ids: Sequence[uuid.UUID | str]) -> list[bytes]:
        """The bytes of several blobs in order, loaded in one batch."""
        parsed = [_parse_id(record_id) for record_id in record_ids]
        records = await self._model.load_many(parsed)
        return [self._checked(record_id, record) for record_id, record in zip(parsed, records, strict=True)]

    def _checked(self, record_id: uuid.UUID, record: _BlobRecord) -> bytes:
        # A blob is trusted only if its bytes hash to the id it was asked for: a record edited or
        # copied under another id is refused, never handed to a deserializer.
        expected_id, digest = content_id(record.data)
        if expected_id != record_id or digest != record.sha256:
            raise RecordIntegrityError(
                f"stored blob {record_id} does not match its content hash; the record was changed "
                "or copied in the store — restore it from a backup or re-run the work that wrote it",
                class_name=self.storage_name,
                id=record_id,
                errors=[{"loc": (), "type": "content_hash"}],
            )
        return record.data


# Every store of this process, for the fork hook below.
_stores: weakref.WeakSet[BlobStore] = weakref.WeakSet()


def _forget_writers_lost_to_fork() -> None:
    # A forked child has only the thread that forked: the writers in flight at that moment never
    # finish there, and a put of the same bytes would wait _WAIT_FOR_WRITER for them. Their events
    # are dropped unused, since the lock inside one may have been held by a thread the child lacks.
    for store in list(_stores):
        store._writing = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writers_lost_to_fork)


def _parse_id(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise StorageValidationError(
            "a blob reference must hold a UUID id; the message or checkpoint that carried it is "
            "damaged or was not written by pydantic-toast",
            expected="UUID",
            actual=type(value).__name__,
        ) from None
