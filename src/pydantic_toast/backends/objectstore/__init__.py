"""Object-store backends (obstore): `s3://`, `az://`, `gs://` and `file://`. See backend.py."""

from .backend import AzureBackend, FileStoreBackend, GCSBackend, ObjectStoreBackend, S3Backend

__all__ = ["AzureBackend", "FileStoreBackend", "GCSBackend", "ObjectStoreBackend", "S3Backend"]
