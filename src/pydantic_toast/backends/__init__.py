"""Storage backends: the `StorageBackend` interface and the built-in implementations."""

from .base import RecordKey, StorageBackend, StoredRecord

__all__ = ["RecordKey", "StorageBackend", "StoredRecord"]
