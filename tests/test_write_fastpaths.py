"""The write side's shortcuts fall back to the general path whenever they are not certain.

A single `save()` of a leaf class skips the write set (`_writing._leaf_record`), and a model whose
fields all hold values of exactly their declared scalar types is serialized without pydantic's
warnings-as-errors mode (`_writing._scalar_fields`). These tests pin both decisions and their
fallbacks: a value of any other type is still refused, with a permissive warnings filter too.
"""

from __future__ import annotations

import warnings
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

import pytest
from pydantic import BaseModel, PlainSerializer, create_model, field_serializer

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageValidationError,
)
from pydantic_toast._writing import _ClassWriter
from pydantic_toast.url import StorageURL


def _written(url: str) -> int:
    return pydantic_toast.stats().get(StorageURL.parse(url).masked, {}).get("records_written", 0)


class _Spy:
    """Stands for a class's serializer, recording the warnings mode of each call."""

    def __init__(self, serializer: Any) -> None:
        self.serializer = serializer
        self.modes: list[object] = []

    def to_json(self, model: Any, **kwargs: Any) -> bytes:
        self.modes.append(kwargs["warnings"])
        return bytes(self.serializer.to_json(model, **kwargs))


def _spy(monkeypatch: pytest.MonkeyPatch, cls: type[ExternalBaseModel]) -> _Spy:
    writer = _ClassWriter.of(cls)
    spy = _Spy(writer.serializer)
    monkeypatch.setattr(writer, "serializer", spy)
    return spy


def test_plain_scalar_classes_are_told_from_their_schema(memory_url: str) -> None:
    class Scalars(ExternalBaseModel):
        text: str
        number: int
        ratio: float
        flag: bool
        raw: bytes
        at: datetime
        day: date
        clock: time
        span: timedelta
        key: UUID
        amount: Decimal
        maybe: int | None = None
        model_config = ExternalConfigDict(storage=memory_url)

    exact = _ClassWriter.of(Scalars).exact
    assert exact is not None
    types, accepted = exact
    assert types == (str, int, float, bool, bytes, datetime, date, time, timedelta, UUID, Decimal, int)
    assert accepted[-1] == frozenset({int, type(None)})

    class Listed(ExternalBaseModel):
        tags: list[str]
        model_config = ExternalConfigDict(storage=memory_url)

    class Nested(ExternalBaseModel):
        inner: BaseModel
        model_config = ExternalConfigDict(storage=memory_url)

    class Chosen(ExternalBaseModel):
        kind: Literal["a", "b"]
        model_config = ExternalConfigDict(storage=memory_url)

    class Serialized(ExternalBaseModel):
        count: int
        model_config = ExternalConfigDict(storage=memory_url)

        @field_serializer("count")
        def _as_is(self, count: int) -> int:
            return count

    class PlainSerialized(ExternalBaseModel):
        count: Annotated[int, PlainSerializer(lambda value: value)]
        model_config = ExternalConfigDict(storage=memory_url)

    class Open(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=memory_url, extra="allow")

    class Stored(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)

    # Past the field count where checking each value costs more than the checked call saves.
    fields: dict[str, Any] = {f"f{index}": (int, 0) for index in range(65)}
    Wide = create_model("Wide", __base__=Stored, **fields)  # noqa: N806
    del fields["f64"]
    Narrow = create_model("Narrow", __base__=Stored, **fields)  # noqa: N806
    assert _ClassWriter.of(Narrow).exact is not None

    for cls in (Listed, Nested, Chosen, Serialized, PlainSerialized, Open, Wide):
        assert _ClassWriter.of(cls).exact is None, cls.__name__


class Person(ExternalBaseModel):
    name: str
    age: int
    score: float = 0.0
    nickname: str | None = None
    model_config = ExternalConfigDict(storage="memory://write-fastpaths")


