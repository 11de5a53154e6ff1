"""Driver failures become the library's exceptions here, by one mechanism for every backend.

Each backend declares an `ErrorTable`: rows of driver exception types (or words of the driver's
message, for drivers that raise one generic type) with what to tell the user about that failure,
its cause and its fix. The first row that matches wins, so a table lists the most specific
failures first. The backend builds its exception from that text (with its server, action and
masked URL), and `map_driver_errors` / `raise_unchained` raise it.

Chaining policy, the same for every backend: **the library's exception never carries the driver's
exception**, neither as `__cause__` nor as `__context__`. Driver exceptions can hold connection
parameters (a DSN, a user, a password in their arguments or attributes), and a chain is printed
by every traceback and kept by every error reporter. What the user needs from the driver's
exception, its type and its text with every secret masked, is in the message instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import NoReturn

__all__ = ["ErrorRow", "ErrorTable", "map_driver_errors", "raise_unchained"]


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """One failure of a driver: the exceptions that mean it, and what to tell the user."""

    types: tuple[type[BaseException], ...]
    hint: Callable[[BaseException], str]
    # Words of the driver's message that mean this failure too, whatever the exception's type.
    words: tuple[str, ...] = ()

    def matches(self, exc: BaseException) -> bool:
        if isinstance(exc, self.types):
            return True
        text = str(exc) if self.words else ""
        return any(word in text for word in self.words)


class ErrorTable:
    """A backend's rows, most specific first, and the hint for a failure no row names."""

    def __init__(self, rows: Iterable[ErrorRow], default: Callable[[BaseException], str]) -> None:
        self._rows = tuple(rows)
        self._default = default

    def hint(self, exc: BaseException) -> str:
        for row in self._rows:
            if row.matches(exc):
                return row.hint(exc)
        return self._default(exc)


def raise_unchained(error: BaseException) -> NoReturn:
    """Raise `error` without the exception being handled (the driver's) as its context.

    Python links the handled exception as `__context__` at the raise; clearing it in a handler of
    our own and re-raising with a bare `raise` (which links nothing) keeps the chain empty, from
    inside an `except` block or an `__exit__` alike.
    """
    try:
        raise error
    except BaseException:
        error.__cause__ = None
        error.__context__ = None
        raise


class map_driver_errors:  # noqa: N801 - used like a function: `with map_driver_errors(...):`
    """Translate the driver exceptions `catch` raised inside the block with `translate`, unchained.

    Anything else (the library's own errors, cancellation) passes through unchanged.
    """

    def __init__(
        self, catch: tuple[type[BaseException], ...], translate: Callable[[BaseException], BaseException]
    ) -> None:
        self._catch = catch
        self._translate = translate

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc is not None and isinstance(exc, self._catch):
            raise_unchained(self._translate(exc))
