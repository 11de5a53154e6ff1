"""Class definition validates the configuration and names the class, the URL and the fix."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError
from pydantic_toast.backends.postgresql import PostgreSQLBackend
from pydantic_toast.backends.postgresql import _settings as postgresql_settings
from pydantic_toast.backends.redis import RedisBackend
from pydantic_toast.backends.redis import _settings as redis_settings
from pydantic_toast.url import MaskedURL, StorageURL, mask_secrets


def define(**config: Any) -> Any:
    class UserProfile(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(**config)  # type: ignore[typeddict-item]

    return UserProfile


def test_missing_storage_names_the_class_and_known_schemes() -> None:
    # Without storage the class is an abstract base (see test_semantics_write): refused at use.
    user_profile = define()
    with pytest.raises(StorageValidationError, match=r"UserProfile has no storage configured") as caught:
        user_profile(name="a").model_dump()
    assert "sqlite" in str(caught.value)
    assert "memory" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("toast.db", "has no scheme"),
        ("sqlite://host/toast.db", "names a file, not a host"),
        ("sqlite:///", "names no file"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:///x.db?table=bad-name", "not a plain identifier"),
        ("sqlite:///x.db?colour=blue", "unknown sqlite option"),
        ("sqlite:///x.db?busy_timeout=-1", "must be a number"),
        ("memory://x?a=1", "takes no options"),
        ("http://user:pw@host:notaport/x", "malformed"),
        (42, "must be a string"),
    ],
)
def test_malformed_urls_are_refused_at_class_definition(url: object, fragment: str) -> None:
    with pytest.raises(StorageValidationError, match="UserProfile") as caught:
        define(storage=url)
    assert fragment in str(caught.value)


def test_unknown_scheme_lists_registered_schemes_and_masks_password() -> None:
    with pytest.raises(StorageValidationError) as caught:
        define(storage="mongodb://admin:s3cret-sentinel@db.example:27017/app")
    message = str(caught.value)
    assert "UserProfile" in message
    assert "'mongodb'" in message
    assert "sqlite" in message
    assert "register_backend" in message
    assert "s3cret-sentinel" not in message


def test_password_never_shown_in_parse_errors() -> None:
    with pytest.raises(StorageValidationError) as caught:
        StorageURL.parse("redis://user:s3cret-sentinel@host:99999999/0")
    assert "s3cret-sentinel" not in str(caught.value)
    assert "s3cret-sentinel" not in repr(caught.value.actual)


def test_storage_url_repr_and_str_are_masked() -> None:
    url = StorageURL.parse("postgresql://ada:s3cret%2Fsentinel@db:5432/app?sslmode=require")
    assert url.password == "s3cret/sentinel"
    assert "sentinel" not in repr(url)
    assert "sentinel" not in str(url)
    assert url.masked == "postgresql://ada:***@db:5432/app?sslmode=require"
    assert (
        mask_secrets("failed for redis://:hunter2@h:6379/0", "hunter2") == "failed for redis://:***@h:6379/0"
    )


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"schema_version": 0}, "schema_version must be an integer >= 1"),
        ({"schema_version": "2"}, "schema_version must be an integer >= 1"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"ttl": 5}, "ttl must be a positive datetime.timedelta"),
        ({"ttl": timedelta(0)}, "ttl must be a positive datetime.timedelta"),
        ({"storage_name": ""}, "storage_name"),
        ({"storage_name": "a:b"}, "without ':'"),
        ({"upgrade_write_back": "yes"}, "upgrade_write_back must be True or False"),
    ],
)
def test_bad_library_options_are_refused(config: dict[str, Any], fragment: str) -> None:
    with pytest.raises(StorageValidationError, match="UserProfile") as caught:
        define(storage="memory://", **config)
    assert fragment in str(caught.value)


def test_storage_name_overrides_the_class_name_in_references() -> None:
    model = define(storage="memory://names", storage_name="users.v1")
    reference = model(name="Ada").model_dump()
    assert reference["class_name"] == "users.v1"
    assert model.model_validate(reference).name == "Ada"


def test_subclasses_inherit_storage_and_get_their_own_name() -> None:
    base = define(storage="memory://inherit")

    class Admin(base):  # type: ignore[valid-type,misc]
        level: int

    assert Admin(name="Ada", level=3).model_dump()["class_name"] == "Admin"


def test_an_explicit_storage_name_is_not_inherited() -> None:
    base = define(storage="memory://inherit-name", storage_name="people")

    class Admin(base):  # type: ignore[valid-type,misc]
        level: int

    assert Admin(name="Ada", level=1).model_dump()["class_name"] == "Admin"


def test_two_classes_cannot_share_a_storage_name_in_one_store() -> None:
    class First(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage="memory://clash", storage_name="thing")

    with pytest.raises(StorageValidationError, match=r"already stores records named 'thing'") as caught:

        class Second(ExternalBaseModel):
            y: int
            model_config = ExternalConfigDict(storage="memory://clash", storage_name="thing")

    assert "First" in str(caught.value)
    assert First(x=1).model_dump()["class_name"] == "thing"


def test_redefining_the_same_class_is_allowed() -> None:
    for _ in range(2):

        class Reloaded(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage="memory://reload")

        assert Reloaded(x=1).model_dump()["class_name"] == "Reloaded"


BLOCKED_DRIVER = """
import sys
sys.modules[{driver!r}] = None  # as if the driver were not installed
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, ExternalStorageError, MissingDependencyError
try:
    class Model(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage={url!r})
