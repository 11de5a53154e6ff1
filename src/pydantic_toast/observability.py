"""What the library tells the outside about its storage traffic: log lines and OpenTelemetry spans.

Every storage operation goes through `runtime.execute`, so this is the one place that observes
them. The `pydantic_toast` logger (stdlib `logging`; the library installs no handler)
gets a DEBUG line per round trip and a WARNING for slow operations and for retries; when
`opentelemetry-api` is installed, each round trip is also a span following OpenTelemetry's
database semantic conventions, a child of the caller's current span.

What is shown: the operation, the backend's system name, the masked URL, the storage names
(class names), record counts, payload bytes, the duration and the outcome. Never a password,
never stored data, never an exception message that is not the library's own (a custom backend's
or a driver's message could quote either).

Cost when nobody listens: DEBUG off and OpenTelemetry not installed, `runtime.execute` asks
`enabled()` (one cached level check and one module attribute) and times the call with two
`perf_counter` reads for the slow-operation warning; nothing else runs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .exceptions import ExternalStorageError, StorageValidationError

if TYPE_CHECKING:
    from ._settings import ModelSettings
    from .backends.base import StorageBackend
    from .url import StorageURL

__all__ = [
    "check_size",
    "configure",
    "enabled",
    "logger",
    "observed",
    "retrying",
    "slow_seconds",
    "warn_slow",
]

T = TypeVar("T")

logger = logging.getLogger("pydantic_toast")
# No handler: where log lines go is the application's business. An application that configures
# no logging at all sees the WARNINGs on stderr (Python's last-resort handler), as it sees the
# Redis backend's eviction warning, and never a DEBUG line.

_DEFAULT_SLOW_SECONDS = 1.0
slow_seconds: float | None = _DEFAULT_SLOW_SECONDS
"""The slow-operation threshold in seconds (None: no warning); set it with `configure`."""

# The OpenTelemetry tracer: _UNSET until the first operation looks it up; None when
# opentelemetry-api is not installed; _WAITING while it is installed but no TracerProvider is set
# (the API alone makes only no-op spans, which would still cost a context switch per operation).
_UNSET: Any = object()
_WAITING: Any = object()
_tracer: Any = _UNSET
_trace_api: Any = None  # the opentelemetry.trace module, once imported


def configure(*, slow_threshold: float | None = _DEFAULT_SLOW_SECONDS) -> None:
    """Set the duration (seconds) above which a storage operation logs a WARNING; None: never.

    Default 1 second. The operation still finishes; the warning only tells that it took long.
    """
    global slow_seconds
    if slow_threshold is not None and (
        isinstance(slow_threshold, bool) or not isinstance(slow_threshold, int | float) or slow_threshold < 0
    ):
        raise StorageValidationError(
            f"slow_threshold must be a number of seconds (>= 0) or None, got {slow_threshold!r}",
            expected="seconds >= 0, or None",
            actual=repr(slow_threshold),
        )
    slow_seconds = None if slow_threshold is None else float(slow_threshold)


def _load_tracer() -> None:
    global _tracer, _trace_api
    try:
        from opentelemetry import trace
    except ImportError:
        _tracer = None
        return
    _trace_api = trace
    if "OTEL_PYTHON_TRACER_PROVIDER" in os.environ:
        trace.get_tracer_provider()  # sets the provider named by the environment, once
    _tracer = _WAITING


def _active_tracer() -> Any:
    """The tracer to make spans with, or None: not installed, or no TracerProvider set yet."""
    global _tracer
    tracer = _tracer
    if tracer is _WAITING:
        # A read of the API's global rather than get_tracer_provider(), which reads os.environ on
        # every call. Should the attribute ever go away, spans are made unconditionally.
        if getattr(_trace_api, "_TRACER_PROVIDER", True) is None:
            return None
        from . import __version__

        tracer = _tracer = _trace_api.get_tracer("pydantic_toast", __version__)
    elif tracer is _UNSET:
        # A TracerProvider can only have been set by code that imported the API: until then
        # nothing is imported here (no import cost, no driver-like import by the core).
        if "opentelemetry.trace" not in sys.modules and not _provider_in_environment():
            return None
        _load_tracer()
        return _active_tracer()
    return tracer


_provider_named: bool | None = None


def _provider_in_environment() -> bool:
    """Whether OTEL_PYTHON_TRACER_PROVIDER is set, read once: a lookup in os.environ costs as much
    as the rest of an operation's observability check (~8,000 instructions, a raised KeyError),
    and a process sets it before it starts, as OpenTelemetry expects it."""
    global _provider_named
    if _provider_named is None:
        _provider_named = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
    return _provider_named


_modules = sys.modules


def enabled() -> bool:
    """Whether anything listens beyond the slow-operation warning: DEBUG logging or OpenTelemetry."""
    # Asked before every storage operation, so the answer nobody listens is reached without a
    # call: `isEnabledFor`'s own cache read in line (the logging module clears it on any change
    # of level), and the tracer still unlooked-up while OpenTelemetry was never imported.
    debug = _level_cache.get(logging.DEBUG) if _level_cache is not None else None
    if debug is None or logger.disabled:
        debug = logger.isEnabledFor(logging.DEBUG)
    if debug:
        return True
    tracer = _tracer
    if tracer is None:
        return False
    if tracer is _UNSET and _provider_named is False and "opentelemetry.trace" not in _modules:
        return False
    return _active_tracer() is not None


# The logger's cache of isEnabledFor answers by level (logging clears it, never replaces it);
# None if a logging module keeps none, and every check then asks `isEnabledFor`.
_level_cache: dict[int, bool] | None = getattr(logger, "_cache", None)
if not isinstance(_level_cache, dict):
    _level_cache = None


def warn_slow(url: StorageURL, elapsed: float) -> None:
    """The unobserved path's warning: an operation took `elapsed` seconds, above the threshold."""
    logger.warning(
        "pydantic-toast: slow storage operation on %s (%s): %.3f s (threshold %g s); "
        "enable DEBUG on the 'pydantic_toast' logger to see each operation",
        _shown(url),
        _system_name(url.scheme),
        elapsed,
        slow_seconds,
        extra={"toast_system": _system_name(url.scheme), "toast_duration_s": elapsed},
    )


