"""Opening an obstore store for a backend's settings, and the credentials it signs with.

obstore is imported here, lazily (only when a backend connects). Credentials come from the
standard AWS sources: obstore itself reads the environment variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), web identity (AWS_ROLE_ARN with
AWS_WEB_IDENTITY_TOKEN_FILE), container credentials (ECS) and the instance metadata service.
obstore does not read the shared config and credentials files (`~/.aws/config`, profiles): when
no key is in the environment and a profile is configured, boto3's credential chain is used for
them, which needs the `boto3` package.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...exceptions import MissingDependencyError
from ._config import StoreSettings

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = ["open_store"]


def open_store(settings: StoreSettings) -> ObjectStore:
    from obstore.store import AzureStore, GCSStore, LocalStore, S3Store

    if settings.kind == "file":
        return LocalStore(Path(settings.location).resolve(), mkdir=True)
    timeout = timedelta(seconds=settings.timeout)
    common: dict[str, Any] = {
        "prefix": settings.prefix or None,
        "client_options": {
            # Plain http only where the user wrote an http:// endpoint (a local test server).
            "allow_http": (settings.endpoint_url or "").startswith("http://"),
            "timeout": timeout,
            "connect_timeout": timedelta(seconds=settings.connect_timeout),
        },
        "retry_config": {
            "max_retries": settings.max_retries,
            # Retries stop once the first attempt is this old: a dead endpoint fails in bounded time.
            "retry_timeout": timeout,
            "backoff": {
                "init_backoff": timedelta(milliseconds=50),
                "max_backoff": timedelta(seconds=1),
                "base": 2,
            },
        },
    }
    config: dict[str, Any] = {}
    if settings.kind == "az":
        if settings.account is not None:
            config["account_name"] = settings.account
        if settings.endpoint_url is not None:
            config["endpoint"] = settings.endpoint_url
        return AzureStore(settings.location, config=config or None, **common)  # type: ignore[arg-type]  # a TypedDict built key by key
    if settings.kind == "gs":
        if settings.endpoint_url is not None:
            config["base_url"] = settings.endpoint_url
        return GCSStore(settings.location, config=config or None, **common)  # type: ignore[arg-type]  # a TypedDict built key by key
    if settings.region is not None:
        config["region"] = settings.region
    if settings.endpoint_url is not None:
        config["endpoint"] = settings.endpoint_url
    return S3Store(
        settings.location,
        config=config or None,  # type: ignore[arg-type]  # a TypedDict built key by key
        credential_provider=_profile_credentials(),
        **common,
    )


def _profile_credentials() -> Any:
    """boto3's credential chain when credentials may live in the shared files, else None (obstore's).

    Without boto3, only a profile asked for by name (AWS_PROFILE) or a credentials file is an
    error; a config file alone (often just a region, beside an instance role) leaves obstore's
    chain in charge.
    """
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    credentials = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")).expanduser()
    config = Path(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")).expanduser()
    needed = bool(os.environ.get("AWS_PROFILE")) or credentials.is_file()
    if not needed and not config.is_file():
        return None
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        if not needed:
            return None
        raise MissingDependencyError(
            "AWS credentials come from a profile (AWS_PROFILE or ~/.aws/credentials), which the "
            "s3:// backend reads through boto3; install it with: pip install boto3 (or set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
            package="boto3",
            extra="s3",
        ) from None
    return Boto3CredentialProvider()
