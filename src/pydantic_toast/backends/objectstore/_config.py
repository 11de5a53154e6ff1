"""An object-store URL -> the settings of one store, validated without connecting.

`s3://bucket[/prefix][?endpoint_url=...&region=...]`, `az://container[/prefix]?account=...`,
`gs://bucket[/prefix]` and `file:///abs/dir` / `file://relative/dir`.
Credentials never come from the URL: a URL carrying one is refused, and the refusal shows the
URL without its query values or user info, so the secret is not repeated in the error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ...exceptions import StorageValidationError
from ...url import StorageURL
from .._options import BackendOptions

__all__ = ["AzureOptions", "FileOptions", "GCSOptions", "S3Options", "StoreSettings", "store_settings"]

# Requests in flight per backend instance: a parent with a hundred children goes out in one wave.
_CONCURRENCY = Field(128, ge=1, description="requests in flight at once per backend instance")
_REGION = re.compile(r"^[a-z0-9-]{1,40}$")


def _check_endpoint(endpoint: str | None, what: str, example: str) -> str | None:
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(
                f"must be an http:// or https:// URL of {what}, such as {example!r} (plain http "
                "only when you write it)"
            )
    return endpoint


class _NetworkStoreOptions(BackendOptions):
    """The options every object store reached over HTTP shares (S3, Azure, GCS)."""

    timeout: float = Field(10.0, gt=0, description="seconds one request may take")
    connect_timeout: float = Field(3.0, gt=0, description="seconds to open a connection")
    max_retries: int = Field(2, ge=0, description="retries of a failed request (with backoff)")
    concurrency: int = _CONCURRENCY


class S3Options(_NetworkStoreOptions):
    """The query options of an `s3://bucket/prefix` URL."""

    backend = "s3"
    endpoint_url: str | None = Field(
        None, description="an S3-compatible server, e.g. http://127.0.0.1:9000 (default: AWS)"
    )
    region: str | None = Field(None, description="the bucket's region, e.g. eu-west-1")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, endpoint: str | None) -> str | None:
        return _check_endpoint(endpoint, "an S3-compatible server", "http://127.0.0.1:9000")

    @field_validator("region")
    @classmethod
    def _region(cls, region: str | None) -> str | None:
        if region is not None and not _REGION.match(region):
            raise ValueError("must be an AWS region name such as 'eu-west-1'")
        return region


class AzureOptions(_NetworkStoreOptions):
    """The query options of an `az://container/prefix` URL."""

    backend = "az"
    account: str | None = Field(
        None, description="the storage account name (default: the AZURE_STORAGE_ACCOUNT_NAME variable)"
    )
    endpoint_url: str | None = Field(
        None,
        description=(
            "the Blob service URL, for an emulator or a sovereign cloud, e.g. "
            "http://127.0.0.1:10000/devstoreaccount1 (default: https://{account}.blob.core.windows.net)"
        ),
    )

    @field_validator("account")
    @classmethod
    def _account(cls, account: str | None) -> str | None:
        if account is not None and not _ACCOUNT.match(account):
            raise ValueError("must be a storage account name: 3-24 lowercase letters and digits")
        return account

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, endpoint: str | None) -> str | None:
        return _check_endpoint(endpoint, "a Blob service", "http://127.0.0.1:10000/devstoreaccount1")


class GCSOptions(_NetworkStoreOptions):
    """The query options of a `gs://bucket/prefix` URL."""

    backend = "gs"
    endpoint_url: str | None = Field(
        None, description="a GCS-compatible server, e.g. http://127.0.0.1:4443 (default: Google's)"
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, endpoint: str | None) -> str | None:
        return _check_endpoint(endpoint, "a GCS-compatible server", "http://127.0.0.1:4443")


class FileOptions(BackendOptions):
    """The query options of a `file://` URL."""

    backend = "file"
    concurrency: int = _CONCURRENCY


# Query keys that would carry a credential, whatever a user calls it.
_SECRET_WORDS = (
    "secret", "password", "token", "access_key", "account_key", "key_id", "credential", "signature",
    "sas", "sig",
)  # fmt: skip
# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens (the AWS naming rules).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Azure container names: 3-63 lowercase letters, digits and single hyphens; account names: 3-24
# lowercase letters and digits. GCS bucket names: also underscores, and up to 222 with dots.
_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_GCS_BUCKET = re.compile(r"^(?=.{3,222}$)[a-z0-9][a-z0-9._-]*[a-z0-9]$")
# What each scheme's location is called, its rule, and where its credentials come from.
_LOCATIONS = {
    "s3": ("bucket", _BUCKET, "bucket names are 3-63 lowercase letters, digits, dots and hyphens"),
    "az": ("container", _CONTAINER, "container names are 3-63 lowercase letters, digits and single hyphens"),
    "gs": ("bucket", _GCS_BUCKET, "bucket names are 3-63 lowercase letters, digits, '-', '_' and '.'"),
}
_CREDENTIAL_SOURCES = {
    "s3": "the standard AWS ways (the environment variables AWS_ACCESS_KEY_ID / "
    "AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, a profile in ~/.aws/config with AWS_PROFILE, or a "
    "container or instance role)",
    "az": "the standard Azure ways (the environment variables AZURE_STORAGE_ACCOUNT_KEY, "
    "AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_TOKEN, a service principal in AZURE_CLIENT_ID / "
    "AZURE_CLIENT_SECRET / AZURE_TENANT_ID, workload identity, or a managed identity)",
    "gs": "the standard Google ways (GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT "
    "naming a service account key file, or the metadata server's service account on Google Cloud)",
}


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """What an object-store backend needs to open its store; no credential is ever here."""

    kind: str  # "s3", "az", "gs" or "file"
    location: str  # the bucket or container, or the directory
    prefix: str  # key prefix inside the bucket ("" for none); always "" for a directory
    endpoint_url: str | None
    region: str | None
    timeout: float
    connect_timeout: float
    max_retries: int
    concurrency: int
    account: str | None = None  # Azure's storage account, when the URL names it


def _shown(url: StorageURL) -> str:
    """The URL without user info and query values, for errors about credentials in it."""
    parts = urlsplit(url.raw)
    host = parts.hostname or ""
    names = sorted({name for name, _ in url.query})
    return f"{url.scheme}://{host}{parts.path}" + (f"?{'&'.join(f'{n}=…' for n in names)}" if names else "")


def _refuse_credentials(url: StorageURL) -> None:
    carried = [name for name, _ in url.query if any(word in name.lower() for word in _SECRET_WORDS)]
    endpoint = url.options.get("endpoint_url", "")
    if url.username is not None or url.password is not None or "@" in endpoint or carried:
        where = f"option(s) {sorted(set(carried))}" if carried else "user info ('user:secret@')"
        sources = _CREDENTIAL_SOURCES.get(url.scheme, _CREDENTIAL_SOURCES["s3"])
        raise StorageValidationError(
            f"{_shown(url)!r} carries credentials in its {where}; an object-store URL never holds "
            f"credentials: remove them and provide them {sources}",
            expected="a URL without credentials",
            actual=_shown(url),
        )


def store_settings(url: StorageURL) -> StoreSettings:
    """The one place object-store URL options are read and checked."""
    _refuse_credentials(url)
    if url.scheme == "file":
        return _file_settings(url)
    # A scheme registered by a user for these backends (`s3+x://`) reads as S3, as it always did.
    kind = url.scheme if url.scheme in _LOCATIONS else "s3"
    models: dict[str, type[S3Options | AzureOptions | GCSOptions]] = {
        "s3": S3Options, "az": AzureOptions, "gs": GCSOptions,
    }  # fmt: skip
    options = models[kind].from_url(url)
    noun, rule, rules = _LOCATIONS[kind]
    bucket = urlsplit(url.raw).netloc  # as written: hostname would lowercase it
    if not rule.match(bucket):
        raise StorageValidationError(
            f"{url.masked!r} names no valid {noun}: write '{kind}://{noun}-name/optional/prefix' "
            f"({rules}; put a custom server in '?endpoint_url=http://host:port')",
            expected=f"{kind}://{noun}/prefix",
            actual=url.masked,
        )
    prefix = url.path.strip("/")
    if any(part in {"", ".", ".."} for part in prefix.split("/")) and prefix:
        raise StorageValidationError(
            f"the key prefix {prefix!r} in {url.masked!r} has an empty, '.' or '..' segment; "
            "write it as 'a/b/c'",
            expected="prefix/segments",
            actual=prefix,
        )
    return StoreSettings(
        kind=kind,
        location=bucket,
        prefix=prefix,
        endpoint_url=options.endpoint_url,
        region=options.region if isinstance(options, S3Options) else None,
        timeout=options.timeout,
        connect_timeout=options.connect_timeout,
        max_retries=options.max_retries,
        concurrency=options.concurrency,
        account=options.account if isinstance(options, AzureOptions) else None,
    )


def _file_settings(url: StorageURL) -> StoreSettings:
    options = FileOptions.from_url(url)
    # file:///abs/dir has an empty host; file://relative/dir puts its first segment there (as
    # written: hostname would lowercase it).
    directory = urlsplit(url.raw).netloc + url.path
    if not directory.strip("/"):
        raise StorageValidationError(
            f"{url.masked!r} names no directory; write 'file:///absolute/dir' or 'file://relative/dir'",
            expected="file:///abs/dir or file://relative/dir",
            actual=url.masked,
        )
    return StoreSettings(
        kind="file",
        location=str(Path(directory)),
        prefix="",
        endpoint_url=None,
        region=None,
        timeout=S3Options.model_fields["timeout"].default,
        connect_timeout=S3Options.model_fields["connect_timeout"].default,
        max_retries=0,
        concurrency=options.concurrency,
    )
