"""Encryption at rest: key sets, and the `aesgcm` step of the codec stage.

A `KeySet` holds several AES-256 keys under short ids: the current one encrypts every new write,
all of them decrypt. It comes from the user's code or the environment (`KeySet.from_env`), never
from a storage URL, and it never shows a key: not in its repr, not in an error, and it refuses to
be pickled.

The `aesgcm` step (AES-256-GCM, from the `cryptography` package: the `[encryption]` extra) is
always the last step of an encoding tag (`json+aesgcm`, `json+zlib+aesgcm`). Its payload, format
version 1:

    offset  size  field
    0       1     format version: 0x01
    1       1     n: length of the key id
    2       n     key id (ASCII)
    2+n     12    nonce, random per write
    14+n    rest  AES-GCM ciphertext followed by its 16-byte tag

The associated data binds the ciphertext to the record it was written as: the payload's header
(version and key id), the record's class name (storage name), its id, its schema_version and
the encoding of the bytes that were encrypted (`json`, `json+zlib`), each length-prefixed. A
payload copied to another id or another class, or relabelled with another schema_version or
compression, fails authentication like a flipped byte does: `RecordIntegrityError`. Copying a
record to another store under the same id and class (`pydantic-toast copy`) keeps it readable.

Why `cryptography`: it is the maintained, audited binding to OpenSSL that the Python ecosystem
relies on, ships typed wheels for every platform we support, and its AES-GCM runs at memory
speed with AES-NI; nothing here implements a cipher of its own.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn
from uuid import UUID

from .exceptions import MissingDependencyError, RecordIntegrityError, StorageValidationError

if TYPE_CHECKING:
    from .backends.base import StoredRecord

__all__ = [
    "ALGORITHM",
    "DEFAULT_ENV",
    "FORMAT_VERSION",
    "STEP",
    "EnvelopeInfo",
    "KeySet",
    "envelope_info",
    "not_encrypted",
    "open_payload",
    "seal",
]

STEP = "aesgcm"
"""The step's name in encoding tags; it stands for format version 1 below and its successors."""

ALGORITHM = "AES-256-GCM"
FORMAT_VERSION = 1
DEFAULT_ENV = "TOAST_KEYS"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_AAD_PREFIX = b"pydantic-toast/aesgcm\x00"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TAG = re.compile(r"^[a-z0-9_+-]{1,100}$")
_ENV_FORMAT = "'id:base64key[,id:base64key...]' (the first key is the current one)"


