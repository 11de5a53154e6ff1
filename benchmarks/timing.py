"""Timing and statistics: contenders run interleaved, several rounds, medians and percentiles.

A noisy machine (other people's test runs, two cores) slows whatever happens to run at that
moment. Running contender A's whole series and then B's would charge that noise to one of them.
Here every round runs each contender for a few calls, the order rotating from round to round
(A B C, B C A, C A B, ...), so slow patches spread over all of them; the ratio is taken between
medians of per-call times, which ignore the outliers that remain.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Contender", "Samples", "Summary", "measure_async", "measure_sync", "percentile", "ratio_range"]

Kind = Literal["toast", "baseline", "peer"]


@dataclass(frozen=True, slots=True)
class Contender:
    """One way of doing a scenario's work. `call` performs one timed unit of work."""

    name: str
    kind: Kind
    call: Callable[[], Awaitable[object]] | Callable[[], object]


@dataclass(slots=True)
class Samples:
    """Per-call durations of one contender, in seconds."""

    name: str
    kind: Kind
    seconds: list[float] = field(default_factory=list)
    rounds: list[list[float]] = field(default_factory=list)

    def summary(self) -> Summary:
        return Summary.of(
            self.name, self.kind, self.seconds, [statistics.median(r) for r in self.rounds if r]
        )


@dataclass(frozen=True, slots=True)
class Summary:
    name: str
    kind: Kind
    calls: int
    median: float
    p50: float
    p99: float
    mean: float
    round_medians: tuple[float, ...] = ()

    @classmethod
    def of(
        cls, name: str, kind: Kind, seconds: Sequence[float], round_medians: Sequence[float] = ()
    ) -> Summary:
        if not seconds:
            raise ValueError(f"no samples for {name}")
        return cls(
            name=name,
            kind=kind,
            calls=len(seconds),
            median=statistics.median(seconds),
            p50=percentile(seconds, 50),
            p99=percentile(seconds, 99),
            mean=statistics.fmean(seconds),
            round_medians=tuple(round_medians),
        )


def ratio_range(toast: Summary, other: Summary) -> tuple[float, float] | None:
    """The lowest and highest per-round ratio: how much the ratio moved from round to round."""
    pairs = [(t, o) for t, o in zip(toast.round_medians, other.round_medians, strict=False) if o > 0]
    if not pairs:
        return None
    ratios = [t / o for t, o in pairs]
    return min(ratios), max(ratios)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank), q in [0, 100]."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _order(count: int, round_index: int) -> list[int]:
    """Rotate the starting contender every round: 0 1 2, 1 2 0, 2 0 1, ..."""
    return [(round_index + offset) % count for offset in range(count)]


async def measure_async(
    contenders: Sequence[Contender], *, rounds: int, iterations: int, warmup: int = 1
) -> list[Samples]:
    """Time async contenders interleaved: per round, `iterations` calls of each, rotating order.

    Each contender first makes `warmup` untimed calls (connections opened, caches filled).
    """
    samples = [Samples(c.name, c.kind) for c in contenders]
    for contender in contenders:
        for _ in range(warmup):
            await _await(contender.call())
    for round_index in range(rounds):
        gc.collect()
        for index in _order(len(contenders), round_index):
            call = contenders[index].call
            seconds: list[float] = []
            for _ in range(iterations):
                start = time.perf_counter()
                await _await(call())
                seconds.append(time.perf_counter() - start)
            samples[index].seconds.extend(seconds)
            samples[index].rounds.append(seconds)
    return samples


def measure_sync(
    contenders: Sequence[Contender], *, rounds: int, iterations: int, warmup: int = 1
) -> list[Samples]:
    """The same as `measure_async` for plain (sync) callables, with no event loop running."""
    samples = [Samples(c.name, c.kind) for c in contenders]
    for contender in contenders:
        for _ in range(warmup):
            _check_sync(contender.call())
    for round_index in range(rounds):
        gc.collect()
        for index in _order(len(contenders), round_index):
            call = contenders[index].call
            seconds: list[float] = []
            for _ in range(iterations):
                start = time.perf_counter()
                result = call()
                seconds.append(time.perf_counter() - start)
                _check_sync(result)
            samples[index].seconds.extend(seconds)
            samples[index].rounds.append(seconds)
    return samples


async def _await(result: object) -> object:
    if isinstance(result, Awaitable):
        return await result
    raise TypeError(f"an async contender returned {type(result).__name__}, not an awaitable")


def _check_sync(result: object) -> None:
    if isinstance(result, Awaitable):
        close = getattr(result, "close", None)
        if callable(close):
            close()
        raise TypeError("a sync contender returned an awaitable; use measure_async for it")
