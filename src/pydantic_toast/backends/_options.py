"""Parsing of backend options carried in the storage URL's query string.

Backends never re-parse URL strings: they receive a `StorageURL` and read typed options through
`URLOptions`, which raises the library's `StorageValidationError` naming the option, the masked
URL and what would be accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..exceptions import StorageValidationError
from ..url import StorageURL

__all__ = ["URLOptions", "check_identifier"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def check_identifier(name: str, *, what: str, url: StorageURL) -> str:
    """Refuse anything but a plain SQL identifier, so no SQL is ever built from unchecked text."""
    if not _IDENTIFIER.match(name):
        raise StorageValidationError(
            f"{what} {name!r} in {url.masked!r} is not a plain identifier; use letters, digits and "
            "underscores, starting with a letter or underscore, at most 63 characters",
            expected="identifier",
            actual=name,
        )
    return name


class URLOptions:
    """Typed access to a URL's query options for one backend."""

    def __init__(self, url: StorageURL, *, backend: str) -> None:
        self.url = url
        self.backend = backend
        self.values = url.options

    def reject_unknown(self, known: Iterable[str]) -> None:
        allowed = set(known)
        unknown = sorted(set(self.values) - allowed)
        if unknown:
            raise StorageValidationError(
                f"unknown {self.backend} option(s) {unknown} in {self.url.masked!r}; "
                f"known options: {sorted(allowed)}",
                expected=sorted(allowed),
                actual=unknown,
            )

    def string(self, name: str, default: str) -> str:
        return self.values.get(name, default)

    def identifier(self, name: str, default: str) -> str:
        return check_identifier(self.values.get(name, default), what=f"option {name!r}", url=self.url)

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self.values.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not value >= minimum or value == float("inf"):
            raise self._bad(name, raw, f"a number >= {minimum}")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        raw = self.values.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise self._bad(name, raw, f"an integer >= {minimum}") from None
        if value < minimum:
            raise self._bad(name, raw, f"an integer >= {minimum}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.values.get(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise self._bad(name, raw, "true or false")

    def _bad(self, name: str, raw: str, wanted: str) -> StorageValidationError:
        return StorageValidationError(
            f"{self.backend} option {name}={raw!r} in {self.url.masked!r} must be {wanted}",
            expected=wanted,
            actual=raw,
        )
