"""Schema versions: records written by older code are upgraded on load, step by step."""

from __future__ import annotations

from typing import Any

import pytest

from fixtures.stored import store_raw, stored_version
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError, upgrade


def person_model(storage: str, *, write_back: bool = False) -> Any:
    class Person(ExternalBaseModel):
        full_name: str
        age_years: int
        model_config = ExternalConfigDict(storage=storage, schema_version=3, upgrade_write_back=write_back)

        @upgrade(from_version=1)
        def _rename(data: dict[str, Any]) -> dict[str, Any]:
            data["full_name"] = data.pop("name")
            return data

        @upgrade(from_version=2)
        def _age_as_int(data: dict[str, Any]) -> dict[str, Any]:
            data["age_years"] = int(data.pop("age"))
            return data

    return Person


async def test_several_steps_run_in_order(storage_url: str) -> None:
    person = person_model(storage_url)
    record_id = await store_raw(storage_url, "Person", {"name": "Ada", "age": "36"}, version=1)

    loaded = await person.load(record_id)

    assert (loaded.full_name, loaded.age_years) == ("Ada", 36)
    assert await stored_version(storage_url, "Person", record_id) == 1


async def test_one_step_from_the_previous_version(storage_url: str) -> None:
    person = person_model(storage_url)
    record_id = await store_raw(storage_url, "Person", {"full_name": "Ada", "age": 36.0}, version=2)
    assert person.model_validate({"class_name": "Person", "id": str(record_id)}).age_years == 36


async def test_write_back_stores_the_upgraded_record(storage_url: str) -> None:
    person = person_model(storage_url, write_back=True)
    async_id = await store_raw(storage_url, "Person", {"name": "Ada", "age": "36"}, version=1)
    sync_id = await store_raw(storage_url, "Person", {"name": "Bob", "age": "7"}, version=1)

    await person.load(async_id)
    person.model_validate({"class_name": "Person", "id": str(sync_id)})

    assert await stored_version(storage_url, "Person", async_id) == 3
    assert await stored_version(storage_url, "Person", sync_id) == 3
    assert (await person.load(async_id)).full_name == "Ada"


async def test_load_many_upgrades_and_writes_back_only_the_old_records(storage_url: str) -> None:
    person = person_model(storage_url, write_back=True)
    old_id = await store_raw(storage_url, "Person", {"name": "Ada", "age": "36"}, version=1)
    current = await person(full_name="Bob", age_years=7).save()

    loaded = await person.load_many([old_id, current, old_id])

    assert [model.full_name for model in loaded] == ["Ada", "Bob", "Ada"]
    assert loaded[0] is loaded[2]  # one record, one instance
    assert await stored_version(storage_url, "Person", old_id) == 3
    assert (await person.load(old_id)).age_years == 36


async def test_a_record_newer_than_the_code_is_refused(storage_url: str) -> None:
    person = person_model(storage_url)
    record_id = await store_raw(storage_url, "Person", {"full_name": "Ada", "age_years": 1}, version=4)
    with pytest.raises(StorageValidationError, match="schema_version 4, newer than this code's 3") as caught:
        await person.load(record_id)
    assert (caught.value.expected, caught.value.actual) == (3, 4)


async def test_a_gap_in_the_chain_names_both_versions(storage_url: str) -> None:
    class Gappy(ExternalBaseModel):
        value: int
        model_config = ExternalConfigDict(storage=storage_url, schema_version=3)

        @upgrade(from_version=2)
        def _step(data: dict[str, Any]) -> dict[str, Any]:
            return data

    record_id = await store_raw(storage_url, "Gappy", {"value": 1}, version=1)
    with pytest.raises(StorageValidationError, match=r"no upgrade from version 1 to 2") as caught:
        await Gappy.load(record_id)
    assert "@upgrade(from_version=1)" in str(caught.value)


async def test_a_failing_upgrade_is_reported_with_the_step(storage_url: str) -> None:
    class Fragile(ExternalBaseModel):
        value: int
        model_config = ExternalConfigDict(storage=storage_url, schema_version=2)

        @upgrade(from_version=1)
        def _step(data: dict[str, Any]) -> dict[str, Any]:
            raise KeyError("value")

    record_id = await store_raw(storage_url, "Fragile", {"other": 1}, version=1)
    with pytest.raises(StorageValidationError, match=r"from version 1 to 2 failed: KeyError"):
        await Fragile.load(record_id)


def test_upgrades_are_checked_at_class_definition() -> None:
    with pytest.raises(StorageValidationError, match=r"raise schema_version to 2"):

        class TooFar(ExternalBaseModel):
            value: int
            model_config = ExternalConfigDict(storage="memory://upgrades")

            @upgrade(from_version=1)
            def _step(data: dict[str, Any]) -> dict[str, Any]:
                return data

    with pytest.raises(StorageValidationError, match=r"two upgrades from version 1"):

        class Twice(ExternalBaseModel):
            value: int
            model_config = ExternalConfigDict(storage="memory://upgrades", schema_version=2)

            @upgrade(from_version=1)
            def _one(data: dict[str, Any]) -> dict[str, Any]:
                return data

            @upgrade(from_version=1)
            def _other(data: dict[str, Any]) -> dict[str, Any]:
                return data

    with pytest.raises(StorageValidationError, match=r"integer >= 1"):
        upgrade(from_version=0)
