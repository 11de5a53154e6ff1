"""Object-store backends (obstore): `s3://` and `file://`. See backend.py."""

from .backend import FileStoreBackend, ObjectStoreBackend, S3Backend

__all__ = ["FileStoreBackend", "ObjectStoreBackend", "S3Backend"]