def _aesgcm() -> Any:
    """The AESGCM class, imported on first use so the core never needs `cryptography`."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise MissingDependencyError(
            "encryption needs the 'cryptography' package, which is not installed; install it with: "
            "pip install 'pydantic-toast[encryption]'",
            package="cryptography",
            extra="encryption",
        ) from None
    return AESGCM


class KeySet:
    """AES-256 keys under ids: `current` encrypts new writes, every key decrypts.

    `KeySet({"k2": new_key, "k1": old_key}, current="k2")`; with one key, `current` may be left
    out. A key is 32 bytes (`KeySet.generate_key()` makes one). Ids are 1-64 letters, digits,
    '_', '.' or '-'; they are stored in every encrypted record, the keys never are.

    The repr shows the ids only. A key set cannot be pickled (that would write the keys out);
    copying returns the same object.
    """

    __slots__ = ("_ciphers", "_current", "_keys")

    def __init__(self, keys: Mapping[str, bytes], *, current: str | None = None) -> None:
        if not isinstance(keys, Mapping) or not keys:
            raise StorageValidationError(
                "KeySet needs a non-empty mapping of key id -> 32-byte key, e.g. "
                "KeySet({'k1': key_bytes}, current='k1')",
                expected="mapping of id -> bytes",
                actual=type(keys).__name__,
            )
        checked: dict[str, bytes] = {}
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
                raise StorageValidationError(
                    "a key id must be 1-64 letters, digits, '_', '.' or '-'"
                    + (f", got {key_id!r}" if isinstance(key_id, str) and len(key_id) <= 64 else ""),
                    expected="key id",
                    actual=type(key_id).__name__,
                )
            # The value is a secret: errors name its type and size, never its content.
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
                what = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
                raise StorageValidationError(
                    f"key {key_id!r} must be {KEY_BYTES} bytes (AES-256), got {what}; make one with "
                    "KeySet.generate_key(), or base64-decode a stored one first",
                    expected=f"{KEY_BYTES} bytes",
                    actual=what,
                )
            checked[key_id] = bytes(key)
        if current is None:
            if len(checked) > 1:
                raise StorageValidationError(
                    f"KeySet with several keys ({', '.join(map(repr, checked))}) needs current='id': the "
                    "key that encrypts new writes",
                    expected="current key id",
                    actual=None,
                )
            current = next(iter(checked))
        if current not in checked:
            raise StorageValidationError(
                f"current={current!r} is not one of the key ids ({', '.join(map(repr, checked))})",
                expected=list(checked),
                actual=current if isinstance(current, str) else type(current).__name__,
            )
        self._keys = checked
        self._current = current
        self._ciphers: dict[str, Any] | None = None

    @classmethod
    def from_env(cls, name: str = DEFAULT_ENV, *, environ: Mapping[str, str] | None = None) -> KeySet:
        """The key set in environment variable `name`: `id:base64key[,id:base64key...]`.

        The first key is the current one. Keys are standard or URL-safe base64 of 32 bytes.
        """
        environment = os.environ if environ is None else environ
        text = environment.get(name)
        if not text or not text.strip():
            raise StorageValidationError(
                f"environment variable {name} is not set or empty; set it to {_ENV_FORMAT}",
                expected=_ENV_FORMAT,
                actual=None,
            )
        keys: dict[str, bytes] = {}
        for position, entry in enumerate(text.split(","), start=1):
            key_id, sep, encoded = entry.strip().partition(":")
            key_id = key_id.strip()
            if not sep or not _KEY_ID.match(key_id):
                raise StorageValidationError(
                    f"entry {position} of {name} is not 'id:base64key' with an id of 1-64 letters, digits, "
                    f"'_', '.' or '-'; expected {_ENV_FORMAT}",
                    expected=_ENV_FORMAT,
                    actual=f"entry {position}",
                )
            if key_id in keys:
                raise StorageValidationError(
                    f"key id {key_id!r} appears twice in {name}", expected="unique key ids", actual=key_id
                )
            try:
                raw = base64.b64decode(encoded.strip().replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                # Not chained: binascii's message may quote the text.
                raise StorageValidationError(
                    f"key {key_id!r} in {name} is not valid base64", expected="base64", actual=key_id
                ) from None
            keys[key_id] = raw
        return cls(keys, current=next(iter(keys)))

    @staticmethod
    def generate_key() -> bytes:
        """A new random 32-byte key (store it base64-encoded, e.g. in a secret manager)."""
        return os.urandom(KEY_BYTES)

    @property
    def current(self) -> str:
        """The id of the key that encrypts new writes."""
        return self._current

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        return f"KeySet(ids={list(self._keys)!r}, current={self._current!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a KeySet cannot be pickled: that would write its keys out; build it again in the process "
            "that needs it (KeySet.from_env, or from your secret manager)"
        )

    def __copy__(self) -> KeySet:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> KeySet:
        return self

    def check(self) -> None:
        """Make sure encryption can run here: imports `cryptography` (MissingDependencyError)."""
        self._cipher(self._current)

    def _cipher(self, key_id: str) -> Any:
        ciphers = self._ciphers
        if ciphers is None:
            aesgcm = _aesgcm()
            # Built once: constructing AESGCM schedules the key, which costs more than a small record.
            ciphers = self._ciphers = {name: aesgcm(key) for name, key in self._keys.items()}
        return ciphers[key_id]


@dataclass(frozen=True, slots=True)
class EnvelopeInfo:
    """What an encrypted payload reveals without its key (for `pydantic-toast inspect`)."""

    format_version: int
    key_id: str
    nonce_bytes: int
    ciphertext_bytes: int


def envelope_info(payload: bytes) -> EnvelopeInfo | None:
    """The header of an `aesgcm` payload; None if it is not one this version can read."""
    if len(payload) < 2 or payload[0] != FORMAT_VERSION:
        return None
    size = payload[1]
    body = 2 + size
    if len(payload) < body + NONCE_BYTES + TAG_BYTES:
        return None
    try:
        key_id = payload[2:body].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not _KEY_ID.match(key_id):
        return None
    return EnvelopeInfo(FORMAT_VERSION, key_id, NONCE_BYTES, len(payload) - body - NONCE_BYTES)


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def _associated_data(header: bytes, class_name: str, id: UUID, schema_version: int, inner: str) -> bytes:
    return b"".join(
        (
            _AAD_PREFIX,
            _field(header),
            _field(class_name.encode()),
            id.bytes,
            _field(str(schema_version).encode()),
            _field(inner.encode()),
        )
    )


def seal(keys: KeySet, data: bytes, inner: str, *, class_name: str, id: UUID, schema_version: int) -> bytes:
    """Encrypt `data` (encoded as `inner`) under the current key, bound to the record's identity."""
    key_id = keys.current.encode("ascii")
    header = bytes((FORMAT_VERSION, len(key_id))) + key_id
    nonce = os.urandom(NONCE_BYTES)
    cipher = keys._cipher(keys.current)
    sealed: bytes = cipher.encrypt(
        nonce, data, _associated_data(header, class_name, id, schema_version, inner)
    )
    return header + nonce + sealed


