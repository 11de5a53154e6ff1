"""The codec stage: a model's JSON bytes ⇄ the payload bytes a backend stores.

Every record carries an encoding tag next to its payload, so any reader can decode any record
whatever the writer's configuration. The tag is the base format followed by the steps applied to
it, in order, joined by `+`: `json` (today's records and the default: the payload is the model's
JSON itself), `json+zlib` / `json+zstd` (that JSON compressed with zlib or Zstandard). Decoding
undoes the steps in reverse.

A step's name stands for one byte format forever: a codec whose output format changes is
registered under a new name (`zlib2`), and the old one stays registered so that earlier records
still decode. Steps are looked up in a registry (`register_codec`); a record naming a step this
process does not have is refused with an error naming the tag and the fix, never with its bytes.

This is the only module that transforms payloads: the write set encodes here (`encode`) before
records reach a backend, and every reader (model loads, upgrades, `pydantic-toast inspect`)
decodes here (`decode`). Backends store payload and tag as given; `copy` moves them unchanged.

Encryption (`pydantic_toast.encryption`) is the last step when a model has a key set: the tag
ends in `+aesgcm` (`json+aesgcm`, `json+zlib+aesgcm`: compressed, then encrypted). Unlike the
other steps it needs the record's identity (bound into the ciphertext) and the reader's keys, so
`encode` takes the identity and `decode` the reader's pipeline, whose policy also refuses a record
stored without encryption where encryption is required.
"""

from __future__ import annotations

import importlib
import re
import sys
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, cast
from uuid import UUID

from . import encryption
from .encryption import KeySet
from .exceptions import MissingDependencyError, StorageValidationError, StoredDataError

if TYPE_CHECKING:
    from .backends.base import StoredRecord

__all__ = [
    "DEFAULT_COMPRESSION_MIN_SIZE",
    "JSON",
    "Codec",
    "Pipeline",
    "ZlibCodec",
    "ZstdCodec",
    "codec_names",
    "decode",
    "encode",
    "pipeline_for",
    "register_codec",
]

JSON = "json"
"""The base format of every payload, and the whole tag of an uncompressed one."""

DEFAULT_COMPRESSION_MIN_SIZE = 512
"""Bytes of JSON below which `compression` leaves a payload alone (see `pipeline_for`)."""

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class Codec(ABC):
    """One reversible step of the stage, registered under `name` (its token in encoding tags)."""

    name: ClassVar[str]
    compresses: ClassVar[bool] = False
    """Whether `ExternalConfigDict(compression=name)` may select it."""

    @abstractmethod
    def encode(self, data: bytes) -> bytes: ...

    @abstractmethod
    def decode(self, data: bytes) -> bytes:
        """Undo `encode`; raise any exception for bytes that `encode` did not produce."""

    def require(self) -> None:  # noqa: B027 - most codecs need nothing: not abstract on purpose
        """Raise `MissingDependencyError` if a package this codec needs is not installed."""


