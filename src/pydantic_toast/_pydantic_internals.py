"""The one place where pydantic-toast reaches into pydantic's private modules.

Discriminated unions of external models. A field such as
`Annotated[Cat | Dog, Field(discriminator="kind")]` becomes a pydantic-core tagged union that
reads the tag from the input's "kind" key; an external model's own dump in that field is a
reference, `{"class_name": "Dog", "id": ...}`, which has no such key, so pydantic refused it with
`union_tag_not_found`. Pydantic builds the tagged union in the *parent's* schema, where no hook of
ours runs, so the function that builds it is wrapped here: when a choice is an external model,
the tag is looked up under the discriminator first and under "class_name" second, and every
storage name (of the choice's class and of its subclasses defined so far) is added as a tag of
that choice. Data keeps its own tag; a reference is routed by its class name.

Checked against pydantic 2.11-2.14 (`pydantic._internal._discriminated_union.apply_discriminator`,
called through its module by `GenerateSchema`). Should that function move, `install` does nothing
and discriminated unions of external models fail as before, with pydantic's own error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .exceptions import StorageValidationError

if TYPE_CHECKING:
    from .base import ExternalBaseModel

__all__ = ["install"]

_WRAPPERS = ("function-before", "function-after", "function-wrap", "default", "nullable")


def install(external_base: type[ExternalBaseModel]) -> None:
    """Wrap pydantic's discriminator application once per process."""
    try:
        from pydantic._internal import _discriminated_union
    except ImportError:  # pragma: no cover - a pydantic without the private module
        return
    original: Callable[..., Any] | None = getattr(_discriminated_union, "apply_discriminator", None)
    if original is None or getattr(original, "__toast_wrapped__", False):
        return

    def apply_discriminator(schema: Any, discriminator: Any, definitions: Any = None) -> Any:
        applied = original(schema, discriminator, definitions)
        _accept_references(applied, definitions or {}, external_base)
        return applied

    apply_discriminator.__toast_wrapped__ = True  # type: ignore[attr-defined]
    _discriminated_union.apply_discriminator = apply_discriminator


def _accept_references(schema: Any, definitions: dict[str, Any], external_base: type[Any]) -> None:
    """Let the tagged union at the top of `schema` route references of its external choices."""
    while isinstance(schema, dict) and schema.get("type") in ("nullable", "definitions", "missing-sentinel"):
        if schema["type"] == "definitions":
            definitions = {**definitions, **{d["ref"]: d for d in schema["definitions"] if "ref" in d}}
        schema = schema.get("schema")
    if not isinstance(schema, dict) or schema.get("type") != "tagged-union":
        return
    discriminator = schema["discriminator"]
    if callable(discriminator):
        return  # the user's own Discriminator function decides
    choices: dict[Any, Any] = schema["choices"]
    added: dict[Any, Any] = {}
    for tag, choice in choices.items():
        cls = _model_class(choice, definitions)
        if cls is None or not issubclass(cls, external_base):
            continue
        for sub in (cls, *_subclasses(cls)):
            settings = sub.__dict__.get("__toast_settings__")
            if settings is None:
                continue
            name = settings.storage_name
            owner = choices.get(name, added.get(name))
            if owner is not None and owner is not choice:
                raise StorageValidationError(
                    f"{sub.__qualname__}'s storage name {name!r} is also the discriminator value of another "
                    f"choice of this union (tag {tag!r}), so its references could not be told apart; "
                    "give it another storage_name",
                    expected="a storage name that is not a discriminator value",
                    actual=name,
                )
            added[name] = choice
    if not added:
        return
    paths: list[Any]
    if isinstance(discriminator, str):
        paths = [[discriminator]]
    elif discriminator and isinstance(discriminator[0], list):
        paths = list(discriminator)
    else:
        paths = [discriminator]
    schema["discriminator"] = [*paths, ["class_name"]]
    choices.update({name: choice for name, choice in added.items() if name not in choices})


def _model_class(choice: Any, definitions: dict[str, Any]) -> type[Any] | None:
    for _ in range(50):  # wrappers are few; the bound only guards against a malformed schema
        if not isinstance(choice, dict):
            return None
        kind = choice.get("type")
        if kind == "definition-ref":
            choice = definitions.get(choice.get("schema_ref", ""))
        elif kind == "model":
            cls = choice.get("cls")
            return cls if isinstance(cls, type) else None
        elif kind in _WRAPPERS and "schema" in choice:
            choice = choice["schema"]
        else:
            return None
    return None


def _subclasses(cls: type[Any]) -> list[type[Any]]:
    found: list[type[Any]] = []
    pending = list(cls.__subclasses__())
    while pending:
        sub = pending.pop()
        found.append(sub)
        pending.extend(sub.__subclasses__())
    return found