def retrying(
    system: str, action: str, error: BaseException, *, attempt: int | None = None, attempts: int | None = None
) -> None:
    """A backend is about to send an operation again after `error` (a dead connection, say);
    `attempt` of `attempts` is the one about to be made, where the backend counts them."""
    counted = f" (attempt {attempt} of {attempts})" if attempt is not None and attempts is not None else ""
    logger.warning(
        "pydantic-toast: %s %s failed (%s); retrying%s",
        system,
        action,
        type(error).__name__,
        counted,
        extra={"toast_system": system, "toast_operation": action, "toast_error": type(error).__name__},
    )


# --------------------------------------------------------------------------- one observed call

# Backend method -> the operation's name in log lines and spans (db.operation.name).
_OPERATIONS = {
    "save_records": "save",
    "save_records_checked": "save_checked",
    "load_records": "load",
    "delete": "delete",
    "delete_records": "delete",
    "scan_records": "scan",
    "find_record": "find",
    "purge_expired": "purge",
    "save": "save",
    "load": "load",
}

# URL scheme -> OpenTelemetry's db.system.name (well-known values where there is one).
_SYSTEMS = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "sqlite": "sqlite",
    "redis": "redis",
    "rediss": "redis",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
}


_masked: dict[str, str] = {}


def _shown(url: StorageURL) -> str:
    """The masked URL, computed once per URL (masking runs regular expressions)."""
    shown = _masked.get(url.raw)
    if shown is None:
        if len(_masked) > 1000:  # URLs built on the fly must not grow this without bound
            _masked.clear()
        shown = _masked[url.raw] = url.masked
    return shown


