"""The upstream project's explicit calls (nurikk/pydantic-toast): save_external, load_external, their
sync twins and is_external_reference, as thin wrappers over save/load, on every backend."""

from __future__ import annotations

import json
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalReference,
    RecordNotFoundError,
    StorageValidationError,
    is_external_reference,
)
from pydantic_toast.url import StorageURL


def user_class(storage: str, **config: Any) -> Any:
    class User(ExternalBaseModel):
        name: str
        age: int
        model_config = cast(ExternalConfigDict, {"storage": storage, **config})

    return User


def written(storage: str) -> int:
    return pydantic_toast.stats().get(StorageURL.parse(storage).masked, {}).get("records_written", 0)


async def test_save_external_returns_a_plain_dict_reference(storage_url: str) -> None:
    user = user_class(storage_url)
    alice = user(name="Alice", age=30)
    ref = await alice.save_external()
    assert type(ref) is dict
    assert ref == {"class_name": "User", "id": ref["id"]}
    assert json.loads(json.dumps(ref)) == ref
    assert UUID(ref["id"]) == alice.external_reference.id
    assert ref == alice.model_dump()  # the same reference a dump returns

    loaded = await user.load_external(ref)
    assert loaded == alice
    assert (await user.load_external(ExternalReference.model_validate(ref))) == alice
    assert (await user.load_external(ref["id"])) == alice


def test_the_sync_twins(storage_url: str) -> None:
    user = user_class(storage_url)
    bob = user(name="Bob", age=25)
    ref = bob.save_external_sync()
    assert type(ref) is dict
    assert user.load_external_sync(ref) == bob
    bob.age = 26
    assert bob.save_external_sync() == ref  # the same record, updated
    assert user.load_external_sync(ref).age == 26


async def test_the_sync_twins_work_inside_a_running_loop(memory_url: str) -> None:
    user = user_class(memory_url)
    carol = user(name="Carol", age=41)
    ref = carol.save_external_sync()
    assert user.load_external_sync(ref) == carol
    assert (await user.load_external(ref)) == carol


async def test_save_external_always_writes(memory_url: str) -> None:
    user = user_class(memory_url, offload_threshold=10_000)
    small = user(name="Dan", age=5)
    assert small.model_dump() == {"name": "Dan", "age": 5}  # inline under the threshold
    before = written(memory_url)
    ref = await small.save_external()
    ref_again = small.save_external_sync()
    assert ref == ref_again
    assert written(memory_url) - before == 2  # an explicit save writes even unchanged data
    assert (await user.load_external(ref)) == small


async def test_load_external_errors(storage_url: str) -> None:
    user = user_class(storage_url)
    missing = {"class_name": "User", "id": str(uuid4())}
    with pytest.raises(RecordNotFoundError):
        await user.load_external(missing)
    with pytest.raises(RecordNotFoundError):
        user.load_external_sync(missing)
    with pytest.raises(StorageValidationError, match="class"):
        await user.load_external({"class_name": "Other", "id": missing["id"]})
    with pytest.raises(StorageValidationError, match="UUID"):
        user.load_external_sync({"class_name": "User", "id": "not-a-uuid"})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"class_name": "User", "id": "550e8400-e29b-41d4-a716-446655440000"}, True),
        ({"class_name": "User", "id": UUID("550e8400-e29b-41d4-a716-446655440000")}, True),
        (ExternalReference(class_name="User", id=UUID(int=1)), True),
        ({"class_name": "User", "id": "550e8400"}, False),
        ({"class_name": 1, "id": "550e8400-e29b-41d4-a716-446655440000"}, False),
        ({"class_name": "User", "id": "550e8400-e29b-41d4-a716-446655440000", "extra": 1}, False),
        ({"class_name": "User"}, False),
        ({"name": "Alice", "age": 30}, False),
        ("550e8400-e29b-41d4-a716-446655440000", False),
        (None, False),
        ([("class_name", "User"), ("id", "x")], False),
    ],
)
def test_is_external_reference(data: object, expected: bool) -> None:
    assert is_external_reference(data) is expected
    assert ExternalBaseModel.is_external_reference(data) is expected
