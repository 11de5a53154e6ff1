"""A backend's URL options, declared once as a frozen pydantic model.

Each backend declares one `BackendOptions` subclass: a field per query-string option, with its
type, default, constraints and a one-line description. That model is the only list of the
backend's option names: parsing, the refusal of unknown options, the backend's typed settings and
the check that the docs' option tables are complete (tests/test_options.py) all read it.

`BackendOptions.from_url` turns the query string (text) into typed values and raises the
library's `StorageValidationError` naming the option, the masked URL and what would be accepted.
Booleans accept only 1/true/yes/on and 0/false/no/off; numbers refuse inf and nan. A field whose
type is a tuple collects every occurrence of a repeated option. Values of fields marked
`secret()` never appear in a message, and the URL is shown with them masked.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, ClassVar, Literal, Self

import annotated_types
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from ..exceptions import StorageValidationError
from ..url import StorageURL, mask_secrets

__all__ = ["BackendOptions", "Flag", "Identifier", "is_secret", "secret"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_SECRET = "secret"  # noqa: S105 - the marker key, not a password


def _identifier(name: str) -> str:
    # No SQL is ever built from unchecked text: table and schema names are checked here.
    if not _IDENTIFIER.match(name):
        raise ValueError(
            "is not a plain identifier; use letters, digits and underscores, starting with a "
            "letter or underscore, at most 63 characters"
        )
    return name


def _flag(raw: object) -> object:
    # Stricter than pydantic's lax bool ('t', 'y', 'n' and others are refused): a URL option is
    # typed by people, and 'ssl_check_hostname=n' should not pass as a valid spelling by luck.
    if not isinstance(raw, str):
        return raw
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("must be true or false (1, true, yes, on or 0, false, no, off)")


Identifier = Annotated[str, AfterValidator(_identifier)]
"""A plain SQL identifier (letters, digits, underscores; at most 63 characters)."""

Flag = Annotated[bool, BeforeValidator(_flag)]
"""A boolean written 1/true/yes/on or 0/false/no/off (any case)."""


def secret() -> dict[str, Any]:
    """`json_schema_extra` of a field whose value is a secret: `Field(None, json_schema_extra=secret())`."""
    return {_SECRET: True}


def is_secret(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get(_SECRET) is True


class BackendOptions(BaseModel):
    """Base of every backend's options model. Subclass it; give each field a default and a description.

    A subclass sets `backend`, the name messages use ("sqlite", "redis cluster").
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, validate_default=False)

    backend: ClassVar[str] = "backend"

    @classmethod
    def option_fields(cls) -> dict[str, FieldInfo]:
        """Each option's field, by the name the URL uses (a field's alias, else its name)."""
        return {field.alias or name: field for name, field in cls.model_fields.items()}

    @classmethod
    def option_names(cls) -> list[str]:
        return sorted(cls.option_fields())

    @classmethod
    def secrets_in(cls, url: StorageURL) -> tuple[str, ...]:
        """The URL's password and the values of secret options: what no message may show."""
        secret_names = {name for name, field in cls.option_fields().items() if is_secret(field)}
        values = (url.password, *(value for name, value in url.query if name in secret_names))
        return tuple(value for value in values if value)

    @classmethod
    def shown(cls, url: StorageURL) -> str:
        """The URL as messages show it: masked password and secret options."""
        return mask_secrets(url.masked, *cls.secrets_in(url))

    @classmethod
    def from_url(cls, url: StorageURL) -> Self:
        """The typed options of `url`, or `StorageValidationError` naming the option and the fix."""
        shown = cls.shown(url)
        fields = cls.option_fields()
        unknown = sorted({name for name, _ in url.query} - set(fields))
        if unknown:
            raise cls._unknown(unknown, shown)
        values: dict[str, Any] = {}
        for name, value in url.query:
            if _is_tuple(fields[name].annotation):
                values[name] = (*values.get(name, ()), value)
            else:
                values[name] = value  # a repeated option: the last one counts, as in most URL parsers
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            # Only the first problem: one clear message beats a list, and the fix is usually one edit.
            error = exc.errors(include_url=False)[0]
        raise cls._invalid(error, values, shown) from None

    @classmethod
    def _unknown(cls, unknown: list[str], shown: str) -> StorageValidationError:
        known = cls.option_names()
        if not known:
            return StorageValidationError(
                f"{cls.backend}:// takes no options, got {unknown} in {shown!r}",
                expected=[],
                actual=unknown,
            )
        return StorageValidationError(
            f"unknown {cls.backend} option(s) {unknown} in {shown!r}; known options: {known}",
            expected=known,
            actual=unknown,
        )

    @classmethod
    def _invalid(cls, error: ErrorDetails, values: dict[str, Any], shown: str) -> StorageValidationError:
        name = str(error["loc"][0]) if error["loc"] else ""
        field = cls.option_fields().get(name)
        if field is None:
            # A rule between options (a model validator): its message names them itself.
            reason = _reason(error)
            return StorageValidationError(f"{cls.backend} options in {shown!r}: {reason}", actual=reason)
        raw = "***" if is_secret(field) else values.get(name)
        if error["type"] == "value_error":
            # A field validator's own words: they say what is wrong and how to write it.
            predicate, wanted = _reason(error), field.description or name
        else:
            wanted = _wanted(field)
            predicate = f"must be {wanted}"
            if field.description:
                predicate += f" ({field.description})"
        return StorageValidationError(
            f"{cls.backend} option {name}={raw!r} in {shown!r} {predicate}", expected=wanted, actual=raw
        )


def _reason(error: ErrorDetails) -> str:
    context = error.get("ctx") or {}
    return str(context.get("error", error["msg"]))


def _is_tuple(annotation: Any) -> bool:
    return typing.get_origin(_strip_none(annotation)) is tuple


def _strip_none(annotation: Any) -> Any:
    """The type under `X | None` and `Annotated[X, ...]`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            annotation = rest[0]
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _wanted(field: FieldInfo) -> str:
    """What a field accepts, in words: 'an integer >= 1', 'one of disable, require', 'true or false'."""
    annotation = _strip_none(field.annotation)
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(choice) for choice in typing.get_args(annotation))
    kind = {bool: "true or false", int: "an integer", float: "a number"}.get(annotation, "text")
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            kind += f" >= {rule.ge}"
        elif isinstance(rule, annotated_types.Gt):
            kind += f" > {rule.gt}"
        elif isinstance(rule, annotated_types.Le):
            kind += f" <= {rule.le}"
    return kind
