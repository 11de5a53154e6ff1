"""Bad references are refused before any I/O; storage failures surface as the library's errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import BaseModel, ValidationError

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalStorageError,
    RecordNotFoundError,
    StorageConnectionError,
    StorageValidationError,
)


def unreachable_model(tmp_path: Path) -> type[ExternalBaseModel]:
    """A model whose store cannot be opened: any I/O would raise StorageConnectionError."""

    class UserProfile(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")

    return UserProfile


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [
        ({"class_name": "Other", "id": str(uuid4())}, "reference is for class 'Other'"),
        ({"class_name": "UserProfile", "id": "not-a-uuid"}, "must be a UUID"),
        ({"class_name": "UserProfile", "id": 12345}, "must be a UUID"),
        ({"class_name": "UserProfile", "id": "x" * 10_000}, "must be a UUID"),
        ({"class_name": 7, "id": str(uuid4())}, "class_name must be a string"),
        ({"class_name": "UserProfile", "id": str(uuid4()), "extra": 1}, "unexpected key(s): 'extra'"),
    ],
)
def test_bad_references_are_refused_before_any_io(
    tmp_path: Path, reference: dict[str, Any], fragment: str
) -> None:
    model = unreachable_model(tmp_path)
    with pytest.raises(StorageValidationError) as caught:
        model.model_validate(reference)
    assert fragment in str(caught.value)
    assert len(str(caught.value)) < 400


def test_class_name_mismatch_names_expected_and_actual(tmp_path: Path) -> None:
    model = unreachable_model(tmp_path)
    with pytest.raises(StorageValidationError) as caught:
        model.model_validate_json(f'{{"class_name": "Admin", "id": "{uuid4()}"}}')
    assert caught.value.expected == "UserProfile"
    assert caught.value.actual == "Admin"


def test_nested_bad_reference_is_a_pydantic_validation_error_wrapping_ours(tmp_path: Path) -> None:
    model = unreachable_model(tmp_path)

    class Holder(BaseModel):
        user: model  # type: ignore[valid-type]

    with pytest.raises(ValidationError) as caught:
        Holder.model_validate({"user": {"class_name": "Other", "id": str(uuid4())}})
    error = caught.value.errors()[0]
    assert error["loc"] == ("user",)
    assert isinstance(error["ctx"]["error"], StorageValidationError)


def test_storage_failures_surface_unwrapped_from_dump_and_validate(tmp_path: Path) -> None:
    model = unreachable_model(tmp_path)
    user = model(name="Ada")
    with pytest.raises(StorageConnectionError, match="cannot open SQLite database"):
        user.model_dump()
    with pytest.raises(StorageConnectionError):
        user.model_dump_json()
    with pytest.raises(StorageConnectionError):
        model.model_validate({"class_name": "UserProfile", "id": str(uuid4())})


async def test_async_api_raises_connection_errors(tmp_path: Path) -> None:
    model = unreachable_model(tmp_path)
    with pytest.raises(StorageConnectionError):
        await model(name="Ada").save()
    with pytest.raises(StorageConnectionError):
        await model.load(uuid4())


async def test_load_accepts_only_ids_or_references(tmp_path: Path) -> None:
    model = unreachable_model(tmp_path)
    with pytest.raises(StorageValidationError):
        await model.load("nope")
    with pytest.raises(StorageValidationError):
        await model.load({"id": str(uuid4())})


def test_record_not_found_is_also_a_value_error_for_nested_payloads(memory_url: str) -> None:
    class Doc(ExternalBaseModel):
        body: str
        model_config = ExternalConfigDict(storage=memory_url)

    class Envelope(BaseModel):
        doc: Doc

    with pytest.raises(ValidationError) as caught:
        Envelope.model_validate({"doc": {"class_name": "Doc", "id": str(uuid4())}})
    assert isinstance(caught.value.errors()[0]["ctx"]["error"], RecordNotFoundError)


def test_unknown_serialization_context_mode_is_refused(memory_url: str) -> None:
    class Doc(ExternalBaseModel):
        body: str
        model_config = ExternalConfigDict(storage=memory_url)

    with pytest.raises(StorageValidationError, match="not understood"):
        Doc(body="x").model_dump(context={"pydantic_toast": "sideways"})


def test_every_library_exception_shares_one_base() -> None:
    for exc_type in (StorageConnectionError, RecordNotFoundError, StorageValidationError):
        assert issubclass(exc_type, ExternalStorageError)


async def test_a_driver_failure_is_translated_without_chaining_the_driver_exception(tmp_path: Path) -> None:
    # The chaining policy of backends/_errors.py: the message says what the driver said, and no
    # driver exception (which may hold connection details) rides along as cause or context.
    from pydantic_toast.backends.sqlite import SQLiteBackend

    path = tmp_path / "not-a-database.db"
    path.write_bytes(b"this is no SQLite file" * 100)
    backend = SQLiteBackend(f"sqlite:///{path}")
    with pytest.raises(StorageConnectionError, match=r"SQLite prepare failed on .*not a database") as caught:
        await backend.connect()
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
