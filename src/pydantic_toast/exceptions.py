"""The exceptions pydantic-toast raises on purpose.

    ExternalStorageError                 base of everything below
    ├── StorageConnectionError           the store is unreachable, timed out or refused the credentials
    ├── RecordNotFoundError              no record for (class_name, id)               also a ValueError
    ├── StorageValidationError           bad configuration or bad reference            also a ValueError
    ├── StoredDataError                  a stored record no longer validates as its model
    │   └── RecordIntegrityError         a record failed its hash or authentication check
    ├── ConcurrentUpdateError            another writer changed the record since it was loaded
    ├── UnsupportedOperationError        the backend lacks an optional capability
    ├── MissingDependencyError           the backend's driver is not installed          also an ImportError
    └── UnsupportedEventLoopError        async API called with no asyncio loop running  also a RuntimeError

`RecordNotFoundError` and `StorageValidationError` are also `ValueError`s so that pydantic reports
them as validation errors (HTTP 422 in FastAPI) when a bad reference arrives nested inside a larger
payload. Called on an external model itself, `model_validate` / `model_validate_json` /
`Model.load` raise them unwrapped. `StoredDataError` deliberately is not a `ValueError`: a broken
stored record is the server's problem, not the caller's, so pydantic lets it propagate (HTTP 500
in FastAPI) instead of reporting it, stored input included, as the caller's error. A missing
driver is a broken installation, not bad input, so `MissingDependencyError` is no `ValueError` either.

No message, repr or attribute of these exceptions carries a password: URLs are always masked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Self
from uuid import UUID

__all__ = [
    "ConcurrentUpdateError",
    "ExternalStorageError",
    "MissingDependencyError",
    "RecordIntegrityError",
    "RecordNotFoundError",
    "StorageConnectionError",
    "StorageValidationError",
    "StoredDataError",
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


class StoredDataError(ExternalStorageError):
    """A stored record cannot be read back as its model: its data does not validate (changed code,
    edited row, wrong types), or the stored value is no envelope or is encoded in a way this
    process cannot decode. The stored data is at fault, so it is a server-side error, never a
    `ValueError` (which web frameworks answer with a 422).

    `class_name` and `id` name the record; `errors` lists `{"loc": ..., "type": ...}` per failure,
    with pydantic's error types. Neither the message nor the attributes hold any stored value, and
    the pydantic `ValidationError` that revealed the problem is not chained: its inputs are stored data.
    """

    def __init__(
        self, message: str, *, class_name: str, id: UUID, errors: Iterable[Mapping[str, object]] = ()
    ) -> None:
        super().__init__(message)
        self.class_name = class_name
        self.id = id
        self.errors: list[dict[str, object]] = [dict(error) for error in errors]

    @classmethod
    def whole_record(cls, class_name: str, id: UUID, problem: str, check: str) -> Self:
        """The error about a record as a whole: `problem` completes "stored <class> record <id> …",
        and `check` is the one error type (no field location: the record itself is at fault)."""
        return cls(
            f"stored {class_name} record {id} {problem}",
            class_name=class_name,
            id=id,
            errors=[{"loc": (), "type": check}],
        )

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_stored_data_error, (type(self), str(self), self.class_name, self.id, self.errors)


def _rebuild_stored_data_error(
    cls: type[StoredDataError], message: str, class_name: str, id: UUID, errors: list[dict[str, object]]
) -> StoredDataError:
    return cls(message, class_name=class_name, id=id, errors=errors)


class RecordIntegrityError(StoredDataError):
    """A stored record failed an integrity check: its content hash does not match its id, its
    authentication tag does not verify (wrong key, flipped byte), it is bound to another identity
    (copied to another id or class), or it is stored in plain text where encryption is required.

    The record is refused, never returned. Like every `StoredDataError`, nothing stored appears in
    the message or the attributes; `errors` holds one `{"loc": (), "type": <check>}` entry.
    """


class ConcurrentUpdateError(ExternalStorageError):
    """A save with `optimistic_concurrency` found that another writer changed the record first.

    `class_name` and `id` name the record (the first one, when a batch met several: `conflicts`
    lists them all as `(class_name, id, expected, found)`); `expected` is the revision the instance
    knew (0: none, a first save), `found` the stored one (0: stored without revisions, None: no
    record). Not a `ValueError`: it is nobody's bad input, and FastAPI answers it with a 500 unless
    the application maps it (to 409 Conflict, typically). Never carries a stored value.
    """

    def __init__(
        self,
        message: str,
        *,
        class_name: str,
        id: UUID,
        expected: int,
        found: int | None,
        conflicts: Iterable[tuple[str, UUID, int, int | None]] = (),
    ) -> None:
        super().__init__(message)
        self.class_name = class_name
        self.id = id
        self.expected = expected
        self.found = found
        self.conflicts: list[tuple[str, UUID, int, int | None]] = list(conflicts) or [
            (class_name, id, expected, found)
        ]

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_concurrent_update_error, (
            str(self),
            self.class_name,
            self.id,
            self.expected,
            self.found,
            self.conflicts,
        )


def _rebuild_concurrent_update_error(
    message: str,
    class_name: str,
    id: UUID,
    expected: int,
    found: int | None,
    conflicts: list[tuple[str, UUID, int, int | None]],
) -> ConcurrentUpdateError:
    return ConcurrentUpdateError(
        message, class_name=class_name, id=id, expected=expected, found=found, conflicts=conflicts
    )


class UnsupportedOperationError(ExternalStorageError):
    """The backend does not implement an optional operation (delete, TTL, listing...)."""


class MissingDependencyError(ExternalStorageError, ImportError):
    """A built-in backend's driver is not installed; the message gives the `pip install` line.

    `package` is the driver's import name (`asyncpg`, `redis`), `extra` the pydantic-toast extra
    that installs it. Raised when a model class using the backend is defined.
    """

    def __init__(self, message: str, *, package: str, extra: str) -> None:
        super().__init__(message, name=package)
        self.package = package
        self.extra = extra

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_missing_dependency, (str(self), self.package, self.extra)


def _rebuild_missing_dependency(message: str, package: str, extra: str) -> MissingDependencyError:
    return MissingDependencyError(message, package=package, extra=extra)


class UnsupportedEventLoopError(ExternalStorageError, RuntimeError):
    """The async API was called where no asyncio event loop runs (under trio, for instance).

    Also a `RuntimeError`, which is what asyncio itself raises there. The sync API works anywhere.
    """
