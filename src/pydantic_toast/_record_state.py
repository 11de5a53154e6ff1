"""Which stored record an instance is, and what that record holds as far as the instance knows.

Kept in a slot of the model (`ExternalBaseModel.__slots__`): the record's id and creation time,
and the data the instance last wrote (or the data it was loaded from), so that a dump of unchanged
data writes nothing. A slot rather than a pydantic private attribute: the private attribute dict
cost 184 bytes on every loaded model, more than the state itself (measured on load_many of 100,000
ten-field records: 17 MiB of peak).

A model whose slot is empty is a new, unsaved record: `state_of` gives it a state on first use,
so every way pydantic builds an instance (`__init__`, `model_construct`, a copy) needs nothing
from us.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pydantic_core

from .reference import ExternalReference

if TYPE_CHECKING:
    from .base import ExternalBaseModel

__all__ = [
    "PICKLED",
    "SLOT",
    "RecordState",
    "attach_state",
    "bind_slot",
    "is_external",
    "keep_record",
    "peek_state",
    "reset_state",
    "state_of",
]

SLOT = "_toast_state"
"""The name of the slot of `ExternalBaseModel` that holds an instance's `RecordState`."""

PICKLED = "_toast_record"
"""Where a pickled model carries its `RecordState`: among its private attributes, under the name
of the private attribute that held it before the slot, so pickles read across versions."""

# The slot's own getter and setter (bound by `bind_slot` once the class exists). Reading through
# the descriptor, not `model._toast_state`: an empty slot then raises at once, where attribute
# lookup would run pydantic's `__getattr__` first (0.7 against 2.3 us per new model).
_owner: type[Any] = type(None)
_get: Callable[[Any], RecordState]
_set: Callable[[Any, RecordState], None]


def bind_slot(cls: type[ExternalBaseModel]) -> None:
    """Called once by `base.py` with `ExternalBaseModel`, the class that declares the slot."""
    global _owner, _get, _set
    member = cls.__dict__[SLOT]
    _owner, _get, _set = cls, member.__get__, member.__set__


@dataclass(slots=True, eq=False)
class RecordState:
    """Which stored record an instance is. Kept in a slot of the model.

    It compares equal to any other state so that pydantic's `==` stays about field values: a
    restored model equals the one that was dumped, whatever their record bookkeeping.
    """

    id: UUID | None = None
    created_at: datetime | None = None
    _reference: ExternalReference | None = None
    # What the record holds, as far as this instance knows: the data it last wrote (`digest`
    # keeps the bytes themselves), or the data it was loaded from (compared once, then kept as
    # `stored_digest`, in the form the dump made it). A dump whose
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
    try:
        return _get(model)
    except AttributeError:
        # Never saved nor loaded (or a copy): a new record.
        state = RecordState()
        _set(model, state)
        return state


def peek_state(model: ExternalBaseModel) -> RecordState | None:
    """The model's state if it has one, without giving it one."""
    try:
        return _get(model)
    except AttributeError:
        return None


def attach_state(model: ExternalBaseModel, state: RecordState) -> None:
    """Make `state` the model's: a freshly validated model is the record it was loaded from."""
    _set(model, state)


def reset_state(model: ExternalBaseModel) -> None:
    """Make `model` a new, unsaved record (copies must never overwrite their original)."""
    _set(model, RecordState())


def is_external(value: object) -> bool:
    """Whether `value` is an external model (one that has, or can have, a record state)."""
    return isinstance(value, _owner)


def keep_record(value: object, result: Any) -> Any:
    """A revalidated instance (revalidate_instances) is still the record it was validated from."""
    if result is not value and type(result) is type(value) and isinstance(value, _owner):
        source = peek_state(value)
        if source is not None:
            # A copy of the state: each instance compares its own data with what was stored.
            _set(result, replace(source))
    return result
