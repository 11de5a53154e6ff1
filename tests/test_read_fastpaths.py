"""A parent's stored references read by pydantic-core (`stored_reader`) load as through the hook.

A class whose stored data runs no user code, with references to leaf classes where the fill in
place looks, gets a validator that reads those references without calling the library's hook.
Whatever it does not read (another shape, a subclass's reference, inline data, an id in
another form, a missing child) goes through the hook or is validated again as before: these
tests load the same stored parents with and without the reader and compare everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any
from unittest import mock
from uuid import UUID

import pytest
from pydantic import BaseModel, Field, field_validator

from fixtures.stored import store_raw, stored_version
from fixtures.traffic import traffic
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageValidationError,
    StoredDataError,
    Toast,
    _loading,
    upgrade,
)
from pydantic_toast._pydantic_internals import stored_reader
from pydantic_toast._record_state import state_of
from test_fill_in_place import assert_same


@contextmanager
def hook_calls() -> Iterator[list[object]]:
    """The values the library's wrap validator is called with while the block runs."""
    seen: list[object] = []
    original = _loading.validate

    def spy(cls: Any, value: Any, handler: Any, info: Any) -> Any:
        seen.append(value)
        return original(cls, value, handler, info)

    with mock.patch.object(_loading, "validate", spy):
        yield seen


@contextmanager
def without_reader() -> Iterator[None]:
    """Every parent validated through the hook, as before the stored reader existed."""
    with mock.patch.object(_loading, "stored_reader", return_value=None):
        yield


class Models:
    def __init__(self, storage: str) -> None:
        config = ExternalConfigDict(storage=storage)

        class Child(ExternalBaseModel):
            model_config = config
            name: str

        class Special(Child):
            extra: int = 1

        class Small(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=storage, offload_threshold=10_000)
            name: str

        class Parent(ExternalBaseModel):
            model_config = config
            title: str = "p"
            children: list[Child] = Field(default_factory=list)
            by_name: dict[str, Child | None] = Field(default_factory=dict)
            small: list[Small] = Field(default_factory=list)

        self.child, self.special, self.small, self.parent = Child, Special, Small, Parent
        self.storage = storage


@pytest.fixture
def models(sqlite_url: str) -> Models:
    return Models(sqlite_url)


async def load_both(cls: Any, reference: Any) -> tuple[Any, Any, list[object]]:
    with hook_calls() as calls:
        fast = await cls.load(reference)
    with without_reader():
        slow = await cls.load(reference)
    return fast, slow, calls


async def test_leaf_children_are_read_without_calling_the_hook(models: Models) -> None:
    one, two = models.child(name="one"), models.child(name="two")
    parent = models.parent(children=[one, two, one], by_name={"a": two, "b": None})
    reference = await parent.save()

    assert stored_reader(models.parent) is not None
    fast, slow, calls = await load_both(models.parent, reference)

    assert calls == []
    assert_same(fast, slow)
    assert fast.children[0] is fast.children[2]
    assert fast.by_name["a"] is fast.children[1]
    assert [child.name for child in fast.children] == ["one", "two", "one"]
    with hook_calls() as again:
        assert_same(models.parent.model_validate(reference.model_dump()), slow)
    assert len(again) == 1  # the root reference itself, handed to model_validate


async def test_a_subclass_reference_and_inline_data_go_through_the_hook(models: Models) -> None:
    parent = models.parent(
        children=[models.child(name="base"), models.special(name="sub", extra=5)],
        small=[models.small(name="inline")],
    )
    reference = await parent.save()

    fast, slow, calls = await load_both(models.parent, reference)

    assert len(calls) >= 2  # the subclass's reference and the inline data, at least
    assert_same(fast, slow)
    assert type(fast.children[1]) is models.special
    assert fast.children[1].extra == 5
    assert fast.small[0].name == "inline"


