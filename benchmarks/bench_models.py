"""The benchmark's models, defined per storage URL, with plain pydantic twins for the baselines.

An external model's storage URL is part of its class (`model_config`), so each backend gets its
own classes. The baselines use plain `BaseModel` classes with exactly the same fields: the
hand-written code serializes and validates the same data with the same pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from pydantic import BaseModel, create_model

from pydantic_toast import ExternalBaseModel, ExternalConfigDict

__all__ = ["FLAT10", "WIDE100", "ModelSet", "model_set", "payload_values", "values_for"]

Fields = tuple[tuple[str, Any], ...]

# Ten scalar fields: what redis-om's HashModel can store too, so peers run on the same model.
FLAT10: Fields = (
    ("name", str),
    ("email", str),
    ("age", int),
    ("score", float),
    ("active", bool),
    ("joined", datetime),
    ("city", str),
    ("visits", int),
    ("ratio", float),
    ("nickname", str),
)

_WIDE_TYPES: tuple[Any, ...] = (str, int, float, bool, datetime, list[str], dict[str, int], str | None)
WIDE100: Fields = tuple((f"f{index:03d}", _WIDE_TYPES[index % len(_WIDE_TYPES)]) for index in range(100))

_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def _value(annotation: Any, seed: int, position: int) -> Any:
    number = seed * 131 + position
    if annotation is str:
        return f"value-{number}-{'x' * (position % 7)}"
    if annotation is int:
        return number
    if annotation is float:
        return number / 7
    if annotation is bool:
        return number % 2 == 0
    if annotation is datetime:
        return _EPOCH + timedelta(seconds=number)
    if annotation == list[str]:
        return [f"tag{number % 10}", f"tag{number % 3}"]
    if annotation == dict[str, int]:
        return {"a": number, "b": position}
    if annotation == str | None:
        return None if number % 3 == 0 else f"maybe-{number}"
    raise TypeError(f"no benchmark value for {annotation!r}")


def values_for(fields: Fields, seed: int) -> dict[str, Any]:
    """Deterministic field values for one instance."""
    return {name: _value(annotation, seed, position) for position, (name, annotation) in enumerate(fields)}


def payload_values(size: int, seed: int) -> dict[str, Any]:
    """A model of about `size` bytes of JSON: a title and a long ASCII body."""
    return {"title": f"payload {seed}", "body": ("lorem ipsum " * (size // 12 + 1))[:size]}


def _external(name: str, fields: Fields, storage: str, extra: dict[str, Any] | None = None) -> Any:
    annotations: dict[str, Any] = dict(fields)
    annotations.update(extra or {})
    namespace: dict[str, Any] = {
        "__annotations__": annotations,
        "__module__": __name__,
        "__qualname__": name,
        "model_config": ExternalConfigDict(storage=storage),
    }
    return type(name, (ExternalBaseModel,), namespace)


def _plain(name: str, fields: Fields) -> type[BaseModel]:
    definitions: dict[str, Any] = {field: (annotation, ...) for field, annotation in fields}
    return create_model(name, **definitions)


@dataclass(frozen=True, slots=True)
class ModelSet:
    """pydantic-toast classes for one storage URL and their plain twins."""

    flat10: type[ExternalBaseModel]
    wide100: type[ExternalBaseModel]
    payload: type[ExternalBaseModel]
    child: type[ExternalBaseModel]
    parent: type[ExternalBaseModel]
    plain_flat10: type[BaseModel]
    plain_wide100: type[BaseModel]
    plain_payload: type[BaseModel]


_PAYLOAD: Fields = (("title", str), ("body", str))
_CHILD: Fields = (("name", str), ("value", int), ("tags", list[str]))


def model_set(storage: str) -> ModelSet:
    """Define (or redefine: same module and name is allowed) the models stored at `storage`."""
    child = cast(type[ExternalBaseModel], _external("Child", _CHILD, storage))
    parent = _external("Parent", (("title", str),), storage, {"children": list[child]})  # type: ignore[valid-type]
    return ModelSet(
        flat10=_external("Flat10", FLAT10, storage),
        wide100=_external("Wide100", WIDE100, storage),
        payload=_external("Payload", _PAYLOAD, storage),
        child=child,
        parent=parent,
        plain_flat10=_plain("PlainFlat10", FLAT10),
        plain_wide100=_plain("PlainWide100", WIDE100),
        plain_payload=_plain("PlainPayload", _PAYLOAD),
    )
