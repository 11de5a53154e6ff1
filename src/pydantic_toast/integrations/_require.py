"""The import guard every adapter runs first: a missing framework names its extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..exceptions import MissingDependencyError

__all__ = ["require"]


def require(module: str, *, package: str, extra: str) -> ModuleType:
    """Import `module`, or raise `MissingDependencyError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"pydantic_toast.integrations.{extra} needs the {package!r} package, which is not "
            f"installed; install it with: pip install 'pydantic-toast[{extra}]'",
            package=package,
            extra=extra,
        ) from None