def _system_name(scheme: str) -> str:
    return _SYSTEMS.get(scheme, scheme)


class _Call:
    """What one operation did: filled in by `_Recorder` from the backend call's arguments and result."""

    __slots__ = ("bytes_in", "bytes_out", "class_names", "method", "records", "records_found")

    def __init__(self) -> None:
        self.method = "unknown"
        self.records = 0
        self.records_found: int | None = None
        self.bytes_out = 0
        self.bytes_in = 0
        self.class_names: set[str] = set()

    def started(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.method = method
        first = args[0] if args else None
        if method in ("save_records", "save_records_checked") and isinstance(first, Sequence):
            self.records += len(first)
            for record in first:
                self.bytes_out += len(record.payload)
                self.class_names.add(record.class_name)
        elif method in ("load_records", "delete_records") and isinstance(first, Sequence):
            self.records += len(first)
            self.class_names.update(class_name for _, class_name in first)
        elif method in ("delete", "load", "save") and len(args) >= 2:
            self.records += 1
            self.class_names.add(str(args[1]))
        elif method == "scan_records" and kwargs.get("class_name"):
            self.class_names.add(str(kwargs["class_name"]))

    def finished(self, result: object) -> None:
        if self.method == "load_records" and isinstance(result, list):
            found = [record for record in result if record is not None]
            self.records_found = len(found)
            self.bytes_in += sum(len(record.payload) for record in found)
        elif self.method == "scan_records" and isinstance(result, tuple):
            page = result[0]
            self.records_found = len(page)
            self.bytes_in += sum(len(record.payload) for record in page)
        elif self.method in ("delete_records", "purge_expired") and isinstance(result, int):
            self.records_found = result
        elif self.method == "delete" and isinstance(result, bool):
            self.records_found = int(result)


class _Recorder:
    """Stands in for the backend while an operation runs, noting which method it calls and with what."""

    __slots__ = ("_backend", "_call")

    def __init__(self, backend: StorageBackend, call: _Call) -> None:
        self._backend = backend
        self._call = call

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._backend, name)
        if name not in _OPERATIONS:
            return attribute
        call = self._call

        async def recorded(*args: Any, **kwargs: Any) -> Any:
            call.started(name, args, kwargs)
            result = await attribute(*args, **kwargs)
            call.finished(result)
            return result

        return recorded


async def observed(
    url: StorageURL,
    operation: Callable[[StorageBackend], Awaitable[T]],
    run: Callable[[Callable[[StorageBackend], Awaitable[T]]], Awaitable[T]],
) -> T:
    """Run `operation` through `run` (the runtime's deadline and error translation), with a log line
    and a span describing it."""
    call = _Call()

    def recording(backend: StorageBackend) -> Awaitable[T]:
        return operation(cast("StorageBackend", _Recorder(backend, call)))

    tracer = _active_tracer()
    system = _system_name(url.scheme)
    started = time.perf_counter()
    if tracer is None:
        error: BaseException | None = None
        try:
            return await run(recording)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _log(url, system, call, time.perf_counter() - started, error)
    return await _traced(tracer, url, system, call, started, run, recording)