@pytest.mark.parametrize(
    "form",
    [str.upper, lambda text: text.replace("-", ""), lambda text: "{" + text + "}", "urn:uuid:{}".format],
)
async def test_an_id_in_another_form_loads_the_same_child(models: Models, form: Any) -> None:
    child = models.child(name="c")
    child_reference = await child.save()
    text = form(str(child_reference.id))
    record_id = await store_raw(
        models.storage, "Parent", {"title": "t", "children": [{"class_name": "Child", "id": text}]}
    )

    fast, slow, _ = await load_both(models.parent, record_id)

    assert_same(fast, slow)
    assert fast.children[0].name == "c"
    assert state_of(fast.children[0]).id == child_reference.id


@pytest.mark.parametrize(
    "stored",
    [
        {"class_name": "Child", "id": "not a uuid"},
        {"class_name": "Child", "id": "00000000-0000-0000-0000-000000000001"},  # no such record
        {"class_name": "Child", "id": 7},
        {"class_name": "Child", "id": "6f1c6d0e-6a43-4f0e-9f5a-2f0c8d1e2b3a", "more": 1},
        {"class_name": "Elsewhere", "id": "6f1c6d0e-6a43-4f0e-9f5a-2f0c8d1e2b3a"},
    ],
)
async def test_a_bad_stored_reference_fails_as_before(models: Models, stored: dict[str, Any]) -> None:
    record_id = await store_raw(models.storage, "Parent", {"title": "t", "children": [stored]})

    with pytest.raises(StoredDataError) as fast:
        await models.parent.load(record_id)
    with without_reader(), pytest.raises(StoredDataError) as slow:
        await models.parent.load(record_id)

    assert str(fast.value) == str(slow.value)
    assert fast.value.errors == slow.value.errors
    assert "not a uuid" not in str(fast.value)  # stored values stay out of the error


def test_shapes_the_fill_cannot_prove_get_no_reader(models: Models) -> None:
    child = models.child

    class Box(BaseModel):
        child: child  # type: ignore[valid-type]

    class Holder(ExternalBaseModel):  # a leaf class no more: its references wait for records
        model_config = ExternalConfigDict(storage=models.storage)
        children: list[child]  # type: ignore[valid-type]

    annotations: list[Any] = [
        list[child | int],  # type: ignore[valid-type]
        tuple[child, ...],  # type: ignore[valid-type]
        list[Box],
        list[Holder],
        Annotated[str, Toast(storage=models.storage, threshold=100)],
    ]
    for number, annotation in enumerate(annotations):
        namespace = {
            "__annotations__": {"v": annotation},
            "model_config": ExternalConfigDict(storage=models.storage),
        }
        parent = type(f"Shape{number}", (ExternalBaseModel,), namespace)
        assert stored_reader(parent) is None, annotation


async def test_a_parent_with_a_validator_is_validated_through_the_hook(models: Models) -> None:
    seen: list[list[str]] = []

    class Checked(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=models.storage)
        children: list[models.child]  # type: ignore[name-defined]

        @field_validator("children")
        @classmethod
        def _names(cls, value: list[Any]) -> list[Any]:
            seen.append([child.name for child in value])
            return value

    reference = await Checked(children=[models.child(name="a")]).save()
    seen.clear()

    with hook_calls() as calls:
        loaded = await Checked.load(reference)

    assert len(calls) >= 1  # its user code must only ever see built children
    assert seen == [["a"]]
    assert loaded.children[0].name == "a"


def test_ids_of_a_read_reference_are_uuids(models: Models) -> None:
    reader = stored_reader(models.parent)
    assert reader is not None
    validator, names = reader
    stored = b'{"title":"t","children":[{"class_name":"Child","id":"6f1c6d0e-6a43-4f0e-9f5a-2f0c8d1e2b3a"}]}'
    model = validator.validate_json(stored)
    assert names == {"Child": models.child, "Small": models.small}
    assert type(model.children[0].id) is UUID


async def test_an_abstract_class_refuses_a_reference_object_as_it_refuses_any_other(models: Models) -> None:
    class Abstract(ExternalBaseModel):  # no storage configured
        name: str

    reference = await models.child(name="c").save()
    for argument in (reference, reference.model_dump(), reference.id):
        with pytest.raises(StorageValidationError, match="no storage configured"):
            await Abstract.load(argument)
        with pytest.raises(StorageValidationError, match="no storage configured"):
            await Abstract.load_many([argument])
    assert await Abstract.load_many([]) == []