async def test_exact_values_skip_the_checked_call_and_others_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _spy(monkeypatch, Person)
    await Person(name="a", age=1).save()
    await Person(name="a", age=1, nickname="n").save()
    assert spy.modes == [True, True]

    class Text(str):
        pass

    others = [
        Person.model_construct(name="a", age=True),  # a bool is an int, but not exactly
        Person.model_construct(name="a", age=1, score=1),  # an int where a float is declared
        Person.model_construct(name=Text("a"), age=1),
    ]
    reordered = Person(name="a", age=1)
    reordered.__dict__["name"] = reordered.__dict__.pop("name")  # the same keys in another order
    others.append(reordered)
    spy.modes.clear()
    for person in others:
        await person.save()
    assert spy.modes == ["error"] * len(others)
    for person in others:
        assert person.external_reference is not None
        assert (await Person.load(person.external_reference)).model_dump(context={"pydantic_toast": "inline"})

    extra = Person(name="a", age=1)
    extra.__dict__["stray"] = 1  # a key that is no field
    missing = Person(name="a", age=1)
    del missing.__dict__["score"]
    spy.modes.clear()
    await extra.save()
    await missing.save()
    assert spy.modes == ["error", "error"]


@pytest.mark.parametrize("how", ["assigned", "constructed"])
async def test_a_value_of_another_type_is_refused_whatever_the_warnings_filter(how: str) -> None:
    if how == "assigned":
        person = Person(name="n", age=3)
        person.age = "forty-two"  # type: ignore[assignment]
    else:
        person = Person.model_construct(name="n", age="forty-two")  # type: ignore[arg-type]
    before = _written("memory://write-fastpaths")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a warning instead of the refusal would pass unseen
        with pytest.raises(StorageValidationError, match=r"Person cannot be stored: field\(s\) 'age'"):
            await person.save()
        with pytest.raises(StorageValidationError, match=r"Person cannot be stored: field\(s\) 'age'"):
            await Person.save_many([Person(name="ok", age=1), person])
    assert _written("memory://write-fastpaths") == before
    assert person.external_reference is not None
    with pytest.raises(RecordNotFoundError):
        await Person.load(person.external_reference)


async def test_a_single_save_of_a_leaf_class_holding_a_model_after_all_takes_the_general_path(
    memory_url: str,
) -> None:
    class Child(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=memory_url)

    class Loose(ExternalBaseModel):
        value: Any
        model_config = ExternalConfigDict(storage=memory_url)

    assert _ClassWriter.of(Loose).leaf
    child = Child(name="inside")
    reference = await Loose(value=child).save()

    assert child.external_reference is not None
    assert await Child.load(child.external_reference) == child
    assert (await Loose.load(reference)).value == child.external_reference.as_dict()


async def test_a_single_save_keeps_the_record_identity(memory_url: str) -> None:
    class Note(ExternalBaseModel):
        text: str
        at: datetime
        model_config = ExternalConfigDict(storage=memory_url, ttl=timedelta(hours=1))

    note = Note(text="a", at=datetime(2025, 1, 1, tzinfo=UTC))
    first = await note.save()
    note.text = "b"
    second = await note.save()
    assert first == second
    assert (await Note.load(first)).text == "b"
    other = Note(text="c", at=datetime(2025, 1, 1, tzinfo=UTC))
    assert (await other.save()).id != first.id


async def test_a_compressed_single_save_counts_and_remembers_its_json(memory_url: str) -> None:
    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=memory_url, compression="zstd")

    note = Note(text="rows of data; " * 200)
    masked = StorageURL.parse(memory_url).masked
    before = pydantic_toast.stats().get(masked, {})
    await note.save()
    after = pydantic_toast.stats()[masked]
    json_size = len(note.model_dump_json(context={"pydantic_toast": "inline"}))
    assert after["raw_bytes_written"] - before.get("raw_bytes_written", 0) == json_size
    assert after["bytes_written"] - before.get("bytes_written", 0) < json_size
    written = _written(memory_url)
    note.model_dump()  # unchanged since the save: nothing to write
    assert _written(memory_url) == written
    note.text = "changed"
    note.model_dump()
    assert _written(memory_url) == written + 1
