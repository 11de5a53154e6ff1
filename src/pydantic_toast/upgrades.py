"""Schema versions: upgrade functions that turn stored data of version k into version k + 1.

Stored data outlives the code that wrote it. A model declares its current version with
`ExternalConfigDict(schema_version=N)` and registers one plain function per step:

    class User(ExternalBaseModel):
        full_name: str
        model_config = ExternalConfigDict(storage=..., schema_version=2)

        @upgrade(from_version=1)
        def _split_name(data: dict[str, Any]) -> dict[str, Any]:
            data["full_name"] = data.pop("name")
            return data

On load, the chain runs from the stored version to the current one before validation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import pydantic_core

from . import codecs
from .exceptions import StorageValidationError, StoredDataError

if TYPE_CHECKING:
    from .backends.base import StoredRecord
    from .base import ExternalBaseModel

__all__ = ["UpgradeFunction", "collect_upgrades", "upgrade", "upgraded_data"]

UpgradeFunction: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]
_MARKER = "__toast_upgrade_from__"


def upgrade(
    *, from_version: int
) -> Callable[[UpgradeFunction], staticmethod[[dict[str, Any]], dict[str, Any]]]:
    """Register the decorated function as the step from `from_version` to `from_version + 1`.

    The function receives the stored data as a dict (JSON types only) and returns the new dict.
    """
    if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
        raise StorageValidationError(
            f"upgrade(from_version=...) needs an integer >= 1, got {from_version!r}",
            expected="int >= 1",
            actual=from_version,
        )

    def register(function: UpgradeFunction) -> staticmethod[[dict[str, Any]], dict[str, Any]]:
        setattr(function, _MARKER, from_version)
        return staticmethod(function)

    return register


def collect_upgrades(cls: type[ExternalBaseModel], schema_version: int) -> dict[int, UpgradeFunction]:
    """The class's upgrade steps (inherited ones included), checked at class definition."""
    steps: dict[int, UpgradeFunction] = {}
    owners: dict[int, str] = {}
    for owner in reversed(cls.__mro__):
        for name, attribute in vars(owner).items():
            function = attribute.__func__ if isinstance(attribute, staticmethod) else attribute
            version = getattr(function, _MARKER, None)
            if not isinstance(version, int):
                continue
            if version in steps and owners[version] == owner.__qualname__:
                raise StorageValidationError(
                    f"two upgrades from version {version} ({name} and another) in {owner.__qualname__}; "
                    "keep one function per step",
                    expected="one upgrade per version",
                    actual=version,
                )
            if version >= schema_version:
                raise StorageValidationError(
                    f"upgrade {name} goes from version {version} to {version + 1}, but schema_version is "
                    f"{schema_version}; raise schema_version to {version + 1} or remove the upgrade",
                    expected=f"from_version < {schema_version}",
                    actual=version,
                )
            steps[version] = function
            owners[version] = owner.__qualname__
    return steps


def upgraded_data(cls: type[ExternalBaseModel], record: StoredRecord) -> bytes:
    """The record's data as JSON at the model's current version: decoded by the codec stage, then
    upgraded if needed."""
    settings = cls.__toast_settings__
    current = settings.schema_version
    stored = record.schema_version
    if stored == current:
        return codecs.decode(record, settings.codec)
    if stored > current:
        raise StorageValidationError(
            f"stored {record.class_name} record {record.id} has schema_version {stored}, newer than "
            f"this code's {current}; deploy the code that wrote it before reading it",
            expected=current,
            actual=stored,
        )
    steps = cls.__toast_upgrades__
    gap = next((version for version in range(stored, current) if version not in steps), None)
    if gap is not None:
        raise StorageValidationError(
            f"stored {record.class_name} record {record.id} has schema_version {stored} but the model "
            f"is at {current} and no upgrade from version {gap} to {gap + 1} is registered; add "
            f"@upgrade(from_version={gap}) to {cls.__qualname__}",
            expected=current,
            actual=stored,
        )
    data_json = codecs.decode(record, settings.codec)  # its own errors are not "no JSON object"
    try:
        data: Any = pydantic_core.from_json(data_json)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise StoredDataError.whole_record(
            record.class_name,
            record.id,
            f"holds no JSON object as its data, so it cannot be upgraded to {cls.__qualname__}'s "
            f"schema_version {current}; repair or delete the record",
            "model_type",
        )
    for version in range(stored, current):
        failure: str | None = None
        try:
            data = steps[version](data)
        except Exception as exc:  # noqa: BLE001 - any failure of user code is reported the same way
            # Named by type and place only, and not chained: its message may quote stored data.
            failure = f"{type(exc).__name__} at {_where(exc)}"
        if failure is not None:
            raise StorageValidationError(
                f"upgrade of {record.class_name} record {record.id} from version {version} to "
                f"{version + 1} failed: {failure}",
                expected=version + 1,
                actual=version,
            )
        if not isinstance(data, dict):
            raise StorageValidationError(
                f"upgrade of {record.class_name} from version {version} returned "
                f"{type(data).__name__}, not a dict",
                expected="dict",
                actual=type(data).__name__,
            )
    return pydantic_core.to_json(data)


def _where(exc: BaseException) -> str:
    """The innermost frame of a traceback, as `function (file:line)`."""
    traceback = exc.__traceback__
    if traceback is None:
        return "an unknown place"
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    code = traceback.tb_frame.f_code
    return f"{code.co_qualname} ({code.co_filename}:{traceback.tb_lineno})"
