"""The write path keeps pydantic's semantics and the user's data safe.

Unchanged models are not written again, records are written leaves first across stores, a user's
model serializer is refused, inline dumps honour pydantic's filters, unreadable records are
refused, revalidated instances keep their record, and a base class without storage is abstract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
from pydantic import BaseModel, ConfigDict, field_serializer, model_serializer

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalStorageError,
    RecordNotFoundError,
    StorageValidationError,
    register_backend,
)
from pydantic_toast.backends import RecordStorageBackend
from pydantic_toast.backends.base import RecordKey, StoredRecord
from pydantic_toast.url import StorageURL

INLINE = {"pydantic_toast": "inline"}


@contextmanager
def written(*urls: str) -> Iterator[dict[str, int]]:
    """Records written per storage URL inside the block, from the backends' own counters."""
    masked = [StorageURL.parse(url).masked for url in urls]

    def totals() -> list[int]:
        snapshot = pydantic_toast.stats()
        return [snapshot.get(url, {}).get("records_written", 0) for url in masked]

    counts: dict[str, int] = {}
    before = totals()
    yield counts
    counts.update({url: after - start for url, start, after in zip(urls, before, totals(), strict=True)})


class ShelfBackend(RecordStorageBackend):
    """A real store in process memory, one shelf per URL name, that can be told to fail.

    Every batch it is given is logged, so tests see what was written in which order.
    """

    shelves: ClassVar[dict[str, dict[RecordKey, StoredRecord]]] = {}
    failing: ClassVar[set[str]] = set()
    log: ClassVar[list[tuple[str, list[str]]]] = []

    def __init__(self, url: str) -> None:
        self.name = urlsplit(url).netloc

    async def connect(self) -> None:
        self.shelves.setdefault(self.name, {})

    async def disconnect(self) -> None:
        pass

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        self.stats.add(written=len(records))
        if self.name in self.failing:
            raise OSError("shelf unavailable")
        self.log.append((self.name, [record.class_name for record in records]))
        for record in records:
            self.shelves[self.name][record.key] = record

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        self.stats.add(read=len(keys))
        return [self.shelves[self.name].get(key) for key in keys]


register_backend("shelf", ShelfBackend, replace=True)


@pytest.fixture
def shelf_url() -> Iterator[str]:
    name = f"s{uuid4().hex[:12]}"
    yield f"shelf://{name}"
    ShelfBackend.shelves.pop(name, None)
    ShelfBackend.failing.discard(name)


def shelf_name(url: str) -> str:
    return urlsplit(url).netloc


# --------------------------------------------------------------------------- 1. unchanged: no write


def tree(
    storage: str, child_storage: str | None = None, child_ttl: timedelta | None = None
) -> tuple[Any, Any]:
    class Leaf(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=child_storage or storage, ttl=child_ttl)

    class Node(ExternalBaseModel):
        title: str
        leaves: list[Leaf]
        model_config = ExternalConfigDict(storage=storage)

    return Node, Leaf


async def test_dumping_an_unchanged_model_writes_nothing(storage_url: str) -> None:
    node_type, leaf_type = tree(storage_url)
    node = node_type(title="t", leaves=[leaf_type(text=str(i)) for i in range(3)])
    with written(storage_url) as first:
        reference = node.model_dump()
    with written(storage_url) as again:
        assert node.model_dump() == reference
        assert node.model_dump_json()
        assert await pydantic_toast.adump([node]) == [reference]
    assert first[storage_url] == 4
    assert again[storage_url] == 0

    node.leaves[1].text = "changed"
    with written(storage_url) as changed:
        assert node.model_dump() == reference
    assert changed[storage_url] == 1  # only the leaf: the node's own data is unchanged


async def test_a_loaded_model_dumped_unchanged_writes_nothing(storage_url: str) -> None:
    # PostgreSQL returns JSONB in other bytes than were written: compared as data, not bytes.
    node_type, leaf_type = tree(storage_url)
    reference = await node_type(title="t", leaves=[leaf_type(text="a"), leaf_type(text="b")]).save()
    loaded = await node_type.load(reference)
    synced = node_type.model_validate(reference.model_dump())
    with written(storage_url) as dumps:
        assert loaded.model_dump() == reference.model_dump()
        assert synced.model_dump() == reference.model_dump()
        await pydantic_toast.adump(loaded)
    assert dumps[storage_url] == 0
    loaded.title = "new"
    with written(storage_url) as changed:
        loaded.model_dump()
        loaded.model_dump()
    assert changed[storage_url] == 1


