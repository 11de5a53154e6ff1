"""Storage backends: the `StorageBackend` interface and the built-in implementations."""

from .base import RecordKey, RecordStorageBackend, StorageBackend, StoredRecord

__all__ = ["RecordKey", "RecordStorageBackend", "StorageBackend", "StoredRecord"]
