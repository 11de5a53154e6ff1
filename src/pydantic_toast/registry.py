"""Which backend class serves which URL scheme.

Built-in backends are listed by import path and imported on first use, so the core never imports
a driver. Third-party packages register through the `pydantic_toast.backends` entry-point group;
applications call `register_backend`. A scheme is never silently taken over: registering a
different class for a known scheme needs `replace=True`. A class that has the contract's four
async methods without subclassing `StorageBackend` is registered wrapped (`adapt_backend`), so
every caller finds the whole `StorageBackend` interface.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import MappingProxyType

from . import forksafe
from .backends.base import StorageBackend, adapt_backend
from .exceptions import MissingDependencyError, StorageValidationError

__all__ = ["backend_class", "known_schemes", "register_backend", "registered_backends"]

ENTRY_POINT_GROUP = "pydantic_toast.backends"
REQUIRED_METHODS = ("connect", "disconnect", "save", "load")

# scheme -> (module:Class, extra that provides its driver)
_BUILTIN: dict[str, tuple[str, str | None]] = {
    "memory": ("pydantic_toast.backends.memory:MemoryBackend", None),
    "sqlite": ("pydantic_toast.backends.sqlite:SQLiteBackend", None),
    "postgresql": ("pydantic_toast.backends.postgresql:PostgreSQLBackend", "postgresql"),
    "postgres": ("pydantic_toast.backends.postgresql:PostgreSQLBackend", "postgresql"),
    "redis": ("pydantic_toast.backends.redis:RedisBackend", "redis"),
    "rediss": ("pydantic_toast.backends.redis:RedisBackend", "redis"),
    "unix": ("pydantic_toast.backends.redis:RedisBackend", "redis"),
    "redis+cluster": ("pydantic_toast.backends.redis:RedisClusterBackend", "redis"),
    "rediss+cluster": ("pydantic_toast.backends.redis:RedisClusterBackend", "redis"),
    "s3": ("pydantic_toast.backends.objectstore:S3Backend", "s3"),
    "file": ("pydantic_toast.backends.objectstore:FileStoreBackend", "s3"),
    "az": ("pydantic_toast.backends.objectstore:AzureBackend", "s3"),
    "gs": ("pydantic_toast.backends.objectstore:GCSBackend", "s3"),
}

# extra -> the driver module it installs (checked, never imported, when a model class is defined)
_DRIVERS = {"postgresql": "asyncpg", "redis": "redis", "s3": "obstore"}

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_lock = forksafe.RLock()
_registered: dict[str, type[StorageBackend]] = {}
_entry_points_loaded = False

registered_backends: Mapping[str, type[StorageBackend]] = MappingProxyType(_registered)
"""Read-only view of the backends registered so far (built-ins appear once first used)."""


def register_backend(scheme: str, backend: type[StorageBackend], *, replace: bool = False) -> None:
    """Serve URLs of `scheme` with `backend`.

    `backend` must provide the four async methods of the contract: `connect`, `disconnect`,
    `save`, `load`; it need not subclass `StorageBackend` (it is then wrapped, and
    `registered_backends[scheme]` is the wrapper). Registering another class for a scheme
    already taken raises unless `replace=True`; registering the same class again is a no-op.
    """
    if not isinstance(scheme, str) or not _SCHEME.match(scheme):
        raise StorageValidationError(
            f"backend scheme {scheme!r} is not a valid URL scheme; use lowercase letters, digits, "
            "'+', '-' or '.', starting with a letter (e.g. 'file' or 's3+json')",
            expected="URL scheme",
            actual=scheme,
        )
    _check_backend_class(scheme, backend)
    with _lock:
        current = _registered.get(scheme)
        if current is None and scheme in _BUILTIN:
            current = _import_builtin(scheme)
        if current is not None and getattr(current, "adapted", current) is not backend and not replace:
            raise StorageValidationError(
                f"scheme {scheme!r} is already served by {_qualname(current)}; pass replace=True "
                f"to register_backend() to serve it with {_qualname(backend)} instead",
                expected=_qualname(current),
                actual=_qualname(backend),
            )
        if current is None or getattr(current, "adapted", current) is not backend:
            _registered[scheme] = adapt_backend(backend)


def _check_backend_class(scheme: str, backend: object) -> None:
    if not inspect.isclass(backend):
        raise StorageValidationError(
            f"register_backend({scheme!r}, …) needs a class, got {type(backend).__name__}",
            expected="a StorageBackend subclass",
            actual=type(backend).__name__,
        )
    abstract: frozenset[str] = getattr(backend, "__abstractmethods__", frozenset())
    missing = [
        name
        for name in REQUIRED_METHODS
        if name in abstract or not inspect.iscoroutinefunction(getattr(backend, name, None))
    ]
    if missing:
        raise StorageValidationError(
            f"{_qualname(backend)} cannot serve {scheme!r}: it lacks the async method(s) "
            f"{', '.join(missing)}; a backend implements 'async def connect', 'disconnect', "
            "'save' and 'load' (see pydantic_toast.StorageBackend)",
            expected=list(REQUIRED_METHODS),
            actual=missing,
        )


def backend_class(scheme: str) -> type[StorageBackend]:
    """The class serving `scheme`, importing a built-in or entry point on first use."""
    with _lock:
        found = _registered.get(scheme)
        if found is None and scheme in _BUILTIN:
            found = _import_builtin(scheme)
        if found is not None:
            _check_driver(scheme, found)
            return found
        _load_entry_points()
        found = _registered.get(scheme)
        if found is not None:
            return found
    raise StorageValidationError(
        f"no storage backend for scheme {scheme!r}; known schemes: {', '.join(known_schemes())}. "
        "Register one with pydantic_toast.register_backend(scheme, BackendClass)",
        expected=known_schemes(),
        actual=scheme,
    )


def known_schemes() -> list[str]:
    with _lock:
        _load_entry_points()
        return sorted(set(_BUILTIN) | set(_registered))


def _import_builtin(scheme: str) -> type[StorageBackend]:
    path, extra = _BUILTIN[scheme]
    module_name, class_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # pragma: no cover - built-in modules import no driver at module level
        hint = f"; install it with: pip install 'pydantic-toast[{extra}]'" if extra else ""
        raise StorageValidationError(f"the {scheme!r} backend could not be imported: {exc}{hint}") from exc
    backend: type[StorageBackend] = getattr(module, class_name)
    _registered[scheme] = backend
    return backend


def _check_driver(scheme: str, backend: type[StorageBackend]) -> None:
    """Refuse a built-in backend whose driver is missing, by looking for it without importing it.

    Runs when a model class is defined, so every built-in backend reports a missing driver at the
    same moment, and as an ImportError (a broken installation), never as bad input.
    """
    if scheme not in _BUILTIN:
        return
    path, extra = _BUILTIN[scheme]
    driver = _DRIVERS.get(extra or "")
    if driver is None:
        return
    module_name, class_name = path.split(":")
    # By identity, not by __module__: a built-in class may live in a submodule of the named one.
    if getattr(sys.modules.get(module_name), class_name, None) is not backend:
        return  # replaced with register_backend(..., replace=True): no longer our driver
    if importlib.util.find_spec(driver) is None:
        raise MissingDependencyError(
            f"the {scheme}:// backend needs the {driver!r} package, which is not installed; "
            f"install it with: pip install 'pydantic-toast[{extra}]'",
            package=driver,
            extra=extra or "",
        )


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in _registered or entry.name in _BUILTIN:
            continue
        try:
            backend = entry.load()
        except Exception as exc:
            distribution = entry.dist.name if entry.dist is not None else "unknown distribution"
            raise StorageValidationError(
                f"the backend entry point {entry.name!r} = {entry.value!r} from {distribution} failed "
                f"to import: {exc!r}; reinstall or uninstall that package"
            ) from exc
        register_backend(entry.name, backend)


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