async def test_save_always_writes_the_models_passed_but_not_unchanged_children(storage_url: str) -> None:
    node_type, leaf_type = tree(storage_url)
    node = node_type(title="t", leaves=[leaf_type(text="a"), leaf_type(text="b")])
    await node.save()
    with written(storage_url) as saving:
        await node.save()
        await leaf_type.save_many(node.leaves)
    assert saving[storage_url] == 1 + 2


async def test_a_large_saved_model_dumped_unchanged_writes_nothing(storage_url: str) -> None:
    # A save hashes large data on a worker thread while the record is written: the digest it
    # keeps is the written data's all the same, whether saved alone or in a batch.
    node_type, _ = tree(storage_url)
    node = node_type(title="x" * 300_000, leaves=[])
    other = node_type(title="y" * 300_000, leaves=[])
    await node.save()
    await node_type.save_many([other])
    with written(storage_url) as unchanged:
        node.model_dump()
        await pydantic_toast.adump([node, other])
    node.title = "z" * 300_000  # as long as before: only the data tells it changed
    with written(storage_url) as changed:
        node.model_dump()
        node.model_dump()
    assert unchanged[storage_url] == 0
    assert changed[storage_url] == 1


async def test_children_with_a_ttl_are_written_with_their_parent(memory_url: str, sqlite_url: str) -> None:
    # A child must not expire before the parent that points at it.
    node_type, leaf_type = tree(sqlite_url, memory_url, child_ttl=timedelta(hours=1))
    node = node_type(title="t", leaves=[leaf_type(text="a")])
    node.model_dump()
    with written(sqlite_url, memory_url) as unchanged:
        node.model_dump()
    node.title = "new"
    with written(sqlite_url, memory_url) as changed:
        node.model_dump()
    assert unchanged == {sqlite_url: 0, memory_url: 0}
    assert changed == {sqlite_url: 1, memory_url: 1}


async def test_a_failed_write_is_tried_again_by_the_next_dump(shelf_url: str) -> None:
    node_type, leaf_type = tree(shelf_url)
    node = node_type(title="t", leaves=[leaf_type(text="a")])
    ShelfBackend.failing.add(shelf_name(shelf_url))
    with pytest.raises(ExternalStorageError):
        node.model_dump()
    ShelfBackend.failing.clear()
    with written(shelf_url) as retry:
        reference = node.model_dump()
    assert retry[shelf_url] == 2
    assert node_type.model_validate(reference) == node


async def test_deleting_an_instance_makes_its_next_dump_write(sqlite_url: str) -> None:
    node_type, _ = tree(sqlite_url)
    node = node_type(title="t", leaves=[])
    reference = node.model_dump()
    assert await node.delete()
    assert node.model_dump() == reference
    assert (await node_type.load(reference)) == node


# --------------------------------------------------------------------------- 2. leaves first


async def test_a_failed_child_store_leaves_the_parent_unwritten(sqlite_url: str, shelf_url: str) -> None:
    node_type, leaf_type = tree(sqlite_url, shelf_url)
    node = node_type(title="t", leaves=[leaf_type(text="a")])
    reference = node.model_dump()
    node.title = "update"
    node.leaves.append(leaf_type(text="new child"))
    ShelfBackend.failing.add(shelf_name(shelf_url))
    with written(sqlite_url) as failed, pytest.raises(ExternalStorageError):
        node.model_dump()
    assert failed[sqlite_url] == 0
    assert (await node_type.load(reference)).title == "t"  # never points at the unstored child

    fresh = node_type(title="new", leaves=[leaf_type(text="b")])
    with pytest.raises(ExternalStorageError):
        fresh.model_dump()
    assert fresh.external_reference is not None
    with pytest.raises(RecordNotFoundError):
        await node_type.load(fresh.external_reference)


