"""A stored record that no longer validates never shows its data to anyone.

Records outlive code: a field becomes required without an upgrade step, a row is relabelled to
another class, a value has the wrong type, or `data` is not even an object. Loading such a record
raises `StoredDataError` naming the class, the id, the field locations and pydantic's error types,
and nothing else: no stored value in the message, the repr, `errors`, the exception chain, the
logs, or an HTTP response. It is not a `ValueError`, so nested in a request body it is a server
error (500), not a 422 that would send the stored data back to the client.

No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.
"""

import json
import logging
import pickle
import traceback
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import BaseModel, Field

from fixtures.stored import store_raw
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalStorageError,
    StorageValidationError,
    StoredDataError,
    upgrade,
)

pytestmark = pytest.mark.reliability

SENTINEL = "pbkdf2_sha256$600000$" + "Zx9Q" * 8  # a password hash that must never be shown


def account_model(storage: str) -> Any:
    class Account(ExternalBaseModel):
        username: str
        password_hash: str
        email: str  # added later, without an upgrade step
        logins: int = 0
        quotas: dict[str, int] = Field(default_factory=dict)
        model_config = ExternalConfigDict(storage=storage)

    return Account


# (name, class name written in the record, data): each breaks the model in its own way.
BROKEN: list[tuple[str, str, Any]] = [
    ("required field added", "Account", {"username": "ada", "password_hash": SENTINEL}),
    ("row relabelled", "Account", {"title": SENTINEL, "body": SENTINEL}),
    (
        "wrong types",
        "Account",
        {"username": "ada", "password_hash": SENTINEL, "email": "a@b", "logins": SENTINEL},
    ),
    (
        "secret as a dict key",
        "Account",
        {"username": "a", "password_hash": "h", "email": "e", "quotas": {SENTINEL: "x"}},
    ),
    ("array as data", "Account", [SENTINEL, SENTINEL]),
    ("string as data", "Account", SENTINEL),
]