def open_payload(keys: KeySet | None, record: StoredRecord, inner: str) -> bytes:
    """The bytes an `aesgcm` payload holds, after checking it belongs to `record`'s identity."""
    payload = record.payload
    info = envelope_info(payload)
    if info is None:
        if payload[:1] not in (b"", bytes((FORMAT_VERSION,))):
            raise _integrity(
                record,
                f"its encrypted payload has format version {payload[0]}, which this pydantic-toast cannot "
                "read; upgrade pydantic-toast (pip install -U 'pydantic-toast[encryption]')",
                "unsupported_format",
            )
        raise _integrity(
            record,
            "its payload is not a complete AES-GCM envelope (truncated or damaged); restore the record "
            "from a backup or delete it",
            "malformed_envelope",
        )
    key_id = info.key_id
    if keys is None:
        raise _integrity(
            record,
            f"it is encrypted (key id {key_id!r}) but the model has no key set; configure "
            "ExternalConfigDict(encryption=KeySet(...)) with that key",
            "no_key",
        )
    if key_id not in keys:
        raise _integrity(
            record,
            f"it is encrypted with key id {key_id!r}, which the model's key set does not hold (it holds "
            f"{', '.join(map(repr, keys.ids))}); add that key to the KeySet. Remove an old key only after "
            "'pydantic-toast rotate-keys' has re-encrypted every record under the current one",
            "unknown_key",
        )
    body = 2 + len(key_id)
    header, nonce = payload[:body], payload[body : body + NONCE_BYTES]
    aad = _associated_data(header, record.class_name, record.id, record.schema_version, inner)
    try:
        data: bytes = keys._cipher(key_id).decrypt(nonce, payload[body + NONCE_BYTES :], aad)
    except Exception:  # noqa: BLE001, S110 - InvalidTag, and nothing else to learn from the others
        pass  # raised below, outside the handler: nothing chained
    else:
        return data
    raise _integrity(
        record,
        f"it failed authentication under key id {key_id!r} ({ALGORITHM}): it was encrypted with "
        "another key of that id, changed after it was written, or copied here from another id or "
        f"class, so it is refused. Restore it from a backup or delete it; if key {key_id!r} was "
        "replaced, put the original key back in the KeySet",
        "authentication",
    )


def not_encrypted(record: StoredRecord) -> RecordIntegrityError:
    """The refusal of a record stored without encryption where the model requires it."""
    # The tag is stored metadata that anyone with write access chooses: shown only if tag-shaped.
    tag = record.encoding
    shown = repr(tag) if _TAG.match(tag) else "a malformed tag"
    return _integrity(
        record,
        f"it is not encrypted (encoding {shown}) but the model requires encryption, so it "
        "is refused: anyone who can write to the store could have put it there. If you are encrypting "
        "an existing store, set ExternalConfigDict(encryption_required=False) until 'pydantic-toast "
        "rotate-keys' has encrypted every record",
        "not_encrypted",
    )


def _integrity(record: StoredRecord, reason: str, check: str) -> RecordIntegrityError:
    return RecordIntegrityError.whole_record(record.class_name, record.id, f"was refused: {reason}", check)