async def test_a_paused_redis_child_store_leaves_the_sqlite_parent_unwritten(
    sqlite_url: str, redis_servers: Callable[..., Any]
) -> None:
    # The issue's own setting: parent in SQLite, child in a Redis server that stops answering.
    server = redis_servers()
    node_type, leaf_type = tree(sqlite_url, f"{server.url}?retries=0&socket_timeout=0.5")
    node = node_type(title="t", leaves=[leaf_type(text="a")])
    reference = node.model_dump()
    node.title = "update"
    node.leaves.append(leaf_type(text="new child"))
    server.pause()
    try:
        with written(sqlite_url) as failed, pytest.raises(ExternalStorageError, match="no answer within"):
            node.model_dump()
    finally:
        server.resume()
    assert failed[sqlite_url] == 0
    loaded = await node_type.load(reference)
    assert (loaded.title, [leaf.text for leaf in loaded.leaves]) == ("t", ["a"])


async def test_stores_pointing_one_way_cost_one_round_trip_each(sqlite_url: str, shelf_url: str) -> None:
    class Local(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=sqlite_url)

    node_type, leaf_type = tree(sqlite_url, shelf_url)

    class Holder(ExternalBaseModel):
        nodes: list[node_type]  # type: ignore[valid-type]
        local: list[Local]
        model_config = ExternalConfigDict(storage=sqlite_url)

    await Local(n=0).save()  # connects
    holder = Holder(
        nodes=[node_type(title=str(i), leaves=[leaf_type(text="x")]) for i in range(3)],
        local=[Local(n=i) for i in range(3)],
    )
    before = pydantic_toast.stats()
    await holder.save()
    after = pydantic_toast.stats()
    trips = {
        url: after[StorageURL.parse(url).masked]["round_trips"]
        - before.get(StorageURL.parse(url).masked, {}).get("round_trips", 0)
        for url in (sqlite_url,)
    }
    assert trips == {sqlite_url: 1}
    assert [name for name, _ in ShelfBackend.log if name == shelf_name(shelf_url)] == [shelf_name(shelf_url)]


async def test_a_chain_through_two_stores_is_written_level_by_level(shelf_url: str) -> None:
    other = f"shelf://o{uuid4().hex[:12]}"

    class Leaf(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=shelf_url)

    class Middle(ExternalBaseModel):
        leaf: Leaf
        model_config = ExternalConfigDict(storage=other)

    class Root(ExternalBaseModel):
        middle: Middle
        sibling: Leaf
        model_config = ExternalConfigDict(storage=shelf_url)

    root = Root(middle=Middle(leaf=Leaf(text="deep")), sibling=Leaf(text="near"))
    ShelfBackend.log.clear()
    try:
        ShelfBackend.failing.add(shelf_name(other))
        with pytest.raises(ExternalStorageError):
            await root.save()
        # The leaves were written; the middle failed, so the root was not written.
        assert ShelfBackend.log == [(shelf_name(shelf_url), ["Leaf", "Leaf"])]
        ShelfBackend.failing.clear()
        ShelfBackend.log.clear()
        reference = await root.save()
        assert ShelfBackend.log == [(shelf_name(other), ["Middle"]), (shelf_name(shelf_url), ["Root"])]
        assert await Root.load(reference) == root
    finally:
        ShelfBackend.shelves.pop(shelf_name(other), None)
        ShelfBackend.failing.clear()


async def test_one_batch_lists_leaves_before_their_parents(shelf_url: str) -> None:
    node_type, leaf_type = tree(shelf_url)

    class Book(ExternalBaseModel):
        chapters: list[node_type]  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=shelf_url)

    ShelfBackend.log.clear()
    await Book(chapters=[node_type(title="a", leaves=[leaf_type(text="x"), leaf_type(text="y")])]).save()
    assert ShelfBackend.log == [(shelf_name(shelf_url), ["Leaf", "Leaf", "Node", "Book"])]


# --------------------------------------------------------------------------- 3. model serializers


def plain_shape(self: Any) -> dict[str, Any]:
    return {"shown": True}


def wrap_shape(self: Any, handler: Any) -> dict[str, Any]:
    return {"shown": True}


@pytest.mark.parametrize(("mode", "function"), [("plain", plain_shape), ("wrap", wrap_shape)])
def test_a_model_serializer_on_an_external_model_is_refused(
    memory_url: str, mode: Any, function: Any
) -> None:
    namespace = {
        "__module__": __name__,
        "__qualname__": "Shaped",
        "__annotations__": {"secret": str},
        "model_config": ExternalConfigDict(storage=memory_url),
        "shape": model_serializer(mode=mode)(function),  # type: ignore[no-untyped-call]
    }
    with pytest.raises(StorageValidationError, match=r"Shaped: @model_serializer 'shape' would replace"):
        type("Shaped", (ExternalBaseModel,), namespace)


