"""Traffic counters per storage URL, shared by every backend instance of that URL."""

from __future__ import annotations

from . import forksafe
from .backends.base import BackendStats
from .url import StorageURL

__all__ = ["counters_for", "stats"]

_lock = forksafe.Lock()
_counters: dict[str, tuple[StorageURL, BackendStats]] = {}


def counters_for(url: StorageURL) -> BackendStats:
    """The counters of `url`, created on first use; one set per URL across event loops."""
    # Read without the lock (one dict lookup is atomic): every write counts, and only the first
    # for a URL creates its entry.
    entry = _counters.get(url.raw)
    if entry is not None:
        return entry[1]
    with _lock:
        entry = _counters.get(url.raw)
        if entry is None:
            entry = _counters[url.raw] = (url, BackendStats())
        return entry[1]


def stats() -> dict[str, dict[str, int]]:
    """Traffic counters per storage URL (password masked), cumulative since the process started.

    `round_trips` counts requests that waited for a server: take the difference around a block
    of code to check it for N+1 patterns.
    """
    with _lock:
        entries = list(_counters.values())
    return {url.masked: counters.snapshot() for url, counters in entries}
