"""`offload_threshold`: small external models stay inline and write nothing, large ones are stored.

The size is the model's JSON as stored, before compression. Every backend, plus the JSON schema
(both shapes), explicit saves (always stored), nesting (inline data inside stored records) and
what an inline model's nested models do to the write set.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import pytest
from pydantic import BaseModel, TypeAdapter

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError, codecs
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.registry import backend_class
from pydantic_toast.url import StorageURL

THRESHOLD = 64


def note_class(storage: str, **config: Any) -> Any:
    class Note(ExternalBaseModel):
        text: str
        model_config = cast(
            ExternalConfigDict, {"storage": storage, "offload_threshold": THRESHOLD, **config}
        )

    return Note


def json_size(model: ExternalBaseModel) -> int:
    """The bytes the threshold compares: the model's own data as JSON, uncompressed."""
    return len(model.model_dump_json(context={"pydantic_toast": "inline"}))


def text_of_size(size: int) -> str:
    """A text whose Note's JSON, {"text":"..."}, is exactly `size` bytes."""
    return "x" * (size - len('{"text":""}'))


def written(storage: str) -> int:
    return pydantic_toast.stats().get(StorageURL.parse(storage).masked, {}).get("records_written", 0)


async def stored(storage: str, class_name: str, record_id: UUID) -> StoredRecord | None:
    backend = backend_class(StorageURL.parse(storage).scheme)(storage)
    await backend.connect()
    try:
        [found] = await backend.load_records([(record_id, class_name)])
    finally:
        await backend.disconnect()
    return found


# --------------------------------------------------------------------------- one model


async def test_at_or_below_the_threshold_a_dump_is_the_data_and_writes_nothing(storage_url: str) -> None:
    note = note_class(storage_url)
    small = note(text=text_of_size(THRESHOLD))
    assert json_size(small) == THRESHOLD
    before = written(storage_url)
    assert small.model_dump() == {"text": small.text}
    assert json.loads(small.model_dump_json()) == {"text": small.text}
    assert written(storage_url) == before
    assert small.external_reference is None  # no record, no id


async def test_above_the_threshold_a_dump_stores_and_is_the_reference(storage_url: str) -> None:
    note = note_class(storage_url)
    large = note(text=text_of_size(THRESHOLD + 1))
    reference = large.model_dump()
    assert set(reference) == {"class_name", "id"}
    assert large.external_reference is not None
    assert str(large.external_reference.id) == reference["id"]
    found = await stored(storage_url, "Note", UUID(reference["id"]))
    assert found is not None
    assert json.loads(codecs.decode(found)) == {"text": large.text}
    assert (await note.load(reference)) == large
    assert note.model_validate(reference) == large


async def test_validate_accepts_both_shapes(storage_url: str) -> None:
    note = note_class(storage_url)
    small, large = note(text="hi"), note(text=text_of_size(THRESHOLD * 2))
    for item in (small, large):
        assert note.model_validate(item.model_dump()) == item
        assert note.model_validate_json(item.model_dump_json()) == item
        adapter: TypeAdapter[list[Any]] = TypeAdapter(list[note])  # type: ignore[valid-type]
        assert adapter.validate_json(adapter.dump_json([item])) == [item]
    # Inline data is a new instance, with no record, that can be dumped again.
    copy = note.model_validate_json(small.model_dump_json())
    assert copy.external_reference is None
    assert copy.model_dump() == {"text": "hi"}


async def test_explicit_saves_always_store(storage_url: str) -> None:
    note = note_class(storage_url)
    small = note(text="hi")
    reference = await small.save()
    assert small.external_reference == reference
    assert (await note.load(reference)) == small
    others = [note(text="a"), note(text="b")]
    references = await note.save_many(others)
    assert [item.text for item in await note.load_many(references)] == ["a", "b"]
    # The size still decides what a dump returns: a record now exists, but the data is small.
    assert small.model_dump() == {"text": "hi"}


async def test_unchanged_large_models_are_not_written_again(storage_url: str) -> None:
    note = note_class(storage_url)
    large = note(text=text_of_size(THRESHOLD * 3))
    first = large.model_dump()
    before = written(storage_url)
    assert large.model_dump() == first
    loaded = note.model_validate(first)
    assert loaded.model_dump() == first
    assert written(storage_url) == before


async def test_a_loaded_model_that_shrinks_dumps_inline(storage_url: str) -> None:
    note = note_class(storage_url)
    reference = note(text=text_of_size(THRESHOLD * 3)).model_dump()
    loaded = note.model_validate(reference)
    loaded.text = "short now"
    before = written(storage_url)
    assert loaded.model_dump() == {"text": "short now"}
    assert written(storage_url) == before  # the old record is left as it was, not rewritten