def test_a_model_serializer_from_a_subclass_or_a_plain_mixin_is_refused(memory_url: str) -> None:
    class Base(ExternalBaseModel):
        secret: str
        model_config = ExternalConfigDict(storage=memory_url)

    with pytest.raises(StorageValidationError, match=r"Sub: @model_serializer 'shape' would replace"):

        class Sub(Base):
            @model_serializer(mode="wrap")
            def shape(self, handler: Any) -> dict[str, Any]:
                return {"shown": True}

    class Mixin(BaseModel):
        @model_serializer
        def shape(self) -> dict[str, Any]:
            return {"shown": True}

    with pytest.raises(StorageValidationError, match=r"Mixed: @model_serializer 'shape' would replace"):

        class Mixed(ExternalBaseModel, Mixin):
            secret: str
            model_config = ExternalConfigDict(storage=memory_url)


async def test_field_serializers_shape_the_stored_data(storage_url: str) -> None:
    class Tagged(ExternalBaseModel):
        tags: set[str]
        model_config = ExternalConfigDict(storage=storage_url)

        @field_serializer("tags")
        def _sorted(self, tags: set[str]) -> list[str]:
            return sorted(tags)

    reference = Tagged(tags={"b", "a"}).model_dump()
    assert Tagged.model_validate(reference).tags == {"a", "b"}
    assert Tagged(tags={"b", "a"}).model_dump(context=INLINE) == {"tags": ["a", "b"]}


# --------------------------------------------------------------------------- 4. inline filters


class Account(ExternalBaseModel):
    name: str
    secret: str
    note: str | None = None
    level: int = 1
    model_config = ExternalConfigDict(storage="memory://semantics-write")


class PlainAccount(BaseModel):
    name: str
    secret: str
    note: str | None = None
    level: int = 1


class Team(BaseModel):
    lead: Account
    members: list[Account]


class PlainTeam(BaseModel):
    lead: PlainAccount
    members: list[PlainAccount]


FILTERS: list[dict[str, Any]] = [
    {"exclude": {"secret"}},
    {"include": {"name", "level"}},
    {"exclude_none": True},
    {"exclude_defaults": True},
    {"exclude_unset": True},
]
NESTED_FILTERS: list[dict[str, Any]] = [
    {"exclude": {"lead": {"secret"}, "members": {"__all__": {"secret"}}}},
    {"include": {"lead": {"name"}, "members": {0: {"name"}}}},
    {"exclude_none": True, "exclude_defaults": True},
    {"exclude_unset": True},
]


@pytest.mark.parametrize("kwargs", FILTERS)
def test_inline_dump_honours_filters_like_a_plain_model(kwargs: dict[str, Any]) -> None:
    account = Account(name="a", secret="s3cr3t", level=1)
    twin = PlainAccount(name="a", secret="s3cr3t", level=1)
    assert account.model_dump(context=INLINE, **kwargs) == twin.model_dump(**kwargs)
    assert account.model_dump_json(context=INLINE, **kwargs) == twin.model_dump_json(**kwargs)


@pytest.mark.parametrize("kwargs", NESTED_FILTERS)
def test_nested_inline_dump_honours_filters_like_a_plain_model(kwargs: dict[str, Any]) -> None:
    data: dict[str, Any] = {
        "lead": {"name": "l", "secret": "s3cr3t"},
        "members": [
            {"name": "m", "secret": "s3cr3t", "note": "n"},
            {"name": "k", "secret": "s3cr3t", "level": 2},
        ],
    }
    team, twin = Team.model_validate(data), PlainTeam.model_validate(data)
    assert team.model_dump(context=INLINE, **kwargs) == twin.model_dump(**kwargs)
    assert team.model_dump_json(context=INLINE, **kwargs) == twin.model_dump_json(**kwargs)
    assert "s3cr3t" not in team.model_dump_json(context=INLINE, exclude=NESTED_FILTERS[0]["exclude"])


def test_the_stored_record_is_always_the_full_data() -> None:
    account = Account(name="a", secret="kept")
    reference = account.model_dump(exclude={"secret"})
    assert Account.model_validate(reference).secret == "kept"


