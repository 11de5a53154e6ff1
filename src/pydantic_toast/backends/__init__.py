"""Storage backends: the `StorageBackend` interface, URL options, and the built-in implementations."""

from ._options import BackendOptions, Flag, Identifier, secret
from .base import RecordKey, RecordStorageBackend, StorageBackend, StoredRecord

__all__ = [
    "BackendOptions",
    "Flag",
    "Identifier",
    "RecordKey",
    "RecordStorageBackend",
    "StorageBackend",
    "StoredRecord",
    "secret",
]
