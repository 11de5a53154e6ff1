"""How a record is laid out in one Redis string value, and read back (see the package docstring)."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime
from uuid import UUID

import pydantic_core

from ..base import StoredRecord, format_timestamp, malformed_envelope, parse_timestamp

_ENVELOPE_HEAD = b'{"data":'
_HEAD_LENGTH = len(_ENVELOPE_HEAD)
_BINARY_HEAD = b"\x00"
_TAIL_MARKER = b',"schema_version":'
_NEVER = datetime.min.replace(tzinfo=UTC)
# The metadata tail this module writes after the data. Anything else falls back to a full parse.
_TAIL = re.compile(
    rb',"schema_version":(\d{1,18}),"created_at":"([0-9:.TZ+-]{20,40})","updated_at":"([0-9:.TZ+-]{20,40})"'
    rb'(?:,"revision":(\d{1,18}))?}\Z'
)


# How much of a value a check reads to find its revision and updated_at: a JSON envelope's end,
# a binary record's start (its header, which holds the revision first; every header this module
# writes fits in _HEAD_BYTES).
_TAIL_BYTES = 64
_HEAD_BYTES = 256
_REVISION_TAIL = re.compile(rb',"revision":(\d{1,18})}\Z')
_REVISION_HEAD = re.compile(rb'\x00{"revision":(\d{1,18}),')


# --------------------------------------------------------------------------- envelope codec


def _encode(record: StoredRecord) -> bytes:
    if record.encoding != "json":
        # The revision comes first here, so that a script reads it with GETRANGE on the value's
        # head (see _CHECKED_WRITE): the payload after the header has no bounded length.
        head = b"\x00{" if record.revision is None else b'\x00{"revision":%d,' % record.revision
        return head + b'"encoding":%b,"schema_version":%d,"created_at":"%b","updated_at":"%b"}\n%b' % (
            pydantic_core.to_json(record.encoding),
            record.schema_version,
            format_timestamp(record.created_at).encode(),
            format_timestamp(record.updated_at).encode(),
            record.payload,
        )
    value = b'{"data":%b,"schema_version":%d,"created_at":"%b","updated_at":"%b"}' % (
        record.payload,
        record.schema_version,
        format_timestamp(record.created_at).encode(),
        format_timestamp(record.updated_at).encode(),
    )
    if record.revision is not None:
        # Last, so that a script reads it with GETRANGE on the value's tail (see _CHECKED_WRITE).
        value = value[:-1] + b',"revision":%d}' % record.revision
    return value


# The last metadata tail decoded, with what it holds (schema_version, created_at, updated_at,
# revision). The records of a batch were mostly written together and share their tail byte for
# byte (one `now`, one version): comparing ~90 bytes replaces the match, two timestamp parses and
# an int per record. One tuple, replaced whole: thread-safe.
_last_tail: tuple[bytes, tuple[int, datetime, datetime, int | None]] = (b"", (0, _NEVER, _NEVER, None))


def _tail_fields(tail: bytes) -> tuple[int, datetime, datetime, int | None] | None:
    """What a metadata tail holds, or None when it is not one the fast decode reads (an impossible
    date, say: the full parse reports it properly)."""
    match = _TAIL.match(tail)
    if match is None:
        return None
    version_text, created, updated, revision_text = match.groups()
    try:
        created_at = parse_timestamp(created.decode())
        # A record never updated since it was created: no second decode and parse.
        updated_at = created_at if updated == created else parse_timestamp(updated.decode())
    except ValueError:
        return None
    return int(version_text), created_at, updated_at, None if revision_text is None else int(revision_text)


def _decode(id: UUID, class_name: str, value: bytes, key: bytes) -> StoredRecord:
    global _last_tail
    if value.startswith(_ENVELOPE_HEAD):
        # The data is JSON written before the tail; a "schema_version" key inside the data comes
        # before ours, so the last marker is the tail's.
        cut = value.rfind(_TAIL_MARKER)
        # 0x7D, 0x7B: the data object's closing and opening braces.
        if cut > _HEAD_LENGTH and value[cut - 1] == 0x7D and value[_HEAD_LENGTH] == 0x7B:
            tail = value[cut:]
            last = _last_tail
            fields = last[1] if last[0] == tail else _tail_fields(tail)
            if fields is not None:
                if fields is not last[1]:
                    _last_tail = (tail, fields)
                version, created_at, updated_at, revision = fields
                # Positional: this runs once per record of every load (keywords cost ~15% more).
                return StoredRecord(
                    id,
                    class_name,
                    value[_HEAD_LENGTH:cut],
                    version,
                    created_at,
                    updated_at,
                    None,
                    "json",
                    revision,
                )
    elif value.startswith(_BINARY_HEAD):
        header, _, payload = value[1:].partition(b"\n")
        try:
            parsed = pydantic_core.from_json(header)
        except ValueError:
            parsed = None
        return _binary_record(id, class_name, parsed, payload, key)
    try:
        envelope = pydantic_core.from_json(value)
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict):
        # Named by its length only: never the stored bytes themselves.
        raise malformed_envelope(
            class_name,
            id,
            f"Redis key {key.decode(errors='replace')!r} holds {len(value)} bytes that are not a JSON object",
        )
    return StoredRecord.from_envelope(id, class_name, envelope)


def _check_mark(value: bytes) -> bytes:
    """The part of a value that a check reads: it holds the revision and the updated_at."""
    return value[:_HEAD_BYTES] if value.startswith(_BINARY_HEAD) else value[-_TAIL_BYTES:]


def _found_revision(mark: bytes) -> int | None:
    """The revision a value's mark holds, as a check counts it; None for a missing key."""
    if not mark:
        return None
    binary = mark.startswith(_BINARY_HEAD)
    match = _REVISION_HEAD.match(mark) if binary else _REVISION_TAIL.search(mark)
    return 0 if match is None else int(match[1])


def _binary_record(id: UUID, class_name: str, header: object, payload: bytes, key: bytes) -> StoredRecord:
    if isinstance(header, dict):
        encoding, version = header.get("encoding"), header.get("schema_version")
        created, updated = header.get("created_at"), header.get("updated_at")
        revision = header.get("revision")
        if (
            isinstance(encoding, str)
            and isinstance(version, int)
            and isinstance(created, str)
            and isinstance(updated, str)
            and (revision is None or (isinstance(revision, int) and not isinstance(revision, bool)))
        ):
            with contextlib.suppress(ValueError):  # an impossible date
                return StoredRecord(
                    id,
                    class_name,
                    payload,
                    version,
                    parse_timestamp(created),
                    parse_timestamp(updated),
                    encoding=encoding,
                    revision=revision,
                )
    raise malformed_envelope(
        class_name,
        id,
        f"Redis key {key.decode(errors='replace')!r} holds a binary record whose header is not "
        '{"encoding": str, "schema_version": int, "created_at": str, "updated_at": str} with an '
        'optional leading "revision": int',
    )
