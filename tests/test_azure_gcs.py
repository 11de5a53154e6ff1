"""az:// (on Azurite) and gs:// (URL checks only: no GCS server here): URL validation, the
refusal of credentials in a URL, the object layout, and the errors of a missing container or key."""

from __future__ import annotations

import os
import re
import traceback
from typing import Any
from uuid import uuid4

import pytest

from fixtures.azure import ACCOUNT, Azurite
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConnectionError,
    StorageValidationError,
)
from pydantic_toast.backends.base import Capability
from pydantic_toast.backends.objectstore import AzureBackend, GCSBackend
from pydantic_toast.backends.objectstore._config import store_settings
from pydantic_toast.url import StorageURL

SECRET = "Sentinel-secret_4c2a"


def model(storage: str) -> Any:
    class Document(ExternalBaseModel):
        title: str
        model_config = ExternalConfigDict(storage=storage, storage_name=f"Doc{uuid4().hex[:8]}")

    return Document


def everything_said(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc)), repr(exc), repr(vars(exc))]
    current: BaseException | None = exc
    while current is not None:
        parts += [str(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("az://container/p?endpoint=http://x", "unknown az option(s) ['endpoint']"),
        ("az://ab/p", "names no valid container"),
        ("az://my.container/p", "names no valid container"),
        ("az://my--container/p", "names no valid container"),
        ("az://Container/p", "names no valid container"),
        ("az://container/a//b", "empty, '.' or '..' segment"),
        ("az://container?account=Bad-Name", "storage account name"),
        ("az://container?endpoint_url=ftp://host", "must be an http:// or https:// URL"),
        ("gs://bucket-name/p?region=x", "unknown gs option(s) ['region']"),
        ("gs://ab/p", "names no valid bucket"),
        ("gs://Bucket/p", "names no valid bucket"),
        ("gs://bucket-name/a/../b", "empty, '.' or '..' segment"),
        ("gs://bucket-name?endpoint_url=ftp://host", "must be an http:// or https:// URL"),
    ],
)
def test_a_bad_url_is_refused_when_the_model_class_is_defined(url: str, fragment: str) -> None:
    with pytest.raises(StorageValidationError, match=re.escape(fragment)):
        model(url)


@pytest.mark.parametrize(
    ("url", "names"),
    [
        (f"az://container/p?sas_token={SECRET}", "AZURE_STORAGE_ACCOUNT_KEY"),
        (f"az://container/p?account_key={SECRET}", "AZURE_STORAGE_ACCOUNT_KEY"),
        (f"az://acct:{SECRET}@container/p", "managed identity"),
        (f"az://container/p?sig={SECRET}", "AZURE_STORAGE_SAS_TOKEN"),
        (f"gs://bucket-name/p?service_account_key={SECRET}", "GOOGLE_APPLICATION_CREDENTIALS"),
        (f"gs://bucket-name/p?token={SECRET}", "GOOGLE_SERVICE_ACCOUNT"),
    ],
)
def test_a_credential_in_the_url_is_refused_without_repeating_it(url: str, names: str) -> None:
    with pytest.raises(StorageValidationError) as caught:
        model(url)
    assert names in str(caught.value)
    assert "never holds credentials" in str(caught.value)
    assert SECRET not in everything_said(caught.value)


def test_settings_keep_the_container_prefix_account_and_endpoint() -> None:
    settings = store_settings(
        StorageURL.parse("az://my-container/a/b?account=acct1&endpoint_url=https://x.example/acct1&timeout=4")
    )
    assert (settings.kind, settings.location, settings.prefix) == ("az", "my-container", "a/b")
    assert (settings.account, settings.endpoint_url, settings.timeout) == (
        "acct1",
        "https://x.example/acct1",
        4,
    )
    gcs = store_settings(StorageURL.parse("gs://my_bucket.example/p?concurrency=8"))
    assert (gcs.kind, gcs.location, gcs.prefix, gcs.concurrency) == ("gs", "my_bucket.example", "p", 8)


def test_both_declare_revisions_and_expiry_before_connecting() -> None:
    for backend in (AzureBackend, GCSBackend):
        assert {Capability.REVISIONS, Capability.TTL, Capability.SCAN} <= backend.capabilities()


@pytest.mark.azure
async def test_a_record_is_one_json_blob_under_prefix_name_uuid(azure_url: str) -> None:
    from obstore import list as list_objects

    document_class = model(azure_url)
    doc = document_class(title="hello")
    reference = await doc.save()
    backend = AzureBackend(azure_url)  # its store is rooted at the URL's prefix
    await backend.connect()
    try:
        assert backend._store is not None
        paths = [meta["path"] for batch in list_objects(backend._store) for meta in batch]
    finally:
        await backend.disconnect()
    assert paths == [f"{document_class.model_config['storage_name']}/{reference.id}.json"]
    assert await document_class.load(reference) == doc


@pytest.mark.azure
async def test_a_missing_container_is_named_with_the_fix(azurite: Azurite) -> None:
    document_class = model(azurite.url(container=f"missing-{uuid4().hex[:8]}"))
    with pytest.raises(StorageConnectionError, match="does not exist; create it"):
        await document_class(title="x").save()


@pytest.mark.azure
async def test_a_wrong_key_is_refused_without_showing_it(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", wrong)
    document_class = model(azurite.url(prefix="wrong"))
    with pytest.raises(StorageConnectionError) as caught:
        await document_class(title="x").save()
    said = everything_said(caught.value)
    assert "AZURE_STORAGE_ACCOUNT_KEY" in said
    assert wrong not in said
    assert os.environ["AZURE_STORAGE_ACCOUNT_KEY"] == wrong  # the fixture's key is back after the test
    assert ACCOUNT in azurite.endpoint
