"""Draw the ratios of a run (the JSON of run.py) as one PNG: a panel per backend.

Each bar is pydantic-toast's median time divided by another contender's (below 1: pydantic-toast
is faster). Green bars meet their target, red ones miss it, grey ones have none; the target is
drawn as a black tick on its bar and the 1.10 line across the panel. The x axis is logarithmic,
since peers can be many times slower. matplotlib is imported only here.

Redraw from a saved run with `python benchmarks/plot.py results.json results.png`.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["draw"]

GREEN, RED, GREY = "#2e7d32", "#c62828", "#9e9e9e"
_TICKS = (0.05, 0.1, 0.2, 0.5, 1.0, 1.1, 1.5, 2.0, 5.0, 10.0, 20.0, 50.0)


def _bars(results: list[dict[str, Any]], smoke: bool) -> list[tuple[str, float, float | None]]:
    """(label, ratio, target) per contender; smoke runs have no thresholds, so no targets."""
    bars = []
    for result in results:
        if result["status"] != "ok":
            continue
        for contender in result["contenders"]:
            if contender["ratio"] is None:
                continue
            label = f"{result['scenario']}  vs {contender['name']}"
            bars.append((label, float(contender["ratio"]), None if smoke else contender["target"]))
    return bars


def draw(data: dict[str, Any], path: Path) -> None:
    # Imported by name so that type checking and the harness work where matplotlib is absent.
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    ticker: Any = importlib.import_module("matplotlib.ticker")

    backends = [b["name"] for b in data["backends"] if b["ran"]]
    smoke = bool(data.get("smoke"))
    panels = [(name, _bars([r for r in data["results"] if r["backend"] == name], smoke)) for name in backends]
    panels = [(name, bars) for name, bars in panels if bars]
    if not panels:
        panels = [("nothing ran", [])]
    heights = [max(2.0, 0.28 * len(bars) + 1.0) for _, bars in panels]
    figure, axes = plt.subplots(
        len(panels), 1, figsize=(12, sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    low = min((ratio for _, bars in panels for _, ratio, _ in bars), default=0.5)
    high = max((ratio for _, bars in panels for _, ratio, _ in bars), default=2.0)
    for axis, (name, bars) in zip(axes[:, 0], panels, strict=True):
        labels = [label for label, _, _ in bars]
        ratios = [ratio for _, ratio, _ in bars]
        colours = [GREY if target is None else GREEN if ratio <= target else RED for _, ratio, target in bars]
        positions = list(range(len(bars)))
        axis.barh(positions, ratios, color=colours, height=0.7)
        for position, (_, ratio, target) in zip(positions, bars, strict=True):
            axis.text(ratio * 1.02, position, f"{ratio:.2f}", va="center", fontsize=7)
            if target is not None:
                axis.plot([target, target], [position - 0.4, position + 0.4], color="black", linewidth=1.5)
        axis.axvline(1.10, color=RED, linestyle="--", linewidth=1, label="1.10 target")
        axis.axvline(1.0, color="black", linewidth=0.6)
        axis.set_xscale("log")
        left, right = min(0.5, low * 0.8), max(2.0, high * 1.3)
        axis.set_xlim(left, right)
        axis.set_xticks([tick for tick in _TICKS if left <= tick <= right])
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_yticks(positions, labels, fontsize=7)
        axis.invert_yaxis()
        axis.set_title(f"{name}: pydantic-toast time / other time (lower is better)", fontsize=10, loc="left")
        axis.grid(axis="x", which="both", alpha=0.3)
        axis.legend(loc="lower right", fontsize=7)
    mode = "smoke: tiny counts, no thresholds" if smoke else f"{data.get('rounds')} interleaved rounds"
    figure.suptitle(f"pydantic-toast benchmarks, {data['date']} ({mode})", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.4 / sum(heights)))
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


if __name__ == "__main__":
    # Redraw from a saved run: python benchmarks/plot.py results.json results.png
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
