"""Which stored record an instance is, and what that record holds as far as the instance knows.

Kept in the model's private attribute `_toast_record`: the record's id and creation time, and the
data the instance last wrote (or the data it was loaded from), so that a dump of unchanged data
writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pydantic_core
from pydantic import BaseModel

from .reference import ExternalReference

if TYPE_CHECKING:
    from .base import ExternalBaseModel

__all__ = ["STATE", "RecordState", "keep_record", "reset_state", "state_of"]

STATE = "_toast_record"
"""The name of the private attribute that holds an external model's `RecordState`."""


@dataclass(slots=True, eq=False)
class RecordState:
    """Which stored record an instance is. Kept in a private attribute.

    It compares equal to any other state so that pydantic's `==` stays about field values: a
    restored model equals the one that was dumped, whatever their record bookkeeping.
    """

    id: UUID | None = None
    created_at: datetime | None = None
    _reference: ExternalReference | None = None
    # What the record holds, as far as this instance knows: a digest of the data it last wrote,
    # or the data it was loaded from (compared once, then replaced by a digest). A dump whose
    # data matches writes nothing, so a reader's dump never reverts another writer's update.
    stored_digest: bytes | None = None
    loaded_json: bytes | None = None
    # With optimistic_concurrency: the revision of the record this instance loaded or last wrote.
    revision: int | None = None

    def reference(self, storage_name: str) -> ExternalReference:
        """The reference to this record, built once: dumps return it on every call."""
        assert self.id is not None
        cached = self._reference
        # `is not`: the cached reference holds this very UUID unless the id was replaced since,
        # and UUID's own `!=` is Python code run on every dump.
        if cached is None or cached.id is not self.id or cached.class_name != storage_name:
            cached = self._reference = ExternalReference.trusted(storage_name, self.id)
        return cached

    def holds(self, data: bytes, digest: bytes) -> bool:
        """Whether the record already holds `data` (whose digest is `digest`)."""
        if self.stored_digest == digest:
            return True
        if self.loaded_json is not None and _same_json(self.loaded_json, data):
            self.stored_digest = digest
            self.loaded_json = None
            return True
        return False

    def wrote(self, digest: bytes) -> None:
        """The record now holds the data whose digest is `digest`."""
        self.stored_digest = digest
        self.loaded_json = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordState)

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> list[object]:
        return [getattr(self, field.name) for field in fields(self)]

    def __setstate__(self, state: list[object]) -> None:
        # Pickles made by an older version carry fewer fields (the first ones, in order): the
        # fields added since start from their defaults, so such a model still unpickles.
        for field in fields(self):
            object.__setattr__(self, field.name, field.default)
        for field, value in zip(fields(self), state, strict=False):
            object.__setattr__(self, field.name, value)


def digest(data: bytes) -> bytes:
    """What a state keeps of the data its instance wrote, to tell whether a later dump's is the same."""
    # The bytes themselves (the very object the record was made from, not a copy), not a hash:
    # comparing them is a memcmp that stops at the first difference, or at once for another
    # length, where SHA-256 read every byte on every save and every dump (~0.5 ms per MB: a
    # fifth of a 100 KB Redis save, a sixth of a 5 MB one, with nothing to overlap it on a
    # busy machine; hashing on a worker thread while the record was written measured slower).
    # The price is memory: a saved model keeps its JSON for as long as it lives, as a loaded one
    # keeps its record's. Exact, unlike any hash. Digests that older versions pickled with a
    # model (32 bytes of SHA-256 or blake2b) never equal a model's JSON: one rewrite each.
    return data


def _same_json(loaded: bytes, data: bytes) -> bool:
    # Stores that re-encode JSON (PostgreSQL's JSONB) return the same data as other bytes.
    return loaded == data or bool(pydantic_core.from_json(loaded) == pydantic_core.from_json(data))


def state_of(model: ExternalBaseModel) -> RecordState:
    private = model.__pydantic_private__
    assert private is not None  # ExternalBaseModel declares a private attribute
    state: RecordState = private[STATE]  # not cast(): a function call on every dump and load
    return state


def reset_state(model: ExternalBaseModel) -> None:
    """Make `model` a new, unsaved record (copies must never overwrite their original)."""
    private = model.__pydantic_private__
    assert private is not None
    private[STATE] = RecordState()


def keep_record(value: object, result: Any) -> Any:
    """A revalidated instance (revalidate_instances) is still the record it was validated from."""
    if isinstance(value, BaseModel) and result is not value and type(result) is type(value):
        source, target = value.__pydantic_private__, result.__pydantic_private__
        if source and target is not None and STATE in source:
            # A copy of the state: each instance compares its own data with what was stored.
            target[STATE] = replace(source[STATE])
    return result