async def test_load_many_refuses_another_class_and_keeps_stored_values_out(
    models: Models,
) -> None:
    good = await models.child(name="good").save()
    bad = await store_raw(models.storage, "Child", {"name": ["a secret value"]})

    with pytest.raises(StoredDataError) as failure:
        await models.child.load_many([good, bad])

    assert failure.value.id == bad
    assert "a secret value" not in str(failure.value)
    assert failure.value.__context__ is None
    with pytest.raises(StorageValidationError):
        await models.child.load_many([good, {"class_name": "Parent", "id": str(good.id)}])


async def _owner_of_an_old_and_a_current_pet(
    sqlite_url: str, write_back: bool, *, repeat_old: bool
) -> tuple[Any, UUID, UUID]:
    """An Owner class and a stored owner of two pets: one stored at version 1 (upgraded when
    read), one at the current version 2; `repeat_old` lists the old one a second time, last.
    Returns the class, the old pet's id and the owner's id."""

    class Pet(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=sqlite_url, schema_version=2, upgrade_write_back=write_back)
        full_name: str

        @upgrade(from_version=1)
        def _rename(data: dict[str, Any]) -> dict[str, Any]:
            data["full_name"] = data.pop("name")
            return data

    class Owner(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=sqlite_url)
        pets: list[Pet]

    old = await store_raw(sqlite_url, "Pet", {"name": "Rex"}, version=1)
    current = await Pet(full_name="Tom").save()
    ids = [old, current.id, old] if repeat_old else [old, current.id]
    pets = [{"class_name": "Pet", "id": str(i)} for i in ids]
    return Owner, old, await store_raw(sqlite_url, "Owner", {"pets": pets})


@pytest.mark.parametrize("write_back", [False, True])
async def test_old_children_read_by_the_reader_are_upgraded_and_written_back_as_before(
    sqlite_url: str, write_back: bool
) -> None:
    owner_class, old, owner = await _owner_of_an_old_and_a_current_pet(
        sqlite_url, write_back, repeat_old=False
    )
    assert stored_reader(owner_class) is not None

    with hook_calls() as calls:
        loaded = await owner_class.load(owner)

    assert calls == []
    assert [pet.full_name for pet in loaded.pets] == ["Rex", "Tom"]
    assert await stored_version(sqlite_url, "Pet", old) == (2 if write_back else 1)
    assert await stored_version(sqlite_url, "Owner", owner) == 1  # nothing else written


# ---------------------------------------------------------------------------- one batch of leaf children


@contextmanager
def batch_outcomes() -> Iterator[dict[str, list[bool]]]:
    """What `_want_batch` and `_fill_batch` returned while the block ran."""
    outcomes: dict[str, list[bool]] = {"want": [], "fill": []}
    want, fill = _loading.TreeLoader._want_batch, _loading.TreeLoader._fill_batch

    def want_spy(self: Any, *args: Any) -> bool:
        outcomes["want"].append(want(self, *args))
        return outcomes["want"][-1]

    def fill_spy(self: Any, *args: Any) -> bool:
        outcomes["fill"].append(fill(self, *args))
        return outcomes["fill"][-1]

    with (
        mock.patch.object(_loading.TreeLoader, "_want_batch", want_spy),
        mock.patch.object(_loading.TreeLoader, "_fill_batch", fill_spy),
    ):
        yield outcomes


@contextmanager
def without_batch() -> Iterator[None]:
    """Each reference the stored reader read resolved one by one, as before the batch."""
    with mock.patch.object(_loading.TreeLoader, "_want_batch", return_value=False):
        yield


class OneClass:
    def __init__(self, storage: str) -> None:
        config = ExternalConfigDict(storage=storage)

        class Child(ExternalBaseModel):
            model_config = config
            name: str

        class Parent(ExternalBaseModel):
            model_config = config
            title: str = "p"
            children: list[Child] = Field(default_factory=list)
            by_name: dict[str, Child | None] = Field(default_factory=dict)
            groups: dict[str, list[Child]] = Field(default_factory=dict)

        self.child, self.parent, self.storage = Child, Parent, storage