except MissingDependencyError as exc:
    assert isinstance(exc, ImportError) and isinstance(exc, ExternalStorageError), type(exc).__mro__
    assert not isinstance(exc, ValueError), "a missing driver must never become an HTTP 422"
    print(exc)
    print(exc.package, exc.extra)
else:
    raise SystemExit("the class was defined without its driver")
"""


@pytest.mark.parametrize(
    ("url", "driver", "extra"),
    [
        ("postgresql://app@127.0.0.1:1/db", "asyncpg", "postgresql"),
        ("postgres://app@127.0.0.1:1/db", "asyncpg", "postgresql"),
        ("redis://127.0.0.1:1/0", "redis", "redis"),
        ("redis+cluster://127.0.0.1:1", "redis", "redis"),
    ],
)
def test_a_missing_driver_is_an_import_error_at_class_definition(url: str, driver: str, extra: str) -> None:
    code = BLOCKED_DRIVER.format(driver=driver, url=url)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    message, attributes = result.stdout.splitlines()
    assert f"needs the {driver!r} package" in message
    assert f"pip install 'pydantic-toast[{extra}]'" in message
    assert attributes == f"{driver} {extra}"


def test_a_driver_lost_after_class_definition_is_not_a_validation_error() -> None:
    # Nested in a plain model, a ValueError would become a pydantic ValidationError (a 422 in
    # FastAPI); a missing driver is the server's fault and must come out as itself.
    code = """
import sys
import pydantic
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, MissingDependencyError

class Model(ExternalBaseModel):
    x: int
    model_config = ExternalConfigDict(storage="postgresql://app@127.0.0.1:1/db")

class Body(pydantic.BaseModel):
    item: Model

sys.modules["asyncpg"] = None
try:
    Body.model_validate({"item": {"class_name": "Model", "id": "00000000-0000-4000-8000-000000000000"}})
except MissingDependencyError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install 'pydantic-toast[postgresql]'" in result.stdout


def test_a_driver_lost_after_class_definition_is_a_server_error_in_fastapi_not_a_422() -> None:
    code = """
import sys
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, MissingDependencyError

class Item(ExternalBaseModel):
    x: int
    model_config = ExternalConfigDict(storage="redis://127.0.0.1:1/0")

app = FastAPI()

@app.post("/items")
def create(item: Item) -> dict[str, int]:
    return {"x": item.x}

sys.modules["redis"] = None
reference = {"class_name": "Item", "id": "00000000-0000-4000-8000-000000000000"}
try:
    # A validation error would come back as a 422 response; any other error is raised here.
    print(TestClient(app).post("/items", json=reference).status_code)
except MissingDependencyError as exc:
    print(exc.extra)
print(TestClient(app, raise_server_exceptions=False).post("/items", json=reference).status_code)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["redis", "500"]


def test_a_backend_replacing_a_builtin_scheme_needs_no_builtin_driver() -> None:
    code = """
import sys
sys.modules["redis"] = None
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, register_backend
from pydantic_toast.backends.memory import MemoryBackend

register_backend("redis", MemoryBackend, replace=True)

class Model(ExternalBaseModel):
    x: int
    model_config = ExternalConfigDict(storage="redis://whatever")

print(Model.model_validate(Model(x=1).model_dump()).x)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


SENTINEL = "q-sentinel-secret"


def test_query_string_passwords_are_masked_in_every_repr_str_and_error() -> None:
    postgresql = f"postgresql://app:{SENTINEL}@db.example/app?password={SENTINEL}&sslpassword={SENTINEL}"
    redis = f"redis://app:{SENTINEL}@cache.example:6379/0"
    shown: list[str] = []
    for raw in (postgresql, redis):
        url = StorageURL.parse(raw)
        shown += [repr(url), str(url), url.masked, repr(MaskedURL(raw)), str(StorageURL.parse(raw))]
    shown.append(repr(postgresql_settings(StorageURL.parse(postgresql))))
    shown.append(repr(redis_settings(StorageURL.parse(redis), cluster=False)))
    shown += [repr(PostgreSQLBackend(postgresql)), repr(RedisBackend(redis))]

    model = define(storage=postgresql, storage_name=f"Masked{uuid4().hex}")
    shown += [repr(model.model_config), str(model.model_config), repr(model.__toast_settings__)]
    for broken in (postgresql + "&colour=blue", postgresql.replace("/app?", ":notaport/app?")):
        with pytest.raises(StorageValidationError) as caught:
            define(storage=broken)
        shown += [
            str(caught.value),
            repr(caught.value),
            repr(caught.value.actual),
            repr(caught.value.expected),
        ]

    assert "postgresql://app:***@db.example/app?password=***&sslpassword=***" in shown
    leaked = [text for text in shown if SENTINEL in text]
    assert leaked == []
