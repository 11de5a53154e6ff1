"""pydantic-toast: PostgreSQL's TOAST idea for Pydantic models.

A model that subclasses `ExternalBaseModel` keeps its data in an external store chosen by a URL;
`model_dump()` returns a small reference and `model_validate(reference)` brings the model back.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from ._stats import stats
from ._writing import CONTEXT_KEY, adump, dump
from .adapter import ExternalTypeAdapter
from .backends.base import StorageBackend
from .base import ExternalBaseModel, ExternalConfigDict, ReferenceLike
from .encryption import KeySet
from .exceptions import (
    ConcurrentUpdateError,
    ExternalStorageError,
    MissingDependencyError,
    RecordIntegrityError,
    RecordNotFoundError,
    StorageConnectionError,
    StorageValidationError,
    StoredDataError,
    UnsupportedEventLoopError,
    UnsupportedOperationError,
)
from .lifecycle import delete
from .reference import ExternalReference, is_external_reference
from .registry import register_backend
from .runtime import aclose, close
from .toast import Toast
from .upgrades import upgrade

__all__ = [
    "CONTEXT_KEY",
    "ConcurrentUpdateError",
    "ExternalBaseModel",
    "ExternalConfigDict",
    "ExternalReference",
    "ExternalStorageError",
    "KeySet",
    "ExternalTypeAdapter",
    "MissingDependencyError",
    "RecordIntegrityError",
    "RecordNotFoundError",
    "ReferenceLike",
    "StorageBackend",
    "StorageConnectionError",
    "StorageValidationError",
    "StoredDataError",
    "Toast",
    "UnsupportedEventLoopError",
    "UnsupportedOperationError",
    "aclose",
    "adump",
    "close",
    "delete",
    "dump",
    "is_external_reference",
    "register_backend",
    "stats",
    "upgrade",
]

# pyproject.toml is the one place the version is written; an installed (or editable) package has
# it in its metadata. Only a source tree put on sys.path by hand has none: say so, don't guess.
try:
    __version__ = _distribution_version("pydantic-toast")
except PackageNotFoundError:
    __version__ = "0+unknown"