@pytest.fixture
def one_class(sqlite_url: str) -> OneClass:
    return OneClass(sqlite_url)


async def load_three_ways(cls: Any, reference: Any) -> tuple[Any, dict[str, list[bool]]]:
    """Loaded with the batch, checked against one by one and against the hook; the batch's model."""
    with batch_outcomes() as outcomes:
        fast = await cls.load(reference)
    with without_batch():
        one_by_one = await cls.load(reference)
    with without_reader():
        slow = await cls.load(reference)
    assert_same(fast, one_by_one)
    assert_same(fast, slow)
    return fast, outcomes


async def test_children_of_one_class_are_fetched_and_built_as_one_batch(one_class: OneClass) -> None:
    one, two, three = (one_class.child(name=name) for name in ("one", "two", "three"))
    parent = one_class.parent(
        children=[one, two, one],
        by_name={"a": three, "b": None, "c": two},
        groups={"g": [three, one]},
    )
    reference = await parent.save()

    fast, outcomes = await load_three_ways(one_class.parent, reference)

    assert outcomes == {"want": [True], "fill": [True]}
    assert [child.name for child in fast.children] == ["one", "two", "one"]
    assert fast.children[0] is fast.children[2] is fast.groups["g"][1]
    assert fast.by_name["a"] is fast.groups["g"][0]
    assert fast.by_name["c"] is fast.children[1]
    assert state_of(fast.children[1]).id == state_of(two).id
    assert fast.model_dump_json() == parent.model_dump_json()


async def test_load_many_of_parents_sharing_children_builds_each_child_once(one_class: OneClass) -> None:
    shared, own = one_class.child(name="shared"), one_class.child(name="own")
    first = await one_class.parent(children=[shared, own]).save()
    second = await one_class.parent(children=[own, shared, shared]).save()

    with batch_outcomes() as outcomes:
        fast = await one_class.parent.load_many([first, second])
    with without_reader():
        slow = await one_class.parent.load_many([first, second])

    assert outcomes == {"want": [True, True], "fill": [True, True]}
    assert_same(fast, slow)
    assert fast[0].children[0] is fast[1].children[1] is fast[1].children[2]
    assert fast[0].children[1] is fast[1].children[0]


async def test_children_fetched_at_another_level_are_not_batched(one_class: OneClass) -> None:
    child = one_class.child

    class Holder(ExternalBaseModel):  # holds references of its own: its reference waits
        model_config = ExternalConfigDict(storage=one_class.storage)
        inner: list[one_class.parent]  # type: ignore[name-defined]
        direct: list[child]  # type: ignore[valid-type]

    shared = child(name="shared")
    inner = one_class.parent(children=[shared, child(name="other")])
    reference = await Holder(inner=[inner], direct=[shared]).save()

    with batch_outcomes() as outcomes:
        fast = await Holder.load(reference)
    with without_reader():
        slow = await Holder.load(reference)

    # The inner parent is read after `shared` was fetched for the holder: resolved one by one.
    assert outcomes == {"want": [False], "fill": []}
    assert_same(fast, slow)
    assert fast.inner[0].children[0] is fast.direct[0]


async def test_a_missing_child_of_a_batch_fails_as_before(one_class: OneClass) -> None:
    gone = one_class.child(name="gone")
    reference = await one_class.parent(children=[one_class.child(name="kept"), gone]).save()
    await gone.delete()

    with batch_outcomes() as outcomes, pytest.raises(StoredDataError) as fast:
        await one_class.parent.load(reference)
    with without_reader(), pytest.raises(StoredDataError) as slow:
        await one_class.parent.load(reference)

    assert outcomes == {"want": [True], "fill": [False]}  # validated again: the hook's error
    assert str(fast.value) == str(slow.value)
    assert fast.value.errors == slow.value.errors


