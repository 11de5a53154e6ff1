"""The exceptions pydantic-toast raises on purpose.

    ExternalStorageError                 base of everything below
    ├── StorageConnectionError           the store is unreachable, timed out or refused the credentials
    ├── RecordNotFoundError              no record for (class_name, id)               also a ValueError
    ├── StorageValidationError           bad configuration or bad reference            also a ValueError
    ├── UnsupportedOperationError        the backend lacks an optional capability
    └── UnsupportedEventLoopError        async API called with no asyncio loop running  also a RuntimeError

`RecordNotFoundError` and `StorageValidationError` are also `ValueError`s so that pydantic reports
them as validation errors (HTTP 422 in FastAPI) when a bad reference arrives nested inside a larger
payload. Called on an external model itself, `model_validate` / `model_validate_json` /
`Model.load` raise them unwrapped.

No message, repr or attribute of these exceptions carries a password: URLs are always masked.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

__all__ = [
    "ExternalStorageError",
    "RecordNotFoundError",
    "StorageConnectionError",
    "StorageValidationError",
    "UnsupportedEventLoopError",
    "UnsupportedOperationError",
]


class ExternalStorageError(Exception):
    """Base class of every error pydantic-toast raises on purpose."""


class StorageConnectionError(ExternalStorageError):
    """The store could not be reached, timed out, or refused the credentials.

    `url` is the storage URL with its password masked.
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class RecordNotFoundError(ExternalStorageError, ValueError):
    """No record exists for the given class name and id (or ids, for batch loads)."""

    def __init__(self, class_name: str, ids: UUID | Iterable[UUID]) -> None:
        self.ids: tuple[UUID, ...] = (ids,) if isinstance(ids, UUID) else tuple(ids)
        self.id: UUID = self.ids[0]
        self.class_name = class_name
        if len(self.ids) == 1:
            message = f"no stored {class_name} record with id {self.id}"
        else:
            listed = ", ".join(str(i) for i in self.ids)
            message = f"no stored {class_name} records with ids {listed}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[RecordNotFoundError], tuple[str, tuple[UUID, ...]]]:
        return type(self), (self.class_name, self.ids)


class StorageValidationError(ExternalStorageError, ValueError):
    """Bad configuration (URL, scheme, options) or a bad reference (class name, id, keys).

    `expected` and `actual` describe the mismatch when there is one.
    """

    def __init__(self, message: str, *, expected: object = None, actual: object = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_validation_error, (str(self), self.expected, self.actual)


def _rebuild_validation_error(message: str, expected: object, actual: object) -> StorageValidationError:
    return StorageValidationError(message, expected=expected, actual=actual)


class UnsupportedOperationError(ExternalStorageError):
    """The backend does not implement an optional operation (delete, TTL, listing...)."""


class UnsupportedEventLoopError(ExternalStorageError, RuntimeError):
    """The async API was called where no asyncio event loop runs (under trio, for instance).

    Also a `RuntimeError`, which is what asyncio itself raises there. The sync API works anywhere.
    """
