"""pydantic-toast: PostgreSQL's TOAST idea for Pydantic models.

A model that subclasses `ExternalBaseModel` keeps its data in an external store chosen by a URL;
`model_dump()` returns a small reference and `model_validate(reference)` brings the model back.
"""

from .backends.base import StorageBackend
from .base import ExternalBaseModel, ExternalConfigDict, ReferenceLike
from .exceptions import (
    ExternalStorageError,
    RecordNotFoundError,
    StorageConnectionError,
    StorageValidationError,
    UnsupportedEventLoopError,
    UnsupportedOperationError,
)
from .persistence import CONTEXT_KEY, adump, dump
from .reference import ExternalReference
from .registry import register_backend
from .runtime import aclose, close, stats
from .upgrades import upgrade

__all__ = [
    "CONTEXT_KEY",
    "ExternalBaseModel",
    "ExternalConfigDict",
    "ExternalReference",
    "ExternalStorageError",
    "RecordNotFoundError",
    "ReferenceLike",
    "StorageBackend",
    "StorageConnectionError",
    "StorageValidationError",
    "UnsupportedEventLoopError",
    "UnsupportedOperationError",
    "aclose",
    "adump",
    "close",
    "dump",
    "register_backend",
    "stats",
    "upgrade",
]

__version__ = "0.1.0"