async def test_a_child_that_does_not_validate_fails_as_before(one_class: OneClass) -> None:
    good = await one_class.child(name="good").save()
    bad = await store_raw(one_class.storage, "Child", {"name": ["a secret value"]})
    children = [{"class_name": "Child", "id": str(good.id)}, {"class_name": "Child", "id": str(bad)}]
    reference = await store_raw(one_class.storage, "Parent", {"title": "t", "children": children})

    with batch_outcomes() as outcomes, pytest.raises(StoredDataError) as fast:
        await one_class.parent.load(reference)
    with without_reader(), pytest.raises(StoredDataError) as slow:
        await one_class.parent.load(reference)

    assert outcomes == {"want": [True], "fill": [False]}
    assert str(fast.value) == str(slow.value)
    assert fast.value.errors == slow.value.errors
    assert "a secret value" not in str(fast.value)
    assert fast.value.__context__ is None


@pytest.mark.parametrize("write_back", [False, True])
async def test_old_children_of_a_batch_are_upgraded_and_written_back_once(
    sqlite_url: str, write_back: bool
) -> None:
    owner_class, old, owner = await _owner_of_an_old_and_a_current_pet(
        sqlite_url, write_back, repeat_old=True
    )

    with batch_outcomes() as outcomes:
        loaded = await owner_class.load(owner)

    assert outcomes == {"want": [True], "fill": [True]}
    assert [pet.full_name for pet in loaded.pets] == ["Rex", "Tom", "Rex"]
    assert loaded.pets[0] is loaded.pets[2]
    assert await stored_version(sqlite_url, "Pet", old) == (2 if write_back else 1)
    assert state_of(loaded.pets[0]).loaded_json is None  # the record held the old version


@pytest.mark.parametrize("gone", [False, True])
async def test_a_batch_fetched_on_its_own_costs_the_round_trips_it_did(
    one_class: OneClass, gone: bool
) -> None:
    kept, lost = one_class.child(name="kept"), one_class.child(name="lost")
    reference = await one_class.parent(children=[kept, lost, kept]).save()
    if gone:
        await lost.delete()

    counts = []
    for block in (batch_outcomes, without_batch, without_reader):
        with block(), traffic(one_class.storage) as seen:
            try:
                await one_class.parent.load(reference)
            except StoredDataError:
                assert gone
        counts.append((seen.round_trips, seen.read))

    assert counts == [(2, 2 if gone else 3)] * 3  # the parent, then its children in one batch


async def test_a_missing_child_of_parents_batched_together_fails_as_before(one_class: OneClass) -> None:
    shared, gone = one_class.child(name="shared"), one_class.child(name="gone")
    first = await one_class.parent(children=[shared]).save()
    second = await one_class.parent(children=[shared, gone]).save()
    await gone.delete()

    with batch_outcomes() as outcomes, pytest.raises(StoredDataError) as fast:
        await one_class.parent.load_many([first, second])
    with without_reader(), pytest.raises(StoredDataError) as slow:
        await one_class.parent.load_many([first, second])

    assert outcomes == {"want": [True, True], "fill": [True, False]}
    assert str(fast.value) == str(slow.value)
    assert fast.value.errors == slow.value.errors


def test_a_batch_loads_the_same_through_the_sync_api(one_class: OneClass) -> None:
    children = [one_class.child(name=f"c{n}") for n in range(3)]
    reference = one_class.parent(children=[*children, children[0]], by_name={"x": children[1]}).model_dump()

    with batch_outcomes() as outcomes:
        fast = one_class.parent.model_validate(reference)
    with without_reader():
        slow = one_class.parent.model_validate(reference)

    assert outcomes == {"want": [True], "fill": [True]}
    assert_same(fast, slow)
    assert fast.children[0] is fast.children[3]


async def test_load_many_builds_the_common_record_in_line_as_materialize_does(one_class: OneClass) -> None:
    children = [one_class.child(name=f"c{n}") for n in range(3)]
    references = await one_class.child.save_many(children)
    order = [references[2], references[0], references[2], references[1]]

    fast = await one_class.child.load_many(order)
    # A context takes materialize's general path (the keywords, then the state) for every record.
    general = await one_class.child.load_many(order, context={"any": "context"})

    assert_same(fast, general)
    assert fast[0] is fast[2]
    assert [child.name for child in fast] == ["c2", "c0", "c2", "c1"]
    assert state_of(fast[1]).loaded_json is not None  # an unchanged dump writes nothing
    assert [state_of(child).id for child in fast] == [reference.id for reference in order]
