"""Model factories shared by tests: the URL comes from a fixture, so classes are built per test."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Any, cast
from uuid import UUID, uuid4

from pydantic import BaseModel, Field, create_model

from pydantic_toast import ExternalBaseModel, ExternalConfigDict


def note_model(storage: str, **config: Any) -> Any:
    """The smallest external model: one text field; `config` adds ExternalConfigDict keys."""

    class Note(ExternalBaseModel):
        text: str
        model_config = cast(ExternalConfigDict, {"storage": storage, **config})

    return Note


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str
    city: str
    tags: list[str] = Field(default_factory=list)


def every_type_model(storage: str, name: str = "EveryType") -> Any:
    """A model with one field of each kind the core promises to round-trip exactly."""

    class EveryType(ExternalBaseModel):
        text: str
        number: int
        ratio: float
        amount: Decimal
        when: dt.datetime
        day: dt.date
        at: dt.time
        span: dt.timedelta
        uid: UUID
        color: Color
        blob: bytes
        tags: set[str]
        pair: tuple[int, str]
        address: Address
        maybe: int | None = None
        mapping: dict[str, list[int]] = Field(default_factory=dict)
        nothing: None = None
        flag: bool = False

        model_config = ExternalConfigDict(storage=storage, storage_name=name)

    return EveryType


def every_type_values() -> dict[str, Any]:
    return {
        "text": "héllo \x00 wörld \U0001f600 \n\t\"'\\",
        "number": 2**62,
        "ratio": 0.1,
        "amount": Decimal("12345678901234567890.123456789"),
        "when": dt.datetime(
            2025, 12, 23, 10, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
        ),
        "day": dt.date(2024, 2, 29),
        "at": dt.time(23, 59, 59, 999999),
        "span": dt.timedelta(days=3, seconds=7, microseconds=11),
        "uid": uuid4(),
        "color": Color.GREEN,
        "blob": bytes(range(256)),
        "tags": {"a", "b", "ü"},
        "pair": (7, "seven"),
        "address": Address(street="1 Main St", city="Springfield", tags=["x"]),
        "maybe": None,
        "mapping": {"k": [1, 2, 3]},
        "flag": True,
    }


def wide_model(storage: str, fields: int = 120) -> Any:
    class WideBase(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=storage)

    definitions: dict[str, Any] = {f"field_{i:03d}": (int if i % 2 else str, ...) for i in range(fields)}
    return create_model("WideModel", __base__=WideBase, **definitions)


def wide_values(fields: int = 120) -> dict[str, Any]:
    return {f"field_{i:03d}": (i if i % 2 else f"value {i}") for i in range(fields)}
