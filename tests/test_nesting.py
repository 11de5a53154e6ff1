"""External models inside other structures become references there, and come back whole."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from pydantic import BaseModel, Field, TypeAdapter

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError
from pydantic_toast.url import StorageURL


def models(storage: str) -> tuple[Any, Any]:
    class Chapter(ExternalBaseModel):
        title: str
        body: str
        model_config = ExternalConfigDict(storage=storage)

    class Book(ExternalBaseModel):
        title: str
        chapters: list[Chapter]
        model_config = ExternalConfigDict(storage=storage)

    return Chapter, Book


def test_external_model_inside_plain_model_list_and_dict(storage_url: str) -> None:
    chapter_type, _ = models(storage_url)

    class Shelf(BaseModel):
        featured: chapter_type  # type: ignore[valid-type]
        others: list[chapter_type]  # type: ignore[valid-type]
        by_name: dict[str, chapter_type]  # type: ignore[valid-type]
        maybe: chapter_type | None = None  # type: ignore[valid-type]
        pair: tuple[chapter_type, int] | None = None  # type: ignore[valid-type]

    one = chapter_type(title="One", body="x" * 1000)
    two = chapter_type(title="Two", body="y")
    shelf = Shelf(featured=one, others=[one, two], by_name={"two": two}, pair=(two, 2))

    dumped = shelf.model_dump()

    assert dumped["featured"] == dumped["others"][0]
    assert set(dumped["featured"]) == {"class_name", "id"}
    assert dumped["by_name"]["two"] == dumped["others"][1] == dumped["pair"][0]
    assert Shelf.model_validate(dumped) == shelf
    assert Shelf.model_validate_json(shelf.model_dump_json()) == shelf


async def test_parent_data_holds_child_references_and_each_is_stored_once(storage_url: str) -> None:
    chapter_type, book_type = models(storage_url)
    shared = chapter_type(title="Shared", body="s")
    book = book_type(title="Book", chapters=[shared, chapter_type(title="Two", body="t"), shared])

    reference = book.model_dump()

    restored: Any = book_type.model_validate(reference)
    assert restored == book
    assert restored.chapters[0].external_reference == restored.chapters[2].external_reference
    loaded: Any = await book_type.load(reference)
    assert [c.title for c in loaded.chapters] == ["Shared", "Two", "Shared"]


def test_type_adapter_dumps_references_and_validates_them(storage_url: str) -> None:
    chapter_type, _ = models(storage_url)
    adapter: TypeAdapter[list[Any]] = TypeAdapter(list[chapter_type])  # type: ignore[valid-type]
    chapters = [chapter_type(title=str(i), body="b") for i in range(3)]

    dumped = adapter.dump_python(chapters)
    assert all(set(item) == {"class_name", "id"} for item in dumped)
    assert adapter.validate_python(dumped) == chapters
    assert adapter.validate_json(adapter.dump_json(chapters)) == chapters
    assert adapter.validate_python(chapters) == chapters


def test_self_referencing_tree_round_trips(storage_url: str) -> None:
    class Node(ExternalBaseModel):
        label: str
        children: list[Node] = Field(default_factory=list)
        model_config = ExternalConfigDict(storage=storage_url)

    tree = Node(label="root", children=[Node(label="a", children=[Node(label="a1")]), Node(label="b")])
    assert Node.model_validate(tree.model_dump()) == tree


def test_an_instance_that_contains_itself_fails_fast_instead_of_looping(storage_url: str) -> None:
    class Loop(ExternalBaseModel):
        label: str
        peers: list[Loop] = Field(default_factory=list)
        model_config = ExternalConfigDict(storage=storage_url)

    node = Loop(label="self")
    node.peers.append(node)
    # It could never be loaded back into an object cycle; the same instance twice *without* a
    # cycle is fine (see the shared-child test above).
    with pytest.raises(StorageValidationError, match="contains itself"):
        node.model_dump()


def test_a_cycle_through_another_instance_is_refused(storage_url: str) -> None:
    class Loop(ExternalBaseModel):
        label: str
        peers: list[Loop] = Field(default_factory=list)
        model_config = ExternalConfigDict(storage=storage_url)

    first, second = Loop(label="a"), Loop(label="b")
    first.peers.append(second)
    second.peers.append(first)
    with pytest.raises(StorageValidationError, match="contains itself"):
        first.model_dump()
    before = pydantic_toast.stats().get(StorageURL.parse(storage_url).masked, {}).get("records_written", 0)
    with pytest.raises(StorageValidationError, match="contains itself"):
        Loop(label="root", peers=[first]).model_dump()
    after = pydantic_toast.stats().get(StorageURL.parse(storage_url).masked, {}).get("records_written", 0)
    assert after == before  # nothing of a refused dump is written


def test_inline_context_dumps_full_data_without_storing(memory_url: str) -> None:
    chapter_type, book_type = models(memory_url)
    book = book_type(title="Book", chapters=[chapter_type(title="One", body="b")])

    full = book.model_dump(context={"pydantic_toast": "inline"})

    assert full == {"title": "Book", "chapters": [{"title": "One", "body": "b"}]}
    assert book.external_reference is None


def test_reference_context_dumps_without_writing(memory_url: str) -> None:
    chapter_type, _ = models(memory_url)
    chapter = chapter_type(title="One", body="b")
    with pytest.raises(StorageValidationError, match="never saved"):
        chapter.model_dump(context={"pydantic_toast": "reference"})
    reference = chapter.model_dump()
    chapter.body = "changed locally"
    assert chapter.model_dump(context={"pydantic_toast": "reference"}) == reference
    assert chapter_type.model_validate(reference).body == "b"
    UUID(reference["id"])
