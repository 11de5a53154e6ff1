"""Where a record lives in an object store and what its object holds.

Key: `{storage_name}/{uuid}.json` under the store's prefix (the bucket prefix, or the directory),
so `s3://bucket/some/prefix` puts a record at `some/prefix/{storage_name}/{uuid}.json` (the
layout of the upstream pydantic-toast S3 backend). The object is the contract's envelope as JSON,
metadata included, so S3 and a local directory hold the same bytes and one GET returns all of it:

    {"data": {...}, "schema_version": 1, "created_at": "…Z", "updated_at": "…Z"}

plus `"expires_at": "…Z"` for a record with a TTL and `"revision": N` for one with a revision. A
payload of another encoding (compressed: `json+zlib`) is stored as `"encoding"` and the bytes as
base64 `"payload"` in place of `"data"`: the contract's envelope for encoded records, and still a
JSON object, so one key serves both (a save that switches encodings replaces the object) and a
load needs no second request to find which one exists.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from urllib.parse import unquote
from uuid import UUID

import pydantic_core

from ...exceptions import StorageValidationError
from ..base import StoredRecord, envelope_fields, format_timestamp, malformed_envelope, parse_timestamp

__all__ = ["SUFFIX", "decode_object", "encode_object", "object_key", "parse_key", "segment"]

SUFFIX = ".json"
# Storage names become one path segment: no '/', no '.'/'..', nothing a store would reinterpret.
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_KEY = re.compile(
    r"^(?P<name>[^/]+)/(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.json$"
)


def segment(class_name: str) -> str:
    """The key segment of a storage name: the name itself when it is a plain segment, else the
    name with every other character percent-encoded (`list[Product]` -> `list%5BProduct%5D`), so
    type names of `Toast` values fit. A plain name never holds '%', so this is reversible."""
    if _SEGMENT.match(class_name):
        return class_name
    encoded = "".join(
        char
        if char.isascii() and (char.isalnum() or char in "_-")
        else "".join(f"%{b:02X}" for b in char.encode())
        for char in class_name
    )
    if len(encoded) > 255:
        raise StorageValidationError(
            f"storage name {class_name[:40]!r}… is too long for one segment of an object key (at most "
            "255 characters once encoded); set a shorter storage_name= (or Toast(name=...))",
            expected="a storage name of at most 255 key characters",
            actual=len(encoded),
        )
    return encoded


def object_key(id: UUID, class_name: str) -> str:
    return f"{segment(class_name)}/{id}{SUFFIX}"


def parse_key(key: str) -> tuple[UUID, str] | None:
    """(id, class_name) of a record's key, None for any other object (ours or not)."""
    found = _KEY.match(key)
    if found is None:
        return None
    name = found["name"]
    return UUID(found["id"]), unquote(name) if "%" in name else name


def encode_object(record: StoredRecord) -> bytes:
    # Built from pieces rather than a dict: the JSON payload goes in as it is, never re-serialized.
    if record.encoding == "json":
        head = b'{"data":' + record.payload
    else:
        head = b'{"encoding":%b,"payload":"%b"' % (
            pydantic_core.to_json(record.encoding),
            base64.b64encode(record.payload),
        )
    tail = b',"schema_version":%d,"created_at":"%b","updated_at":"%b"' % (
        record.schema_version,
        format_timestamp(record.created_at).encode(),
        format_timestamp(record.updated_at).encode(),
    )
    if record.expires_at is not None:
        tail += b',"expires_at":"%b"' % format_timestamp(record.expires_at).encode()
    if record.revision is not None:
        tail += b',"revision":%d' % record.revision
    return head + tail + b"}"


_DATA_HEAD = b'{"data":'
_META_HEAD = b',"schema_version":'


def decode_object(id: UUID, class_name: str, body: bytes) -> StoredRecord:
    """The record an object holds; `StorageValidationError` (naming no stored value) if it is not one.

    `data` may be any JSON value: one that is not an object reaches the model, which refuses it
    as a `StoredDataError` naming where, as the SQL backends' records do.
    """
    try:
        fast = _split_own_layout(body)
        if fast is not None:
            payload, envelope = fast
        else:
            envelope = pydantic_core.from_json(body)
            if not isinstance(envelope, dict):
                raise TypeError("the object is not a JSON object")
            payload = None
        return _record(id, class_name, payload, envelope)
    except (KeyError, TypeError, ValueError) as exc:
        raise malformed_envelope(class_name, id, exc) from None


def _split_own_layout(body: bytes) -> tuple[bytes, dict[str, object]] | None:
    """(payload, metadata) of an object as `encode_object` writes it, without parsing the payload.

    The metadata follows the data, so the last `,"schema_version":` starts it: inside the data
    that text can only be a nested key, which comes earlier. Anything else (another writer's
    key order or spacing) returns None and is parsed whole. Were a writer to put other keys
    between the data and the metadata, the payload would end in text that is not JSON, refused
    when the model validates it: never another value.
    """
    if not body.startswith(_DATA_HEAD):
        return None
    cut = body.rfind(_META_HEAD)
    if cut <= len(_DATA_HEAD):
        return None
    metadata = pydantic_core.from_json(b"{" + body[cut + 1 :])
    if (
        not isinstance(metadata, dict)
        or "created_at" not in metadata
        or metadata.keys() & {"data", "encoding"}
    ):
        return None
    return body[len(_DATA_HEAD) : cut], metadata


def _record(id: UUID, class_name: str, payload: bytes | None, envelope: dict[str, object]) -> StoredRecord:
    payload, encoding, version, revision = envelope_fields(envelope, payload)
    expires = envelope.get("expires_at")
    return StoredRecord(
        id=id,
        class_name=class_name,
        payload=payload,
        schema_version=version,
        created_at=_timestamp(envelope.get("created_at")),
        updated_at=_timestamp(envelope.get("updated_at", envelope.get("created_at"))),
        expires_at=None if expires is None else _timestamp(expires),
        encoding=encoding,
        revision=revision,
    )


def _timestamp(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError("timestamps must be ISO 8601 strings")
    return parse_timestamp(value)
