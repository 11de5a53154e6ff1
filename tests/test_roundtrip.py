"""The core contract on every built-in backend: dump to a reference, restore, update, errors."""

from __future__ import annotations

import asyncio
import copy
import pickle
import threading
import time
import weakref
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel, PrivateAttr, ValidationError

from models import every_type_model, every_type_values, wide_model, wide_values
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalReference,
    RecordNotFoundError,
    StorageValidationError,
)
from pydantic_toast._record_state import state_of
from pydantic_toast.registry import backend_class
from pydantic_toast.url import StorageURL


def user_model(storage: str) -> Any:
    """A fresh class per test (the URL comes from a fixture); typed Any for attribute access."""

    class UserProfile(ExternalBaseModel):
        name: str
        email: str
        age: int

        model_config = ExternalConfigDict(storage=storage)

    return UserProfile


async def stored_envelope(storage: str, record_id: UUID, class_name: str) -> dict[str, Any] | None:
    """Read a record through the backend's contract `load`, as a custom tool would."""
    backend = backend_class(StorageURL.parse(storage).scheme)(storage)
    await backend.connect()
    try:
        return await backend.load(record_id, class_name)
    finally:
        await backend.disconnect()


def test_dump_returns_reference_and_validate_restores_every_field_type(storage_url: str) -> None:
    model = every_type_model(storage_url)
    original = model(**every_type_values())

    reference = original.model_dump()

    assert set(reference) == {"class_name", "id"}
    assert reference["class_name"] == "EveryType"
    assert UUID(reference["id"]).version == 4
    restored = model.model_validate(reference)
    assert restored == original
    for name in every_type_values():
        assert getattr(restored, name) == getattr(original, name), name
    assert restored.when.utcoffset() == original.when.utcoffset()


def test_model_with_more_than_100_fields_round_trips(storage_url: str) -> None:
    model = wide_model(storage_url)
    original = model(**wide_values())
    assert model.model_validate(original.model_dump()) == original


def test_dump_json_and_validate_json(storage_url: str) -> None:
    model = user_model(storage_url)
    user = model(name="Ada", email="ada@example.com", age=36)

    text = user.model_dump_json()

    assert text == f'{{"class_name":"UserProfile","id":"{user.model_dump()["id"]}"}}'
    assert model.model_validate_json(text) == user


async def test_redump_keeps_id_updates_data_and_timestamps(storage_url: str) -> None:
    model = user_model(storage_url)
    user = model(name="Ada", email="ada@example.com", age=36)
    first = user.model_dump()
    before = await stored_envelope(storage_url, UUID(first["id"]), "UserProfile")
    await asyncio.sleep(0.01)

    user.age = 37
    second = user.model_dump()

    after = await stored_envelope(storage_url, UUID(first["id"]), "UserProfile")
    assert second == first
    assert before is not None
    assert after is not None
    assert after["data"] == {"name": "Ada", "email": "ada@example.com", "age": 37}
    assert after["schema_version"] == 1
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]
    assert model.model_validate(first).age == 37


def test_restored_instance_updates_the_same_record(storage_url: str) -> None:
    model = user_model(storage_url)
    reference = model(name="Ada", email="a@example.com", age=1).model_dump()

    restored = model.model_validate(reference)
    restored.age = 2

    assert restored.model_dump() == reference
    assert model.model_validate(reference).age == 2


async def test_schema_version_is_stored(storage_url: str) -> None:
    class Versioned(ExternalBaseModel):
        value: int
        model_config = ExternalConfigDict(storage=storage_url, schema_version=3)

    reference = Versioned(value=1).model_dump()

    envelope = await stored_envelope(storage_url, UUID(reference["id"]), "Versioned")
    assert envelope is not None
    assert envelope["schema_version"] == 3
    created = datetime.fromisoformat(envelope["created_at"])
    assert created.tzinfo is not None
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60


def test_non_reference_input_validates_as_ordinary_data(storage_url: str) -> None:
    model = user_model(storage_url)
    user = model.model_validate({"name": "Ada", "email": "a@example.com", "age": 3})
    assert user.external_reference is None
    with pytest.raises(ValidationError):
        model.model_validate({"name": "Ada"})


def test_unknown_id_raises_record_not_found(storage_url: str) -> None:
    model = user_model(storage_url)
    missing = uuid4()
    with pytest.raises(RecordNotFoundError) as caught:
        model.model_validate({"class_name": "UserProfile", "id": str(missing)})
    assert caught.value.id == missing
    assert caught.value.class_name == "UserProfile"


def test_two_classes_in_one_store_are_kept_apart(storage_url: str) -> None:
    class Cat(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=storage_url)

    class Dog(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=storage_url)

    cat_ref = Cat(name="Tom").model_dump()
    with pytest.raises(StorageValidationError):
        Dog.model_validate(cat_ref)
    forged = {"class_name": "Dog", "id": cat_ref["id"]}
    with pytest.raises(RecordNotFoundError):
        Dog.model_validate(forged)
    assert Cat.model_validate(cat_ref).name == "Tom"