class ZlibCodec(Codec):
    """zlib (RFC 1950) from the standard library, at its default level."""

    name = "zlib"
    compresses = True

    def encode(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decode(self, data: bytes) -> bytes:
        return zlib.decompress(data)


class ZstdCodec(Codec):
    """Zstandard (RFC 8878): the standard library's `compression.zstd` on Python 3.14+, its
    `backports.zstd` twin before that (the `[zstd]` extra), imported on first use.

    Level 3, zstd's own default: on JSON it already compresses better than zlib's default level
    and several times faster; higher levels buy a few percent of size for a save that is several
    times slower (benchmarks/bench_compression.py measures both), and reading is as fast whatever
    the level. The level is not part of the byte format: any level decodes with this codec.
    """

    name = "zstd"
    compresses = True
    level: ClassVar[int] = 3

    def encode(self, data: bytes) -> bytes:
        return cast(bytes, _zstd().compress(data, level=self.level))

    def decode(self, data: bytes) -> bytes:
        return cast(bytes, _zstd().decompress(data))

    def require(self) -> None:
        _zstd()


_zstd_module: ModuleType | None = None


def _zstd() -> ModuleType:
    global _zstd_module
    if _zstd_module is None:
        name = "compression.zstd" if sys.version_info >= (3, 14) else "backports.zstd"
        try:
            zstd = importlib.import_module(name)
        except ImportError:
            if name == "compression.zstd":  # a Python 3.14+ built without libzstd
                fix = "use a Python build that includes the standard library's compression.zstd"
            else:
                fix = "install it with: pip install 'pydantic-toast[zstd]'"
            raise MissingDependencyError(
                f"compression 'zstd' needs the {name!r} module, which is not available; {fix}",
                package=name,
                extra="zstd",
            ) from None
        _zstd_module = zstd
    return _zstd_module


_codecs: dict[str, Codec] = {}


def register_codec(codec: Codec) -> None:
    """Make `codec` available to encode (if it compresses) and to decode records tagged with it.

    Registering another codec under a name already taken is refused: records written with the
    first would no longer decode.
    """
    name = getattr(codec, "name", None)
    if not isinstance(name, str) or not _NAME.match(name) or name in (JSON, encryption.STEP):
        raise StorageValidationError(
            f"codec name {name!r} must be 1-32 lowercase letters, digits, '_' or '-', starting with a "
            f"letter, and not {JSON!r} or {encryption.STEP!r}",
            expected="codec name",
            actual=name,
        )
    registered = _codecs.get(name)
    if registered is not None and type(registered) is not type(codec):
        raise StorageValidationError(
            f"codec name {name!r} is already registered by {type(registered).__qualname__}; a name "
            "stands for one byte format forever, so give the new codec a name of its own",
            expected="an unused codec name",
            actual=name,
        )
    _codecs[name] = codec


register_codec(ZlibCodec())
register_codec(ZstdCodec())


def codec_names(*, compressing: bool = False) -> list[str]:
    """The registered step names (only those `compression` accepts, with `compressing`)."""
    return sorted(name for name, codec in _codecs.items() if codec.compresses or not compressing)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What a model's records go through on save: validated once, when the class is defined."""

    compression: Codec | None
    compression_min_size: int
    compressed_encoding: str
    encryption: KeySet | None = None
    """Encrypt every payload (last step) under the key set's current key."""
    encryption_required: bool = False
    """Refuse, on read, a record stored without encryption (only with `encryption`)."""


def pipeline_for(config: Mapping[str, Any]) -> Pipeline | None:
    """The pipeline `ExternalConfigDict` asks for; None (plain JSON, the fast path) by default.

    `compression`: a registered compressing codec's name, or None. `compression_min_size`: JSON
    shorter than this many bytes is stored uncompressed, where compression gains nothing and
    costs time on every save and load. `encryption`: a `KeySet`, or None. `encryption_required`
    (default True with `encryption`): refuse records stored without encryption on read; False
    reads them while an existing store is being encrypted (`pydantic-toast rotate-keys`).

    A `Toast(...)` field's options go through this same function, so a field gets encryption by
    passing `{"encryption": key_set}` in the mapping.
    """
    keys, required = _encryption_options(config)
    name = config.get("compression")
    min_size = config.get("compression_min_size", DEFAULT_COMPRESSION_MIN_SIZE)
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise StorageValidationError(
            f"compression_min_size must be an integer number of bytes >= 0, got {min_size!r}",
            expected="int >= 0",
            actual=min_size,
        )
    if name is None:
        if keys is None:
            return None
        return Pipeline(None, min_size, JSON, keys, required)
    codec = _codecs.get(name) if isinstance(name, str) else None
    if codec is None or not codec.compresses:
        known = codec_names(compressing=True)
        raise StorageValidationError(
            f"compression {name!r} is not a known compression; use one of {', '.join(map(repr, known))} "
            "or None",
            expected=known,
            actual=name,
        )
    codec.require()  # at class definition, not at the first save
    return Pipeline(codec, min_size, f"{JSON}+{codec.name}", keys, required)


def _encryption_options(config: Mapping[str, Any]) -> tuple[KeySet | None, bool]:
    keys = config.get("encryption")
    if keys is not None and not isinstance(keys, KeySet):
        # Named by type only: a mistake here is typically raw key bytes.
        raise StorageValidationError(
            f"encryption must be a pydantic_toast.KeySet or None, got a {type(keys).__name__}; e.g. "
            "encryption=KeySet.from_env('TOAST_KEYS')",
            expected="KeySet",
            actual=type(keys).__name__,
        )
    required = config.get("encryption_required", keys is not None)
    if not isinstance(required, bool):
        raise StorageValidationError(
            f"encryption_required must be True or False, got {required!r}", expected="bool", actual=required
        )
    if required and keys is None:
        raise StorageValidationError(
            "encryption_required=True needs encryption=KeySet(...): without keys no record could be read",
            expected="KeySet",
            actual=None,
        )
    if keys is not None:
        keys.check()  # a missing `cryptography` fails here, when the class is defined
    return keys, required


def encode(
    pipeline: Pipeline | None,
    data: bytes,
    *,
    class_name: str | None = None,
    id: UUID | None = None,
    schema_version: int = 1,
) -> tuple[bytes, str]:
    """(payload, encoding tag) to store for a model's JSON `data`.

    Without a pipeline the payload is `data` itself. A payload that compression does not make
    smaller is stored uncompressed: reading it back then costs nothing. With encryption the
    record's identity (`class_name`, `id`, `schema_version`) is required: it is bound into the
    ciphertext, so the payload decodes only as that record.
    """
    if pipeline is None:
        return data, JSON
    payload, encoding = data, JSON
    if pipeline.compression is not None and len(data) >= pipeline.compression_min_size:
        packed = pipeline.compression.encode(data)
        if len(packed) < len(data):
            payload, encoding = packed, pipeline.compressed_encoding
    if pipeline.encryption is None:
        return payload, encoding
    if class_name is None or id is None:
        raise TypeError("encode() with encryption needs the record's class_name and id")
    sealed = encryption.seal(
        pipeline.encryption, payload, encoding, class_name=class_name, id=id, schema_version=schema_version
    )
    return sealed, f"{encoding}+{encryption.STEP}"


def decode(record: StoredRecord, pipeline: Pipeline | None = None) -> bytes:
    """The model JSON a stored record holds, undoing the steps its encoding tag names.

    `pipeline` is the reader's (the model's): its key set decrypts, and where it requires
    encryption a record stored without it is refused (`RecordIntegrityError`). Without one, an
    encrypted record cannot be read.
    """
    encoding = record.encoding
    required = pipeline is not None and pipeline.encryption is not None and pipeline.encryption_required
    if encoding == JSON:
        if required:
            raise encryption.not_encrypted(record)
        return record.payload
    base, *steps = encoding.split("+")
    if base != JSON:
        raise _unknown(record, base)
    encrypted = steps[-1] == encryption.STEP
    if encrypted:
        steps.pop()
    elif required:
        raise encryption.not_encrypted(record)
    codecs: list[Codec] = []
    for name in steps:
        codec = _codecs.get(name)
        if codec is None:
            raise _unknown(record, name)
        codec.require()  # a missing package is not a damaged record: say what to install
        codecs.append(codec)
    data = record.payload
    if encrypted:
        keys = None if pipeline is None else pipeline.encryption
        data = encryption.open_payload(keys, record, "+".join((base, *steps)))
    failed: str | None = None
    for codec in reversed(codecs):
        try:
            data = codec.decode(data)
        except Exception as exc:  # noqa: BLE001 - any codec failure means the same: corrupt bytes
            # Named by type only, and not chained: a codec's message may quote the bytes.
            failed = f"{codec.name}: {type(exc).__name__}"
            break
    if failed is not None:
        raise StoredDataError.whole_record(
            record.class_name,
            record.id,
            f"is tagged {encoding!r} but its payload does not decode ({failed}); it was damaged or "
            "written by something else. Repair or delete the record",
            "payload_decoding",
        )
    return data


def _unknown(record: StoredRecord, name: str) -> StoredDataError:
    known = [JSON, *codec_names(), encryption.STEP]
    if name == encryption.STEP:
        reason = f"{name!r} may only be the last step"
        fix = "repair or delete the record"
    elif name == JSON or _NAME.match(name) is None:
        # Not a step any pydantic-toast writes: an edited or foreign record, not a missing codec.
        reason = f"{name!r} is not a codec name"
        fix = "repair or delete the record"
    else:
        reason = f"this process has no codec {name!r}"
        fix = (
            "it was written by a newer pydantic-toast or with a codec installed: upgrade pydantic-toast "
            f"(pip install -U pydantic-toast), or install the extra or package that provides {name!r}"
        )
    # Stored data this process cannot read: a server-side problem, not a caller's ValueError.
    return StoredDataError.whole_record(
        record.class_name,
        record.id,
        f"is encoded as {record.encoding!r} and {reason} (known: {', '.join(known)}); {fix}",
        "payload_encoding",
    )
