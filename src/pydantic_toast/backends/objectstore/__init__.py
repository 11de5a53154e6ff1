"""Object-store backends (obstore): `s3://` and `file://`. See backend.py."""

from .backend import FileBackend, ObjectStoreBackend, S3Backend

__all__ = ["FileBackend", "ObjectStoreBackend", "S3Backend"]