async def test_python_mode_keeps_python_values_and_filters_apply(memory_url: str) -> None:
    class Event(ExternalBaseModel):
        at: datetime
        name: str
        model_config = ExternalConfigDict(storage=memory_url, offload_threshold=1000)

    event = Event(at=datetime(2025, 1, 2, tzinfo=UTC), name="x")
    assert event.model_dump() == {"at": event.at, "name": "x"}
    assert event.model_dump(mode="json") == {"at": "2025-01-02T00:00:00Z", "name": "x"}
    assert event.model_dump(exclude={"name"}) == {"at": event.at}


async def test_the_threshold_counts_json_bytes_before_compression(storage_url: str) -> None:
    note = note_class(storage_url, compression="zlib", compression_min_size=0)
    large = note(text="ab" * THRESHOLD)  # compresses far below the threshold, but its JSON is above it
    reference = large.model_dump()
    found = await stored(storage_url, "Note", UUID(reference["id"]))
    assert found is not None
    assert found.encoding == "json+zlib"
    assert len(found.payload) < THRESHOLD < json_size(large)


# --------------------------------------------------------------------------- nesting


def tree_classes(storage: str, child_storage: str | None = None) -> tuple[Any, Any]:
    """Leaf: inline up to 64 bytes. Branch: up to 100, so one leaf's reference (65 bytes of JSON)
    keeps a branch inline ({"name":"b","leaves":[ref]} is 89 bytes) and three leaves do not."""

    class Leaf(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=child_storage or storage, offload_threshold=THRESHOLD)

    class Branch(ExternalBaseModel):
        name: str
        leaves: list[Leaf]
        model_config = ExternalConfigDict(storage=storage, offload_threshold=100)  # see the tests

    return Leaf, Branch


async def test_small_nested_models_stay_inline_in_their_parents_record(storage_url: str) -> None:
    leaf, branch = tree_classes(storage_url)
    small, large = leaf(text="small"), leaf(text=text_of_size(THRESHOLD * 2))
    tree = branch(name="b", leaves=[small, large, small])
    before = written(storage_url)
    reference = tree.model_dump()
    assert set(reference) == {"class_name", "id"}
    assert written(storage_url) - before == 2  # the branch and the large leaf, not the small one
    assert small.external_reference is None
    found = await stored(storage_url, "Branch", UUID(reference["id"]))
    assert found is not None
    data = json.loads(codecs.decode(found))
    assert data["leaves"][0] == data["leaves"][2] == {"text": "small"}
    assert data["leaves"][1] == large.model_dump()  # the large leaf's reference
    assert (await branch.load(reference)) == tree
    assert branch.model_validate(reference) == tree


async def test_a_small_parent_is_inline_and_its_large_children_are_stored(storage_url: str) -> None:
    leaf, branch = tree_classes(storage_url)
    large = leaf(text=text_of_size(THRESHOLD * 2))
    tree = branch(name="b", leaves=[large])
    before = written(storage_url)
    dumped = tree.model_dump()
    assert dumped == {"name": "b", "leaves": [large.model_dump()]}
    assert written(storage_url) - before == 1  # the leaf only
    assert large.external_reference is not None
    assert (await stored(storage_url, "Leaf", large.external_reference.id)) is not None
    assert branch.model_validate(dumped) == tree
    assert branch.model_validate_json(tree.model_dump_json()) == tree


async def test_an_explicit_save_stores_the_root_and_leaves_small_children_inline(storage_url: str) -> None:
    leaf, branch = tree_classes(storage_url)
    tree = branch(name="b", leaves=[leaf(text="s")])
    reference = await tree.save()
    found = await stored(storage_url, "Branch", reference.id)
    assert found is not None
    assert json.loads(codecs.decode(found))["leaves"] == [{"text": "s"}]
    assert tree.leaves[0].external_reference is None
    # Saved explicitly in the same batch as its parent, a small child gets its own record too.
    child = leaf(text="t")
    other = branch(name="c", leaves=[child])
    await branch.save_many([other, child])
    assert child.external_reference is not None
    assert (await leaf.load(child.external_reference)) == child


async def test_plain_containers_and_batched_dumps(storage_url: str) -> None:
    leaf, branch = tree_classes(storage_url)

    class Message(BaseModel):
        leaves: list[leaf]  # type: ignore[valid-type]
        tree: branch  # type: ignore[valid-type]

    large = leaf(text=text_of_size(THRESHOLD * 2))
    message = Message(leaves=[leaf(text="a"), large], tree=branch(name="t", leaves=[leaf(text="b")]))
    before = written(storage_url)
    dumped = await pydantic_toast.adump(message, mode="json")
    assert dumped["leaves"][0] == {"text": "a"}
    assert set(dumped["leaves"][1]) == {"class_name", "id"}
    assert dumped["tree"] == {"name": "t", "leaves": [{"text": "b"}]}
    assert written(storage_url) - before == 1
    assert Message.model_validate(dumped) == message
    assert Message.model_validate_json(message.model_dump_json()) == message