async def test_async_api_save_load_delete(storage_url: str) -> None:
    model = user_model(storage_url)
    user = model(name="Ada", email="a@example.com", age=36)

    reference = await user.save()

    assert isinstance(reference, ExternalReference)
    assert reference.model_dump() == {"class_name": "UserProfile", "id": str(reference.id)}
    assert await model.load(reference) == user
    assert await model.load(reference.id) == user
    assert await model.load(str(reference.id)) == user
    assert await model.load(reference.model_dump()) == user
    assert await user.save() == reference
    assert await user.delete() is True
    with pytest.raises(RecordNotFoundError):
        await model.load(reference)
    assert await model.delete(reference) is False


async def test_class_level_delete_by_reference(storage_url: str) -> None:
    model = user_model(storage_url)
    reference = await model(name="Ada", email="a@example.com", age=36).save()
    assert await model.delete(reference.id) is True
    with pytest.raises(RecordNotFoundError):
        await model.load(reference)


async def test_sync_calls_work_inside_a_running_event_loop(storage_url: str) -> None:
    model = user_model(storage_url)
    user = model(name="Ada", email="a@example.com", age=36)
    reference = user.model_dump()
    assert model.model_validate(reference) == user
    assert await model.load(reference["id"]) == user


def test_sync_calls_from_many_threads(storage_url: str) -> None:
    model = user_model(storage_url)
    results: list[bool] = []
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                user = model(name=f"user {n}", email="x@example.com", age=i)
                results.append(model.model_validate(user.model_dump()) == user)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [True] * 80


def test_async_api_across_several_event_loops(storage_url: str) -> None:
    model = user_model(storage_url)
    user = model(name="Ada", email="a@example.com", age=36)

    async def save() -> ExternalReference:
        saved: ExternalReference = await user.save()
        return saved

    async def load(reference: ExternalReference) -> object:
        loaded: object = await model.load(reference)
        return loaded

    reference = asyncio.run(save())
    assert asyncio.run(load(reference)) == user
    assert asyncio.run(load(reference)) == user
    assert model.model_validate(reference.model_dump()) == user


async def test_concurrent_tasks_share_one_connection_per_loop(storage_url: str) -> None:
    model = user_model(storage_url)
    users = [model(name=f"u{i}", email="x@example.com", age=i) for i in range(50)]
    references = await asyncio.gather(*(user.save() for user in users))
    loaded = await asyncio.gather(*(model.load(reference) for reference in references))
    assert loaded == users


class PickledUser(ExternalBaseModel):
    name: str
    model_config = ExternalConfigDict(storage="memory://pickle-test")


def test_pickle_keeps_the_record_identity() -> None:
    original = PickledUser(name="Ada")
    reference = original.model_dump()

    unpickled = pickle.loads(pickle.dumps(original))

    assert unpickled.external_reference == original.external_reference
    assert unpickled.model_dump() == reference


def test_copies_are_new_records(storage_url: str) -> None:
    model = user_model(storage_url)
    original = model(name="Ada", email="a@example.com", age=36)
    reference = original.model_dump()

    for duplicate in (original.model_copy(), original.model_copy(deep=True), copy.copy(original)):
        assert duplicate.external_reference is None
        duplicate.age = 99
        assert duplicate.model_dump()["id"] != reference["id"]
    assert model.model_validate(reference).age == 36


def test_equality_compares_data_not_record_bookkeeping(storage_url: str) -> None:
    model = user_model(storage_url)
    saved = model(name="Ada", email="a@example.com", age=36)
    saved.model_dump()
    unsaved = model(name="Ada", email="a@example.com", age=36)
    assert saved == unsaved
    assert saved != model(name="Ada", email="a@example.com", age=37)


def test_strict_and_frozen_models_round_trip(storage_url: str) -> None:
    class Event(ExternalBaseModel):
        at: datetime
        uid: UUID
        payload: bytes
        model_config = ExternalConfigDict(storage=storage_url, strict=True, frozen=True)

    event = Event(at=datetime.now(UTC), uid=uuid4(), payload=b"\x00\x01")
    reference = event.model_dump()
    assert Event.model_validate(reference) == event
    assert Event.model_validate_json(event.model_dump_json()) == event
    assert (
        Event.model_validate_json(
            f'{{"at": "2025-01-01T00:00:00Z", "uid": "{uuid4()}", "payload": "AAE="}}'
        ).payload
        == b"\x00\x01"
    )


