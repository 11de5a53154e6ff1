"""An external model class's validated configuration, and the classes behind storage names.

`settings_for` checks a class's `ExternalConfigDict` once, at class definition, and claims its
storage name in its store. A reference carries only that name, so this module also answers which
class a name stands for (`resolve_class`) and which names a class answers to (`storage_names`).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast
from uuid import UUID

from . import codecs, forksafe
from .exceptions import MissingDependencyError, StorageValidationError
from .reference import ExternalReference, parse_id, parse_reference
from .registry import backend_class, known_schemes
from .url import StorageURL

if TYPE_CHECKING:
    from .base import ExternalBaseModel

__all__ = [
    "DEFAULT_TIMEOUT",
    "ModelSettings",
    "classes_in",
    "coerce_reference",
    "resolve_class",
    "settings_for",
    "settings_of",
    "storage_names",
]

M = TypeVar("M", bound="ExternalBaseModel")

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """An external model class's validated configuration."""

    url: StorageURL
    storage_name: str
    schema_version: int
    timeout: float
    ttl: timedelta | None = None
    upgrade_write_back: bool = False
    dict_references: bool = True
    codec: codecs.Pipeline | None = None
    optimistic_concurrency: bool = False
    offload_threshold: int | None = None
    warn_size: int | None = None
    max_size: int | None = None
    content_addressed: bool = False


def settings_for(cls: type[ExternalBaseModel]) -> ModelSettings:
    """Validate the class's `ExternalConfigDict` at class definition, naming the class on error."""
    config = cast(Mapping[str, Any], cls.model_config)
    name = cls.__qualname__
    storage = config["storage"]
    try:
        url = StorageURL.parse(storage)
        backend = backend_class(url.scheme)
        # Duck-typed backends registered without subclassing StorageBackend may lack the hook.
        check_url = getattr(backend, "check_url", None)
        if callable(check_url):
            check_url(url)
        storage_name = config.get("storage_name", cls.__name__)
        if any(storage_name == _declared_name(base) for base in cls.__mro__[1:]):
            # Inherited from a parent's config: a subclass is a class of its own in the store.
            storage_name = cls.__name__
        if (
            not isinstance(storage_name, str)
            or not storage_name
            or ":" in storage_name
            or len(storage_name) > 200
        ):
            raise StorageValidationError(
                f"storage_name {storage_name!r} must be a non-empty string of at most 200 characters "
                "without ':'",
                expected="name",
                actual=storage_name,
            )
        schema_version = config.get("schema_version", 1)
        if not isinstance(schema_version, int) or isinstance(schema_version, bool) or schema_version < 1:
            raise StorageValidationError(
                f"schema_version must be an integer >= 1, got {schema_version!r}",
                expected="int >= 1",
                actual=schema_version,
            )
        timeout = check_timeout(config.get("timeout", DEFAULT_TIMEOUT))
        ttl = config.get("ttl")
        if ttl is not None and (not isinstance(ttl, timedelta) or ttl <= timedelta(0)):
            raise StorageValidationError(
                f"ttl must be a positive datetime.timedelta or None, got {ttl!r}",
                expected="timedelta > 0",
                actual=ttl,
            )
        write_back = _flag(config, "upgrade_write_back")
        optimistic = _flag(config, "optimistic_concurrency")
        codec = codecs.pipeline_for(config)
        threshold = check_threshold("offload_threshold", config.get("offload_threshold"))
        warn_size, max_size = _size(config, "warn_size"), _size(config, "max_size")
        content_addressed = _content_addressed(config, optimistic, write_back)
        # Last: a class refused for another reason must not keep the name claimed.
        _claim_storage_name(cls, url, storage_name)
    except StorageValidationError as exc:
        raise StorageValidationError(f"{name}: {exc}", expected=exc.expected, actual=exc.actual) from None
    except MissingDependencyError as exc:
        raise MissingDependencyError(f"{name}: {exc}", package=exc.package, extra=exc.extra) from None
    return ModelSettings(
        url=url,
        storage_name=storage_name,
        schema_version=schema_version,
        timeout=timeout,
        ttl=ttl,
        upgrade_write_back=write_back,
        codec=codec,
        optimistic_concurrency=optimistic,
        offload_threshold=threshold,
        warn_size=warn_size,
        max_size=max_size,
        content_addressed=content_addressed,
        dict_references="class_name" not in cls.__pydantic_fields__,
    )


