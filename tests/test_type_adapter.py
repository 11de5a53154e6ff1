"""Any type: `TypeAdapter(Annotated[T, Toast(...)])` and the upstream `ExternalTypeAdapter` API.

No `from __future__ import annotations`: the types below are defined in functions.
"""

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple, assert_type

import pytest
from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict

import pydantic_toast
from fixtures.traffic import traffic
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalTypeAdapter,
    RecordNotFoundError,
    StorageValidationError,
    Toast,
)


class Product(BaseModel):
    name: str
    price: float


class User(TypedDict):
    name: str
    id: int


@dataclass
class Blob:
    name: str
    data: bytes


class Point(NamedTuple):
    x: int
    y: int


CASES: list[tuple[Any, Any, str]] = [
    (User, {"name": "Alice", "id": 1}, "User"),
    (Blob, Blob(name="b", data=bytes(range(256))), "Blob"),
    (Point, Point(1, 2), "Point"),
    (list[Product], [Product(name="a", price=1.5), Product(name="b", price=2.0)], "list[Product]"),
    (dict[str, Product], {"a": Product(name="a", price=1.0)}, "dict[str, Product]"),
    (str, "text \x00 with a NUL", "str"),
    (int, 42, "int"),
    (float, float("inf"), "float"),
    (bytes, b"\x00\xff", "bytes"),
    (list[int], [], "list[int]"),
]


@pytest.mark.parametrize(("type_", "value", "name"), CASES, ids=[case[2] for case in CASES])
def test_type_adapter_with_toast_stores_any_type(storage_url: str, type_: Any, value: Any, name: str) -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[type_, Toast(storage=storage_url)])
    dumped = adapter.dump_python(value, mode="json")
    assert dumped["$toast"]["class_name"] == name
    assert adapter.validate_python(dumped) == value
    assert adapter.validate_json(adapter.dump_json(value)) == value


@pytest.mark.parametrize(("type_", "value", "name"), CASES, ids=[case[2] for case in CASES])
async def test_external_type_adapter_async(storage_url: str, type_: Any, value: Any, name: str) -> None:
    adapter: ExternalTypeAdapter[Any] = ExternalTypeAdapter(type_, storage_url)
    assert adapter.type_name == name
    reference = await adapter.save_external(value)
    # A plain dict, as upstream's: JSON-ready, indexable.
    assert type(reference) is dict
    assert json.loads(json.dumps(reference)) == reference
    assert reference["class_name"] == name
    assert await adapter.load_external(reference) == value


def test_external_type_adapter_sync(storage_url: str) -> None:
    adapter: ExternalTypeAdapter[Any] = ExternalTypeAdapter(list[Product], storage_url)
    products = [Product(name="a", price=1.0)]
    reference = adapter.save_external_sync(products)
    assert adapter.load_external_sync(reference) == products
    # The reference a save returns and the one a Toast field of the same type dumps are the same.
    field: TypeAdapter[Any] = TypeAdapter(Annotated[list[Product], Toast(storage=storage_url)])
    assert field.dump_python(products) == {"$toast": reference}
    # Saving again writes nothing: the record is the content.
    with traffic(storage_url) as writing:
        assert adapter.save_external_sync(products) == reference
    assert writing.written == 0


async def test_sync_calls_work_inside_a_running_loop(memory_url: str) -> None:
    adapter: ExternalTypeAdapter[Any] = ExternalTypeAdapter(User, memory_url)
    reference = adapter.save_external_sync({"name": "Bob", "id": 2})
    assert adapter.load_external_sync(reference) == {"name": "Bob", "id": 2}


async def test_a_reference_from_a_bare_class_name_and_id_loads(memory_url: str) -> None:
    adapter: ExternalTypeAdapter[Any] = ExternalTypeAdapter(int, memory_url)
    reference = await adapter.save_external(7)
    assert await adapter.load_external({"class_name": "int", "id": reference["id"]}) == 7


async def test_errors(memory_url: str) -> None:
    adapter: ExternalTypeAdapter[Any] = ExternalTypeAdapter(User, memory_url)
    with pytest.raises(StorageValidationError) as invalid:
        await adapter.save_external({"name": "secret-name"})
    assert "secret-name" not in str(invalid.value)
    reference = await adapter.save_external({"name": "a", "id": 1})
    with pytest.raises(StorageValidationError, match="'Other'"):
        await adapter.load_external({**reference, "class_name": "Other"})
    with pytest.raises(StorageValidationError):
        adapter.load_external_sync({**reference, "class_name": "Other"})
    missing = {"class_name": "User", "id": "00000000-0000-8000-8000-000000000000"}
    with pytest.raises(RecordNotFoundError):
        await adapter.load_external(missing)
    with pytest.raises(StorageValidationError, match="scheme"):
        ExternalTypeAdapter(User, "nosuch://x")


def test_a_name_of_its_own(memory_url: str) -> None:
    adapter: ExternalTypeAdapter[Any] = ExternalTypeAdapter(list[int], memory_url, name="Scores")
    reference = adapter.save_external_sync([1, 2])
    assert reference["class_name"] == adapter.type_name == "Scores"


def test_a_whole_value_holding_external_models(storage_url: str) -> None:
    class Customer(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=storage_url)

    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[list[Customer], Toast(storage=storage_url)])
    customers = [Customer(name=f"c{i}") for i in range(3)]
    with traffic(storage_url) as writing:
        value = adapter.dump_python(customers, mode="json")
    # The three customers, then the list that refers to them: one batch, leaves first.
    assert writing.written == 4
    assert writing.round_trips == 1
    assert adapter.validate_python(value) == customers
    with traffic(storage_url) as writing:
        assert pydantic_toast.dump(customers) == [customer.model_dump() for customer in customers]
    assert writing.written == 0


def test_default_names_of_types(memory_url: str) -> None:
    names = {
        "int | None": int | None,
        "tuple[int, ...]": tuple[int, ...],
        "list[dict[str, Any]]": list[dict[str, Any]],
        "Literal['a', 1]": Literal["a", 1],
    }
    for name, type_ in names.items():
        assert ExternalTypeAdapter(type_, memory_url).type_name == name
    with pytest.raises(StorageValidationError, match="name="):
        ExternalTypeAdapter(Literal["a:b"], memory_url)
    assert ExternalTypeAdapter(Literal["a:b"], memory_url, name="Choice").type_name == "Choice"


def test_the_adapter_is_typed(memory_url: str) -> None:
    assert_type(ExternalTypeAdapter(int, memory_url), ExternalTypeAdapter[int])
    assert_type(ExternalTypeAdapter(int | None, memory_url), ExternalTypeAdapter[Any])
    numbers = ExternalTypeAdapter(int, memory_url)
    assert assert_type(numbers.load_external_sync(numbers.save_external_sync(3)), int) == 3
