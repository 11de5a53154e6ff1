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


@pytest.mark.parametrize("write_back", [False, True])
async def test_old_children_read_by_the_reader_are_upgraded_and_written_back_as_before(
    sqlite_url: str, write_back: bool
) -> None:
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
    pets = [{"class_name": "Pet", "id": str(old)}, {"class_name": "Pet", "id": str(current.id)}]
    owner = await store_raw(sqlite_url, "Owner", {"pets": pets})
    assert stored_reader(Owner) is not None

    with hook_calls() as calls:
        loaded = await Owner.load(owner)

    assert calls == []
    assert [pet.full_name for pet in loaded.pets] == ["Rex", "Tom"]
    assert await stored_version(sqlite_url, "Pet", old) == (2 if write_back else 1)
    assert await stored_version(sqlite_url, "Owner", owner) == 1  # nothing else written