def check_timeout(timeout: object) -> float:
    """A storage operation's timeout: a positive, finite number of seconds."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < float("inf"):
        raise StorageValidationError(
            f"timeout must be a positive number of seconds, got {timeout!r}",
            expected="seconds > 0",
            actual=timeout,
        )
    return float(timeout)


def check_threshold(key: str, threshold: object) -> int | None:
    """An offload threshold: bytes of JSON (0 and up), or None for none."""
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0
    ):
        raise StorageValidationError(
            f"{key} must be an integer number of bytes >= 0 or None, got {threshold!r}",
            expected="int >= 0 or None",
            actual=threshold,
        )
    return threshold


def _size(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise StorageValidationError(
            f"{key} must be a whole number of bytes (>= 1) or None, got {value!r}",
            expected="int >= 1",
            actual=value,
        )
    return value


def _content_addressed(config: Mapping[str, Any], optimistic: bool, write_back: bool) -> bool:
    """`content_addressed`, refused with the options it contradicts (see `_content_models`)."""
    if not _flag(config, "content_addressed"):
        return False
    conflict = None
    if optimistic:
        conflict = (
            "optimistic_concurrency=True: a content-addressed record never changes (other data is "
            "another record), so there is no concurrent update to detect; drop one of the two"
        )
    elif write_back:
        conflict = (
            "upgrade_write_back=True: upgraded data has another id, so writing it back would not "
            "replace the record that references point at; drop upgrade_write_back (upgrades then run "
            "on every load)"
        )
    elif config.get("encryption") is not None:
        conflict = (
            "encryption: the id would have to be a keyed hash of the plaintext, and records could no "
            "longer be checked once rotate-keys retired that key; keep content_addressed models "
            "unencrypted, or drop content_addressed"
        )
    if conflict is not None:
        raise StorageValidationError(
            f"content_addressed=True cannot be combined with {conflict}",
            expected="content_addressed without it",
            actual="content_addressed=True",
        )
    return True


def _flag(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise StorageValidationError(
            f"{key} must be True or False, got {value!r}", expected="bool", actual=value
        )
    return value


_claims_lock = forksafe.Lock()
_claims: weakref.WeakValueDictionary[tuple[str, str], type[ExternalBaseModel]] = weakref.WeakValueDictionary()


def _claim_storage_name(cls: type[ExternalBaseModel], url: StorageURL, storage_name: str) -> None:
    """Refuse two different classes writing the same class name into the same store.

    References carry only the class name, so two such classes would read each other's records.
    Redefining the same class (same module and qualified name: a reload, a notebook cell) is fine.
    """
    with _claims_lock:
        holder = _claims.get((url.raw, storage_name))
        same_class = holder is not None and (holder.__module__, holder.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if holder is not None and not same_class:
            raise StorageValidationError(
                f"{holder.__module__}.{holder.__qualname__} already stores records named {storage_name!r} "
                f"in {url.masked!r}; give one of them another name with "
                f"ExternalConfigDict(storage_name='...') so their records are kept apart",
                expected="a storage name unique per store",
                actual=storage_name,
            )
        _claims[(url.raw, storage_name)] = cls


def classes_in(url: StorageURL) -> dict[str, type[ExternalBaseModel]]:
    """The classes this process defined that store in `url` (the same URL text), by storage name."""
    with _claims_lock:
        return {name: cls for (raw, name), cls in _claims.items() if raw == url.raw}


def _declared_name(base: type) -> str | None:
    settings = base.__dict__.get("__toast_settings__")
    return settings.storage_name if isinstance(settings, ModelSettings) else None


def storage_names(cls: type[ExternalBaseModel]) -> list[str]:
    """The class names a reference to `cls` (or one of its subclasses) may carry, for schemas."""
    names: list[str] = []
    pending: list[type[ExternalBaseModel]] = [cls]
    while pending:
        current = pending.pop()
        settings = current.__dict__.get("__toast_settings__")
        if isinstance(settings, ModelSettings) and settings.storage_name not in names:
            names.append(settings.storage_name)
        pending.extend(reversed(current.__subclasses__()))
    return names


def settings_of(cls: type[ExternalBaseModel]) -> ModelSettings:
    """The class's settings; an abstract class (no storage configured) cannot store or load."""
    settings: ModelSettings | None = getattr(cls, "__toast_settings__", None)
    if settings is None:
        raise StorageValidationError(
            f"{cls.__qualname__} has no storage configured, so it is an abstract base: it can be "
            "subclassed and validated from full data, but not dumped, saved or loaded; use a subclass "
            "with model_config = ExternalConfigDict(storage='sqlite:///toast.db') or another URL "
            f"(known schemes: {', '.join(known_schemes())})",
            expected="storage URL",
            actual=None,
        )
    return settings


def resolve_class(cls: type[M], reference: ExternalReference) -> type[M]:
    """The class a reference loads as: `cls` itself or one of its subclasses, by storage name."""
    if settings_of(cls).storage_name == reference.class_name:
        return cls
    pending = list(cls.__subclasses__())
    while pending:
        sub = pending.pop()
        settings = sub.__dict__.get("__toast_settings__")
        if isinstance(settings, ModelSettings) and settings.storage_name == reference.class_name:
            return sub
        pending.extend(sub.__subclasses__())
    expected = cls.__toast_settings__.storage_name
    raise StorageValidationError(
        f"reference is for class {reference.class_name!r} but is being validated as {expected!r}; "
        f"pass it to the model it was dumped from",
        expected=expected,
        actual=reference.class_name,
    )


def coerce_reference(cls: type[ExternalBaseModel], value: object) -> ExternalReference:
    """Accept an ExternalReference, a reference dict, or a bare id (UUID or its text)."""
    storage_name = settings_of(cls).storage_name
    if isinstance(value, UUID | str):
        return ExternalReference.trusted(storage_name, parse_id(value))
    return parse_reference(value, expected_class=storage_name)