# --------------------------------------------------------------------------- 5. unreadable records


class Person(ExternalBaseModel):
    name: str
    age: int
    model_config = ExternalConfigDict(storage="memory://semantics-write")


def test_an_invalid_assigned_value_is_refused_naming_the_field() -> None:
    person = Person(name="n", age=3)
    person.age = "forty-two-secret"  # type: ignore[assignment]
    with pytest.raises(StorageValidationError, match=r"Person cannot be stored: field\(s\) 'age'") as caught:
        person.model_dump()
    assert "forty-two-secret" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert person.external_reference is not None
    with pytest.raises(RecordNotFoundError):
        Person.model_validate(person.external_reference.model_dump())


async def test_a_constructed_model_missing_required_fields_is_refused() -> None:
    person = Person.model_construct(name="n")  # type: ignore[call-arg]
    with pytest.raises(StorageValidationError, match=r"required field\(s\) 'age' have no value"):
        person.model_dump()
    with pytest.raises(StorageValidationError, match=r"'age'"):
        await person.save()
    assert Person.model_construct(name="n", age=1).model_dump()


def test_a_field_serializer_returning_another_type_is_refused(memory_url: str) -> None:
    class Counter(ExternalBaseModel):
        count: int
        model_config = ExternalConfigDict(storage=memory_url)

        @field_serializer("count")
        def _as_text(self, count: int) -> int:
            return str(count)  # type: ignore[return-value]

    with pytest.raises(StorageValidationError, match=r"Counter cannot be stored: field\(s\) 'count'"):
        Counter(count=1).model_dump()


def test_a_nested_unreadable_model_is_reported_as_itself(memory_url: str) -> None:
    class Crew(ExternalBaseModel):
        people: list[Person]
        model_config = ExternalConfigDict(storage=memory_url)

    person = Person(name="n", age=1)
    person.age = "x"  # type: ignore[assignment]
    with pytest.raises(StorageValidationError, match=r"^Person cannot be stored"):
        Crew(people=[person]).model_dump()


# --------------------------------------------------------------------------- 7. revalidation


async def test_revalidated_instances_keep_their_record(storage_url: str) -> None:
    class Item(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=storage_url, revalidate_instances="always")

    class Box(BaseModel):
        item: Item
        model_config = ConfigDict(revalidate_instances="always")

    item = Item(n=1)
    reference = item.model_dump()
    box = Box(item=item)
    assert box.item is not item
    assert box.item.external_reference == item.external_reference
    with written(storage_url) as rewrites:
        assert box.model_dump() == {"item": reference}
        assert Box.model_validate(box).model_dump() == {"item": reference}
    assert rewrites[storage_url] == 0
    box.item.n = 2
    box.model_dump()
    assert Item.model_validate(reference).n == 2

    fresh = Box(item=Item(n=5))
    first = fresh.model_dump()
    assert Box.model_validate(fresh).model_dump() == first


# --------------------------------------------------------------------------- 8. abstract bases


async def test_a_base_without_storage_is_abstract(sqlite_url: str, memory_url: str) -> None:
    class Document(ExternalBaseModel):
        title: str
        body: str = ""

    class Memo(Document):
        model_config = ExternalConfigDict(storage=sqlite_url)

    class Draft(Document):
        model_config = ExternalConfigDict(storage=memory_url)

    memo, draft = Memo(title="m"), Draft(title="d")
    assert Memo.model_validate(memo.model_dump()) == memo
    assert await Draft.load(await draft.save()) == draft

    abstract = Document(title="t")
    assert Document.model_validate({"title": "t"}) == abstract
    message = r"Document has no storage configured, so it is an abstract base"
    with pytest.raises(StorageValidationError, match=message):
        abstract.model_dump()
    with pytest.raises(StorageValidationError, match=message):
        await abstract.save()
    with pytest.raises(StorageValidationError, match=message):
        Document.model_validate({"class_name": "Document", "id": str(uuid4())})
    with pytest.raises(StorageValidationError, match=message):
        await Document.load(uuid4())
    with pytest.raises(StorageValidationError, match=message):
        pydantic_toast.dump([abstract])
    assert abstract.model_dump(context=INLINE) == {"title": "t", "body": ""}