async def test_children_of_an_inline_model_in_another_store_are_written_first(
    memory_url: str, sqlite_url: str
) -> None:
    leaf, middle = tree_classes(memory_url, child_storage=sqlite_url)

    class Root(ExternalBaseModel):
        middle: middle  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=memory_url)

    large = leaf(text=text_of_size(THRESHOLD * 2))
    root = Root(middle=middle(name="m", leaves=[large]))
    reference = root.model_dump()
    assert large.external_reference is not None
    found = await stored(memory_url, "Root", UUID(reference["id"]))
    assert found is not None
    assert json.loads(codecs.decode(found))["middle"] == {"name": "m", "leaves": [large.model_dump()]}
    assert Root.model_validate(reference) == root


async def test_a_small_model_with_a_ttl_inside_a_stored_parent_is_not_written(memory_url: str) -> None:
    class Leaf(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(
            storage=memory_url, offload_threshold=THRESHOLD, ttl=timedelta(minutes=5)
        )

    class Parent(ExternalBaseModel):
        leaf: Leaf
        model_config = ExternalConfigDict(storage=memory_url)

    parent = Parent(leaf=Leaf(text="s"))
    parent.model_dump()
    before = written(memory_url)
    parent.model_dump(context={"unrelated": True})
    parent.leaf = Leaf(text="t")
    parent.model_dump()
    assert written(memory_url) - before == 1
    assert parent.leaf.external_reference is None


def test_a_small_model_that_contains_itself_is_refused(memory_url: str) -> None:
    class Node(ExternalBaseModel):
        children: list[Any]
        model_config = ExternalConfigDict(storage=memory_url, offload_threshold=10_000)

    node = Node(children=[])
    node.children.append(node)
    with pytest.raises(StorageValidationError, match="contains itself"):
        node.model_dump()


# --------------------------------------------------------------------------- configuration and schema


@pytest.mark.parametrize("bad", [-1, True, "65536", 1.5])
def test_the_threshold_is_validated_at_class_definition(memory_url: str, bad: object) -> None:
    with pytest.raises(StorageValidationError) as caught:
        note_class(memory_url, offload_threshold=bad)
    message = str(caught.value)
    assert "Note" in message
    assert "offload_threshold" in message
    assert ">= 0" in message


def test_no_threshold_is_todays_contract(memory_url: str) -> None:
    note = note_class(memory_url, offload_threshold=None)
    assert set(note(text="x").model_dump()) == {"class_name", "id"}
    zero = note_class(memory_url, offload_threshold=0, storage_name="Zero")
    assert set(zero(text="").model_dump()) == {"class_name", "id"}  # '{"text":""}' is 11 bytes


def test_json_schemas_show_both_shapes(memory_url: str) -> None:
    note = note_class(memory_url)
    plain = note_class(memory_url, offload_threshold=None, storage_name="Plain")
    for mode in ("validation", "serialization"):
        schema = note.model_json_schema(mode=mode)
        reference, data = schema["anyOf"]
        assert reference["required"] == ["class_name", "id"]
        assert reference["properties"]["class_name"]["const"] == "Note"
        assert data["properties"] == {"text": {"title": "Text", "type": "string"}}
    assert "anyOf" not in plain.model_json_schema(mode="serialization")

    class Holder(BaseModel):
        notes: list[note]  # type: ignore[valid-type]

    schema = Holder.model_json_schema(mode="serialization")
    assert len(schema["$defs"]["Note"]["anyOf"]) == 2


def test_full_json_data_validates_into_a_model_that_can_be_stored(memory_url: str) -> None:
    # Without a threshold too: a model built from JSON data is a new, unsaved record.
    note = note_class(memory_url, offload_threshold=None)
    item = note.model_validate_json('{"text": "from json"}')
    assert item.external_reference is None
    reference = item.model_dump()
    assert note.model_validate(reference) == item


async def test_upgraded_records_are_written_back_whatever_their_size(memory_url: str) -> None:
    from fixtures.stored import store_raw, stored_version

    class Note(ExternalBaseModel):
        body: str
        model_config = ExternalConfigDict(
            storage=memory_url, offload_threshold=THRESHOLD, schema_version=2, upgrade_write_back=True
        )

        @pydantic_toast.upgrade(from_version=1)
        def _rename(data: dict[str, Any]) -> dict[str, Any]:
            return {"body": data["text"]}

    record_id = await store_raw(memory_url, "Note", {"text": "old"})
    assert (await Note.load(record_id)).body == "old"
    assert await stored_version(memory_url, "Note", record_id) == 2
