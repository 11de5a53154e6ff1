"""Test helpers for backend authors: the conformance suite every backend must pass.

    from pydantic_toast.testing import BackendConformance

Needs pytest and pytest-asyncio (`pip install 'pydantic-toast[testing]'`); nothing else in
pydantic_toast imports this package. See `pydantic_toast.testing.conformance` for how to run it.
"""

from __future__ import annotations

from .conformance import BackendConformance

__all__ = ["BackendConformance"]
