"""Class definition validates the configuration and names the class, the URL and the fix."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError
from pydantic_toast.url import StorageURL, mask_secrets


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
