"""`ExternalReference`: the tiny `{"class_name", "id"}` form a stored model travels as."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID, SafeUUID

from pydantic import BaseModel, ConfigDict, field_serializer

from .exceptions import StorageValidationError

__all__ = ["ExternalReference", "is_external_reference", "parse_reference", "uuid_from_text"]

_MAX_SHOWN = 80
_REFERENCE_KEYS = frozenset({"class_name", "id"})


class ExternalReference(BaseModel):
    """Points at one stored record. `model_dump()` gives `{"class_name": ..., "id": "<uuid>"}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    class_name: str
    id: UUID

    @field_serializer("id")
    def _id_as_text(self, value: UUID) -> str:
        return str(value)

    def as_dict(self) -> dict[str, str]:
        return {"class_name": self.class_name, "id": str(self.id)}

    @classmethod
    def trusted(cls, class_name: str, id: UUID) -> ExternalReference:
        """Build from values already checked, skipping validation (and `model_construct`'s cost,
        which dominates loading a parent with many children)."""
        reference = cls.__new__(cls)
        object.__setattr__(reference, "__dict__", {"class_name": class_name, "id": id})
        object.__setattr__(reference, "__pydantic_fields_set__", {"class_name", "id"})
        object.__setattr__(reference, "__pydantic_extra__", None)
        object.__setattr__(reference, "__pydantic_private__", None)
        return reference


def looks_like_reference(value: object) -> bool:
    return isinstance(value, ExternalReference) or (
        isinstance(value, Mapping) and "class_name" in value and "id" in value
    )


def is_external_reference(data: object) -> bool:
    """Whether `data` is a well-formed reference: an `ExternalReference`, or a mapping with exactly
    the keys 'class_name' (a string) and 'id' (a UUID or its text). No I/O, never raises; whether
    a record exists, and for which model, is for `load` to find out."""
    if isinstance(data, ExternalReference):
        return True
    if not isinstance(data, Mapping) or len(data) != 2 or not looks_like_reference(data):
        return False
    if not isinstance(data["class_name"], str):
        return False
    try:
        parse_id(data["id"])
    except StorageValidationError:
        return False
    return True


def parse_reference(value: object, *, expected_class: str | None = None) -> ExternalReference:
    """Check an untrusted reference before any I/O: exact keys, string class name, UUID id."""
    if isinstance(value, ExternalReference):
        return value
    if type(value) is dict and len(value) == 2:
        # The common, well-formed case, checked without building error context.
        class_name, record_id = value.get("class_name"), value.get("id")
        if type(class_name) is str and type(record_id) is str and len(record_id) == 36:
            record_uuid = uuid_from_text(record_id)
            if record_uuid is not None:
                return ExternalReference.trusted(class_name, record_uuid)
            try:
                return ExternalReference.trusted(class_name, UUID(record_id))
            except ValueError:
                pass
    if not isinstance(value, Mapping):
        raise StorageValidationError(
            f"a reference must be an object {{'class_name': ..., 'id': ...}}, got {type(value).__name__}",
            expected="reference object",
            actual=type(value).__name__,
        )
    extra = sorted(_shown(key) for key in value if key not in _REFERENCE_KEYS)
    if extra:
        raise StorageValidationError(
            f"a reference has exactly the keys 'class_name' and 'id'; unexpected key(s): {', '.join(extra)}",
            expected=sorted(_REFERENCE_KEYS),
            actual=extra,
        )
    missing = sorted(_REFERENCE_KEYS - set(value))
    if missing:
        raise StorageValidationError(
            f"a reference needs the key(s) {', '.join(missing)}",
            expected=sorted(_REFERENCE_KEYS),
            actual=sorted(str(key) for key in value),
        )
    class_name = value["class_name"]
    if not isinstance(class_name, str):
        raise StorageValidationError(
            f"a reference's class_name must be a string, got {type(class_name).__name__}",
            expected=expected_class or "str",
            actual=_shown(class_name),
        )
    return ExternalReference.trusted(class_name, parse_id(value["id"]))


def parse_id(value: Any) -> UUID:
    if isinstance(value, UUID):
        return value
    if isinstance(value, str) and len(value) <= 45:
        parsed = uuid_from_text(value)
        if parsed is not None:
            return parsed
        try:
            return UUID(value)
        except ValueError:
            pass
    raise StorageValidationError(
        "a reference's id must be a UUID such as '550e8400-e29b-41d4-a716-446655440000', "
        f"got {_shown(value)}",
        expected="UUID",
        actual=_shown(value),
    )


_UNSET = object.__new__
_SET = object.__setattr__
_UNKNOWN = SafeUUID.unknown  # an enum member read through a Python-level descriptor: once


def uuid_from_text(text: str) -> UUID | None:
    """`UUID(text)` for text in the canonical form (8-4-4-4-12 hex digits, either case), built
    at a third of `UUID()`'s cost; None for any other text, which `UUID()` is left to judge."""
    if len(text) == 36 and text[8:24:5] == "----":  # the dashes at 8, 13, 18 and 23
        try:
            # 32 characters give 16 bytes only if all are hex digits (fromhex skips whitespace).
            raw = bytes.fromhex(text.replace("-", ""))
        except ValueError:
            return None
        if len(raw) == 16:
            parsed = _UNSET(UUID)
            # What UUID.__init__ sets (its slots); UUID forbids setattr, as it does itself.
            _SET(parsed, "int", int.from_bytes(raw))
            _SET(parsed, "is_safe", _UNKNOWN)
            return parsed
    return None


def _shown(value: object) -> str:
    """A bounded repr of untrusted input, safe to put in an error message."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"