def test_subclass_instance_in_base_typed_field_keeps_its_fields(storage_url: str) -> None:
    class Animal(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=storage_url)

    class Bird(Animal):
        wingspan: float

    class Zoo(BaseModel):
        star: Animal

    zoo = Zoo(star=Bird(name="Polly", wingspan=0.5))
    dumped = zoo.model_dump()

    assert dumped["star"]["class_name"] == "Bird"
    restored = Zoo.model_validate(dumped)
    assert isinstance(restored.star, Bird)
    assert restored.star.wingspan == 0.5


def test_pydantic_config_keys_still_work(storage_url: str) -> None:
    from pydantic import Field

    class Strict(ExternalBaseModel):
        full_name: str = Field(alias="fullName")
        model_config = ExternalConfigDict(
            storage=storage_url, extra="forbid", str_strip_whitespace=True, populate_by_name=False
        )

    item = Strict.model_validate({"fullName": "  Ada  "})
    assert item.full_name == "Ada"
    with pytest.raises(ValidationError):
        Strict.model_validate({"fullName": "Ada", "other": 1})
    assert Strict.model_validate(item.model_dump(by_alias=True)) == item


def test_expired_records_are_not_returned(storage_url: str) -> None:
    from datetime import timedelta

    class Session(ExternalBaseModel):
        token: str
        model_config = ExternalConfigDict(storage=storage_url, ttl=timedelta(seconds=1))

    reference = Session(token="t").model_dump()
    assert Session.model_validate(reference).token == "t"
    time.sleep(1.3)
    with pytest.raises(RecordNotFoundError):
        Session.model_validate(reference)


def test_a_record_state_pickled_by_an_older_version_still_unpickles() -> None:
    from datetime import UTC, datetime
    from uuid import uuid4

    from pydantic_toast._record_state import RecordState

    record_id, created = uuid4(), datetime.now(UTC)
    state = RecordState.__new__(RecordState)
    state.__setstate__([record_id, created, None])  # 0.1.0 pickled three fields
    assert (state.id, state.created_at, state.revision, state.stored_digest) == (
        record_id,
        created,
        None,
        None,
    )
    assert pickle.loads(pickle.dumps(state)).id == record_id


class PrivateUser(ExternalBaseModel):
    name: str
    _note: str = PrivateAttr(default="none")
    model_config = ExternalConfigDict(storage="memory://pickle-test")


def test_a_loaded_model_holds_no_private_attribute_dict(storage_url: str) -> None:
    # The record state lives in a slot: a private attribute dict per model cost 184 bytes.
    model = user_model(storage_url)
    reference = model(name="Ada", email="a@example.com", age=36).model_dump()
    loaded = model.model_validate(reference)
    assert loaded.__pydantic_private__ is None
    assert loaded.external_reference == ExternalReference.model_validate(reference)


def test_a_pickled_loaded_model_is_the_same_record_with_the_same_data() -> None:
    reference = PickledUser(name="Ada").model_dump()
    loaded = PickledUser.model_validate(reference)

    unpickled = pickle.loads(pickle.dumps(loaded))

    assert unpickled == loaded
    assert unpickled.__pydantic_private__ is None
    assert state_of(unpickled).loaded_json == state_of(loaded).loaded_json
    assert unpickled.model_dump() == reference


def test_pickles_carry_the_state_where_older_versions_kept_it() -> None:
    original = PickledUser(name="Ada")
    reference = original.model_dump()
    pickled = original.__getstate__()
    assert pickled["__pydantic_private__"] == {"_toast_record": state_of(original)}

    older = PickledUser.__new__(PickledUser)
    older.__setstate__({**pickled, "__pydantic_private__": {"_toast_record": state_of(original)}})
    assert older.external_reference == ExternalReference.model_validate(reference)
    assert older.__pydantic_private__ is None
    assert older == original


def test_private_attributes_survive_pickle_copy_and_equality() -> None:
    original = PrivateUser(name="Ada")
    original._note = "kept"
    reference = original.model_dump()

    unpickled = pickle.loads(pickle.dumps(original))
    assert unpickled._note == "kept"
    assert unpickled.external_reference == original.external_reference
    assert unpickled == original
    copied = copy.deepcopy(original)
    assert copied._note == "kept"
    assert copied.external_reference is None
    assert copied == original
    other = PrivateUser(name="Ada")
    assert other != original  # pydantic compares private attributes: "none" != "kept"
    loaded = PrivateUser.model_validate(reference)
    assert loaded._note == "none"
    assert loaded.external_reference == original.external_reference


def test_constructed_and_mixed_in_models_are_new_records(storage_url: str) -> None:
    class Base(BaseModel):
        tag: str = "t"

    class Mixed(ExternalBaseModel, Base):
        name: str
        model_config = ExternalConfigDict(storage=storage_url)

    constructed = Mixed.model_construct(name="Ada", tag="x")
    assert constructed.external_reference is None
    reference = constructed.model_dump()
    assert Mixed.model_validate(reference) == constructed
    assert weakref.ref(constructed)() is constructed