async def _traced(
    tracer: Any,
    url: StorageURL,
    system: str,
    call: _Call,
    started: float,
    run: Callable[[Callable[[StorageBackend], Awaitable[T]]], Awaitable[T]],
    recording: Callable[[StorageBackend], Awaitable[T]],
) -> T:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    attributes: dict[str, Any] = {"db.system.name": system}
    if url.host:
        attributes["server.address"] = url.host
    if url.port is not None:
        attributes["server.port"] = url.port
    # The span is current while the backend runs, so a driver's own instrumentation nests under it;
    # the name and the rest of the attributes are known once the operation has called the backend.
    with tracer.start_as_current_span(
        f"pydantic_toast {system}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        error: BaseException | None = None
        try:
            return await run(recording)
        except BaseException as exc:
            error = exc
            span.set_attribute("error.type", type(exc).__qualname__)
            # Only the library's own messages are written to be safe to show.
            description = str(exc) if isinstance(exc, ExternalStorageError) else type(exc).__qualname__
            span.set_status(Status(StatusCode.ERROR, description))
            if isinstance(exc, ExternalStorageError):
                span.record_exception(exc, escaped=True)
            raise
        finally:
            operation = _OPERATIONS.get(call.method, call.method)
            classes = sorted(call.class_names)
            span.update_name(f"{operation} {classes[0]}" if len(classes) == 1 else f"{operation} {system}")
            span.set_attribute("db.operation.name", operation)
            if len(classes) == 1:
                span.set_attribute("db.collection.name", classes[0])
            elif classes:
                span.set_attribute("pydantic_toast.class_names", classes)
            if call.records > 1:
                span.set_attribute("db.operation.batch.size", call.records)
            span.set_attribute("pydantic_toast.records", call.records)
            if call.records_found is not None:
                span.set_attribute("db.response.returned_rows", call.records_found)
            span.set_attribute("pydantic_toast.bytes_out", call.bytes_out)
            span.set_attribute("pydantic_toast.bytes_in", call.bytes_in)
            _log(url, system, call, time.perf_counter() - started, error)


def _log(url: StorageURL, system: str, call: _Call, elapsed: float, error: BaseException | None) -> None:
    slow = slow_seconds is not None and elapsed >= slow_seconds
    level = logging.WARNING if slow and error is None else logging.DEBUG
    if not logger.isEnabledFor(level):
        return
    operation = _OPERATIONS.get(call.method, call.method)
    outcome = "ok" if error is None else f"failed: {type(error).__qualname__}"
    logger.log(
        level,
        "pydantic-toast: %s%s %s records=%d%s bytes_out=%d bytes_in=%d classes=%s on %s: %.2f ms, %s",
        "slow " if level == logging.WARNING else "",
        system,
        operation,
        call.records,
        "" if call.records_found is None else f" found={call.records_found}",
        call.bytes_out,
        call.bytes_in,
        ",".join(sorted(call.class_names)) or "-",
        _shown(url),
        elapsed * 1000,
        outcome,
        extra={
            "toast_system": system,
            "toast_operation": operation,
            "toast_url": _shown(url),
            "toast_records": call.records,
            "toast_bytes_out": call.bytes_out,
            "toast_bytes_in": call.bytes_in,
            "toast_class_names": sorted(call.class_names),
            "toast_duration_s": elapsed,
            "toast_outcome": "ok" if error is None else "error",
            "toast_error": None if error is None else type(error).__qualname__,
        },
    )


# --------------------------------------------------------------------------- record sizes


def check_size(model: str, settings: ModelSettings, size: int) -> None:
    """Warn about, or refuse, a record of `size` bytes (its data as JSON, before compression or
    encryption) by the model's `warn_size` / `max_size`. Called while a dump plans its writes,
    before any of them is sent."""
    if settings.max_size is not None and size > settings.max_size:
        raise StorageValidationError(
            f"{model} cannot be stored: its data takes {size} bytes as JSON, above the model's "
            f"max_size of {settings.max_size} bytes; nothing of this save was written. Store less in "
            "the model (move large values into external models of their own), or raise max_size in "
            "its ExternalConfigDict",
            expected=f"at most {settings.max_size} bytes",
            actual=size,
        )
    if settings.warn_size is not None and size > settings.warn_size:
        logger.warning(
            "pydantic-toast: %s record of %d bytes (data as JSON) is above warn_size=%d (storage name %s)",
            model,
            size,
            settings.warn_size,
            settings.storage_name,
            extra={"toast_model": model, "toast_size": size, "toast_warn_size": settings.warn_size},
        )
