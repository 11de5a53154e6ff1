"""Custom backends' failures, turned into the library's exceptions.

Built-in backends raise the library's exceptions themselves. A custom backend may raise anything:
timeouts and OS-level connection failures become `StorageConnectionError`, anything else
`ExternalStorageError` with the original as `__cause__`, so callers catch one hierarchy and
pydantic does not bury the failure in a serialization error. Messages mask the URL's password.
"""

from __future__ import annotations

from typing import NoReturn

from .exceptions import ExternalStorageError, StorageConnectionError
from .registry import backend_class
from .url import StorageURL, mask_secrets

__all__ = ["raise_translated", "timed_out"]


def raise_translated(url: StorageURL, seconds: float, exc: Exception) -> NoReturn:
    """Raise `exc`, a backend's failure that is not a library exception, as one.

    Called from the `except` block that caught `exc`, so the new exception's context is `exc`.
    """
    if isinstance(exc, TimeoutError):
        raise timed_out(url, seconds) from exc
    if isinstance(exc, OSError):
        raise StorageConnectionError(
            f"cannot reach storage {url.masked!r}: {mask_secrets(str(exc), url.password)}", url=url.masked
        ) from None
    raise ExternalStorageError(
        f"the {backend_class(url.scheme).__name__} backend for {url.masked!r} failed: "
        f"{mask_secrets(repr(exc), url.password)}"
    ) from exc


def timed_out(url: StorageURL, seconds: float) -> StorageConnectionError:
    return StorageConnectionError(
        f"storage {url.masked!r} did not answer within {seconds:g} s; check that the server is "
        "up and reachable, or raise 'timeout' in the model's ExternalConfigDict",
        url=url.masked,
    )
