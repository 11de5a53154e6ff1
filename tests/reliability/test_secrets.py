"""A password in a storage URL never shows: not in messages, reprs, config, logs or warnings."""

from __future__ import annotations

import logging
import traceback
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import quote
from uuid import uuid4

import pytest

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, ExternalStorageError

pytestmark = pytest.mark.reliability

SENTINEL = "Sentinel-pw_7f3a9"
WRONG = "Wrong-pw_c41d2"


def everything_said(exc: BaseException | None) -> str:
    """Every text an exception and its chain can show: str, repr, attributes, traceback."""
    if exc is None:
        return ""
    parts = ["".join(traceback.format_exception(exc)), repr(exc), repr(vars(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(getattr(current, "args", ()))]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_no_secret(text: str) -> None:
    for secret in (SENTINEL, quote(SENTINEL, safe=""), WRONG):
        assert secret not in text


def exercise(url: str, wrong_url: str, captured_logs: pytest.LogCaptureFixture) -> None:
    class Vault(ExternalBaseModel):
        secret: str
        model_config = ExternalConfigDict(storage=url, timeout=15)

    class WrongVault(ExternalBaseModel):
        secret: str
        model_config = ExternalConfigDict(storage=wrong_url, timeout=15)

    said: list[str] = [str(Vault.model_config), repr(Vault.model_config), repr(Vault.__toast_settings__)]
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        reference = Vault(secret="x").model_dump()
        assert Vault.model_validate(reference).secret == "x"
        for attempt in (
            lambda: WrongVault(secret="x").model_dump(),
            lambda: WrongVault.model_validate({"class_name": "WrongVault", "id": str(uuid4())}),
        ):
            with pytest.raises(ExternalStorageError) as failure:
                attempt()
            said.append(everything_said(failure.value))
    said += [str(w.message) for w in caught_warnings]
    said += [
        record.getMessage() + repr(record.args) + (record.exc_text or "") for record in captured_logs.records
    ]
    for text in said:
        assert_no_secret(text)


def test_postgresql_password_never_shows(
    postgresql_server_factory: Callable[..., Any], captured_logs: pytest.LogCaptureFixture
) -> None:
    server = postgresql_server_factory(password=SENTINEL)
    wrong = server.url.replace(quote(SENTINEL, safe=""), WRONG)
    exercise(server.url, wrong, captured_logs)


def test_redis_password_never_shows(
    redis_servers: Callable[..., Any], captured_logs: pytest.LogCaptureFixture
) -> None:
    server = redis_servers(password=SENTINEL)
    wrong = server.url.replace(quote(SENTINEL, safe=""), WRONG)
    exercise(server.url, wrong, captured_logs)


@pytest.mark.parametrize(
    "url",
    [
        f"nosuch://u:{SENTINEL}@h/db",
        f"redis://u:{SENTINEL}@h:notaport/0",
        f"postgresql://u:{SENTINEL}@h/db?colour=blue",
        f"redis://u:{SENTINEL}@h/0?prefix=bad prefix",
    ],
)
def test_configuration_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ExternalStorageError) as failure:

        class Broken(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage=url)

    assert_no_secret(everything_said(failure.value))
