"""Content-addressed models (`content_addressed=True`): a record id made from the model's data.

The id is `_content.content_id` of a SHA-256 over the storage name, the schema_version and the
*canonical form* of the model's stored JSON, not over the JSON bytes as written:

- PostgreSQL keeps a model's data as `jsonb`, which reorders object keys, drops whitespace and
  writes numbers by their decimal value (`1e16` comes back as `10000000000000000`); the bytes a
  load reads are not the bytes that were written. The canonical form is a function of the JSON
  *value* only: keys sorted at every level, compact separators, ASCII escapes, and each number
  written by its decimal value (an integral value as an integer, `1.0` and `1` alike; any other
  as the nearest float). Every backend returns data with the same canonical form as was written,
  so a load verifies the stored data itself, before any validator of the user's sees it, and
  whatever its schema_version (records of older versions are checked before their upgrade).
- A consequence: two models whose data differ only where JSON values are equal in Python (`1`
  and `1.0` in an `Any` field, `0.0` and `-0.0`) have one id, as they are `==`.
- References keep the contract's shape, `{"class_name", "id"}` (plain models' references must not
  change, and a reference's shape does not say which kind of model made it): a load checks the
  data against the id's 122 bits, where a `Toast` reference also carries the full digest. Finding
  other data with the same 122 bits needs about 2**122 hashes for a given record; two colliding
  models made on purpose, about 2**61.
- The canonical form is a stored format: ids already written depend on it, so it is made with the
  standard library's `json` (float `repr`, `sort_keys`, `ensure_ascii`), whose output does not
  change between versions, rather than with a faster serializer whose number formatting might.
  A new form would need a new domain prefix (`_hashed`).
- `schema_version` is hashed in: equal data at two versions are two records, so a record is never
  read with the upgrade steps of another version.

Encryption is refused with content addressing (at class definition): the id would have to be a
keyed MAC of the plaintext, and a `KeySet`'s keys are meant to be retired by `rotate-keys`, after
which no record's id could be checked any more.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING
from uuid import UUID

from . import _content, codecs
from .exceptions import RecordIntegrityError, StorageValidationError

if TYPE_CHECKING:
    from ._record_state import RecordState
    from ._settings import ModelSettings
    from .backends.base import StoredRecord
    from .base import ExternalBaseModel

__all__ = ["canonical", "check_loaded", "identify", "known_key", "record_id"]

# A number whose decimal exponent is beyond this is no float pydantic writes: kept as a float
# (possibly inf) rather than expanded into a huge integer, so hostile data costs no memory.
_MAX_EXPONENT = 400


def _number(text: str) -> int | float:
    """A JSON number with a fraction or an exponent, by its decimal value."""
    number = float(text)
    if not number.is_integer():
        # Every double from 2**53 up is integral: a fraction here is one in the decimal value too.
        return number
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the JSON parser hands over numbers only
        return number
    if value.is_finite() and abs(value.adjusted()) <= _MAX_EXPONENT and value == value.to_integral_value():
        return int(value)
    return number


def canonical(data: bytes) -> bytes:
    """The canonical form of JSON text (see the module doc); ValueError if it is not JSON."""
    try:
        value = json.loads(data, parse_float=_number)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True
    ).encode()


def _hashed(schema_version: int, data: bytes) -> bytes:
    # \x01 never starts JSON text: these digests cannot equal a Toast value's (same hash, same cache).
    return b"\x01model v%d\x00" % schema_version + canonical(data)


def record_id(settings: ModelSettings, data: bytes) -> UUID:
    """The id of the record holding `data` (the model's stored JSON) for a model of `settings`."""
    try:
        hashed = _hashed(settings.schema_version, data)
    except ValueError:  # pragma: no cover - pydantic's own output is JSON
        raise StorageValidationError(
            f"{settings.storage_name}: the model's data could not be read back as JSON to compute its "
            "content id",
            expected="JSON",
            actual=None,
        ) from None
    return _content.content_id(_content.content_digest(settings.storage_name, hashed))


def known_key(settings: ModelSettings, id: UUID) -> tuple[str, int, str]:
    return (settings.url.raw, id.int, settings.storage_name)


def identify(state: RecordState, settings: ModelSettings, data: bytes, digest: bytes, now: datetime) -> bool:
    """Give a serialized model the id of its data; whether its record must be written.

    `digest` is the write set's digest of `data`: an instance that last wrote or loaded this very
    data keeps its id without hashing again. A record this process already wrote or verified is
    not written again, unless the model has a `ttl`: the process cannot know whether a shared
    record expired, so each dump writes it (and so refreshes its expiry).
    """
    if state.id is None or state.stored_digest != digest:
        new_id = record_id(settings, data)
        if new_id != state.id:
            # Other data: another record. The old one stays, as other references may need it.
            state.id, state.created_at = new_id, now
            state.stored_digest = state.loaded_json = None
    if state.created_at is None:
        state.created_at = now
    if settings.ttl is None and _content.is_known(known_key(settings, state.id)):
        state.wrote(digest)
        return False
    return True


def check_loaded(cls: type[ExternalBaseModel], record: StoredRecord, data_json: bytes) -> None:
    """Refuse a record whose data does not hash to its id: `RecordIntegrityError`.

    `data_json`: what the loader read (upgraded when the record is of an older schema_version,
    in which case the stored data is decoded again, since the id was made from that).
    """
    settings = cls.__toast_settings__
    if record.schema_version != settings.schema_version:
        data_json = codecs.decode(record, settings.codec)
    try:
        hashed = _hashed(record.schema_version, data_json)
    except ValueError:
        hashed = b""  # not JSON: cannot match, refused below like any other mismatch
    if not hashed or _content.content_id(_content.content_digest(settings.storage_name, hashed)) != record.id:
        raise RecordIntegrityError.whole_record(
            record.class_name,
            record.id,
            f"does not hold the data its id was made from (content-addressed {cls.__qualname__}: its data "
            "does not hash to its id): it was damaged or edited, so it is refused rather than returned. "
            "Dump the original model again to store it again",
            "content_hash",
        )
    if settings.ttl is None:
        _content.remember([known_key(settings, record.id)])
