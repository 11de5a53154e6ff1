"""`save_many` of models whose classes hold no external model: the leaf path behaves as the write set.

Such a batch is written without a `WriteSet` (see `_writing._collect_leaves`); these tests pin
what it must keep: a value typed `Any` that turns out to be an external model, repeated
instances, several classes and backends in one call, refusals that write nothing, and the
bookkeeping that lets an unchanged model dump without writing.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import timedelta
from typing import Annotated, Any

import pytest

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalReference,
    RecordNotFoundError,
    StorageValidationError,
    Toast,
)
from pydantic_toast._pydantic_internals import holds_references
from pydantic_toast.url import StorageURL


def _written(url: str) -> int:
    return pydantic_toast.stats().get(StorageURL.parse(url).masked, {}).get("records_written", 0)


def _round_trips(url: str) -> int:
    return pydantic_toast.stats().get(StorageURL.parse(url).masked, {}).get("round_trips", 0)


def test_the_leaf_decision_follows_the_schema(memory_url: str) -> None:
    class Leaf(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=memory_url)

    class Holder(ExternalBaseModel):
        leaf: Leaf
        model_config = ExternalConfigDict(storage=memory_url)

    class Toasted(ExternalBaseModel):
        text: Annotated[str, Toast(storage=memory_url, threshold=10)]
        model_config = ExternalConfigDict(storage=memory_url)

    assert not holds_references(Leaf)
    assert holds_references(Holder)
    assert holds_references(Toasted)


async def test_an_external_model_in_an_any_field_is_still_written_first(sqlite_url: str) -> None:
    class Child(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=sqlite_url)

    class Loose(ExternalBaseModel):
        value: Any
        model_config = ExternalConfigDict(storage=sqlite_url)

    assert not holds_references(Loose)  # the schema cannot tell: the value decides at dump time
    child = Child(name="inside")
    plain = Loose(value=1)
    [loose_reference, plain_reference] = await Loose.save_many([Loose(value=child), plain])

    assert child.external_reference is not None
    assert await Child.load(child.external_reference) == child
    path = sqlite_url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as connection:
        [(data,)] = connection.execute(
            "SELECT data FROM external_models WHERE id = ?", (str(loose_reference.id),)
        )
    assert json.loads(data) == {"value": child.external_reference.as_dict()}
    assert (await Loose.load(plain_reference)).value == 1


async def test_a_repeated_instance_is_one_record_with_one_reference(memory_url: str) -> None:
    class Item(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=memory_url)

    item, other = Item(n=1), Item(n=2)
    await Item.save_many([Item(n=0)])  # connect before counting
    before = _written(memory_url)
    references = await Item.save_many([item, other, item])

    assert references[0] == references[2] != references[1]
    assert _written(memory_url) - before == 2
    assert await Item.load_many(references) == [item, other, item]


async def test_classes_on_two_backends_are_one_round_trip_each(memory_url: str, sqlite_url: str) -> None:
    class Here(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=memory_url)

    class There(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=sqlite_url)

    class AlsoHere(ExternalBaseModel):
        label: str
        model_config = ExternalConfigDict(storage=memory_url)

    await Here.save_many([Here(n=-1), There(n=-1)])  # connect before counting
    here, there = _round_trips(memory_url), _round_trips(sqlite_url)
    models: list[ExternalBaseModel] = [Here(n=1), There(n=2), AlsoHere(label="x"), There(n=3)]
    references = await Here.save_many(models)

    assert (_round_trips(memory_url) - here, _round_trips(sqlite_url) - there) == (1, 1)
    assert [reference.class_name for reference in references] == ["Here", "There", "AlsoHere", "There"]
    assert await There.load_many([references[1], references[3]]) == [models[1], models[3]]
    assert await AlsoHere.load(references[2]) == models[2]


async def test_a_refused_model_writes_nothing_of_the_batch(memory_url: str) -> None:
    class Sized(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=memory_url, max_size=100)

    class Required(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=memory_url)

    fine = Sized(text="short")
    with pytest.raises(StorageValidationError, match="max_size"):
        await Sized.save_many([fine, Sized(text="x" * 200)])
    with pytest.raises(StorageValidationError, match="required field"):
        await Sized.save_many([Required(name="a"), Required.model_construct()])  # type: ignore[call-arg]
    assert fine.external_reference is not None  # identified, as a write set does, but not written
    with pytest.raises(RecordNotFoundError):
        await Sized.load(fine.external_reference)


async def test_an_offload_threshold_does_not_keep_an_explicit_save_inline(memory_url: str) -> None:
    class Small(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=memory_url, offload_threshold=10_000)

    [reference] = await Small.save_many([Small(n=1)])
    assert await Small.load(reference) == Small(n=1)


async def test_a_saved_model_dumps_without_writing_until_it_changes(storage_url: str) -> None:
    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=storage_url, ttl=timedelta(hours=1))

    notes = [Note(text=f"note {n}") for n in range(3)]
    references = await Note.save_many(notes)
    before = _written(storage_url)
    assert [ExternalReference.model_validate(note.model_dump()) for note in notes] == references
    assert _written(storage_url) == before
    notes[1].text = "changed"
    notes[1].model_dump()
    assert _written(storage_url) == before + 1
    assert (await Note.load(references[1])).text == "changed"