def assert_nothing_stored_shows(exc: BaseException, *, chained: bool = True) -> None:
    """`chained=False`: nothing is chained at all (the error was raised from stored data itself)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    for error in seen:
        assert SENTINEL not in str(error)
        assert SENTINEL not in repr(error)
        assert SENTINEL not in repr(getattr(error, "errors", None))
    assert SENTINEL not in "".join(traceback.format_exception(exc))
    if not chained:
        assert seen == [exc]


def expect_stored_data_error(call: Callable[[], Any], record_id: UUID) -> StoredDataError:
    with pytest.raises(StoredDataError) as caught:
        call()
    error = caught.value
    assert (error.class_name, error.id) == ("Account", record_id)
    assert str(record_id) in str(error)
    assert "Account" in str(error)
    assert error.errors
    assert all(set(line) == {"loc", "type"} for line in error.errors)
    assert not isinstance(error, ValueError | AssertionError)
    assert_nothing_stored_shows(error, chained=False)
    return error


@pytest.mark.parametrize(("case", "class_name", "data"), BROKEN, ids=[case for case, _, _ in BROKEN])
async def test_a_broken_record_raises_stored_data_error_without_its_data(
    storage_url: str, case: str, class_name: str, data: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    account_type = account_model(storage_url)
    record_id = await store_raw(storage_url, class_name, data)
    reference = {"class_name": "Account", "id": str(record_id)}

    class Holder(BaseModel):
        account: account_type  # type: ignore[valid-type]

    class Team(ExternalBaseModel):
        members: list[account_type]  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=storage_url)

    team_id = await store_raw(storage_url, "Team", {"members": [reference]})

    error = expect_stored_data_error(lambda: account_type.model_validate(reference), record_id)
    expect_stored_data_error(lambda: account_type.model_validate_json(json.dumps(reference)), record_id)
    expect_stored_data_error(lambda: Holder.model_validate({"account": reference}), record_id)
    expect_stored_data_error(
        lambda: Holder.model_validate_json(json.dumps({"account": reference})), record_id
    )
    expect_stored_data_error(
        lambda: Team.model_validate({"class_name": "Team", "id": str(team_id)}), record_id
    )
    for load in (account_type.load(record_id), Team.load(team_id), account_type.load_many([record_id])):
        with pytest.raises(StoredDataError) as caught:
            await load
        assert caught.value.id == record_id
        assert_nothing_stored_shows(caught.value, chained=False)
    assert SENTINEL not in caplog.text

    if case == "required field added":
        assert error.errors == [{"loc": ("email",), "type": "missing"}]
        assert "email: missing" in str(error)
    if case == "wrong types":
        assert error.errors == [{"loc": ("logins",), "type": "int_parsing"}]
    if case == "secret as a dict key":
        assert error.errors == [{"loc": ("quotas", "<key>"), "type": "int_parsing"}]
    if case in ("array as data", "string as data"):
        # A backend may hand a bare JSON string back in a form that no longer parses as JSON.
        assert [line["type"] in ("model_type", "json_invalid") for line in error.errors] == [True]


def build_app(account_type: Any) -> FastAPI:
    class Envelope(BaseModel):
        account: account_type
        note: str

    app = FastAPI()

    @app.post("/accounts")
    async def direct(body: account_type) -> dict[str, str]:
        return {"user": body.username}

    @app.post("/envelopes")
    async def nested(body: Envelope) -> dict[str, str]:
        return {"user": body.account.username}

    return app


@pytest.mark.parametrize(("case", "class_name", "data"), BROKEN, ids=[case for case, _, _ in BROKEN])
async def test_a_broken_record_in_a_request_body_is_a_500_without_its_data(
    storage_url: str, case: str, class_name: str, data: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    account_type = account_model(storage_url)
    record_id = await store_raw(storage_url, class_name, data)
    reference = {"class_name": "Account", "id": str(record_id)}
    app = build_app(account_type)
    bodies = [("/accounts", reference), ("/envelopes", {"account": reference, "note": "n"})]

    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        for path, body in bodies:
            with pytest.raises(StoredDataError) as caught:
                await client.post(path, json=body)
            assert_nothing_stored_shows(caught.value)
    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://test") as client:
        for path, body in bodies:
            response = await client.post(path, json=body)
            assert response.status_code == 500
            assert SENTINEL not in response.text
    assert SENTINEL not in caplog.text


async def test_a_client_error_is_still_a_422(sqlite_url: str) -> None:
    """Only broken stored data is a server error; a bad or missing reference stays the client's."""
    account_type = account_model(sqlite_url)
    app = build_app(account_type)
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        missing = await client.post("/accounts", json={"class_name": "Account", "id": str(uuid4())})
        forged = await client.post(
            "/envelopes", json={"account": {"class_name": "X", "id": "1"}, "note": "n"}
        )
    assert missing.status_code == forged.status_code == 422


def test_stored_data_error_is_a_library_error_and_pickles(memory_url: str) -> None:
    error = StoredDataError("m", class_name="A", id=uuid4(), errors=[{"loc": ("x",), "type": "missing"}])
    assert isinstance(error, ExternalStorageError)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.class_name, copy.id, copy.errors) == (
        str(error),
        error.class_name,
        error.id,
        error.errors,
    )


async def test_an_upgrade_that_fails_on_stored_data_does_not_quote_it(memory_url: str) -> None:
    class Legacy(ExternalBaseModel):
        secret: str
        model_config = ExternalConfigDict(storage=memory_url, schema_version=2)

        @upgrade(from_version=1)
        def _check(data: dict[str, Any]) -> dict[str, Any]:
            raise ValueError(f"cannot upgrade {data}")

    record_id = await store_raw(memory_url, "Legacy", {"secret": SENTINEL})
    with pytest.raises(StorageValidationError, match=r"failed: ValueError at .*_check") as caught:
        await Legacy.load(record_id)
    assert_nothing_stored_shows(caught.value)
