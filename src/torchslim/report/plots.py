"""The report's figures, drawn with matplotlib (Agg): the sensitivity heat map and the size/quality (and
latency/quality) Pareto plot; :func:`png` turns a figure into PNG bytes to write or embed."""
from __future__ import annotations

import io
import math
from typing import Any, Callable, Sequence

from torchslim.report.inputs import Front, Point

MARKERS = {"original": ("*", 220, "#1f77b4"), "recipe": ("D", 70, "#d62728"), "uniform": ("o", 55, "#ff7f0e"),
           "tuned": ("s", 55, "#2ca02c"), "evaluated": ("^", 70, "#9467bd")}   # kind: marker, size, colour


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain(text: str) -> str:
    """``text`` drawn as written: a ``$`` in a name read from a file would start matplotlib's math mode (and a
    name like ``$\\frac{$`` would fail to draw)."""
    return str(text).replace("$", r"\$")


def png(fig: Any, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()


def heat_map(groups: Sequence[str], actions: Sequence[str], costs: Sequence[Sequence[float | None]], measure: str,
             granularity: str) -> Any:
    """A groups x actions figure of log10(cost), darker where an action hurts more, grey where it does not
    apply; a figure saying so when nothing was measured."""
    import matplotlib
    import numpy as np

    plt = _pyplot()
    grid = np.full((len(groups), len(actions)), np.nan)
    for i, row in enumerate(costs):
        for j, cost in enumerate(row):
            if cost is not None:
                grid[i, j] = math.log10(max(cost, 1e-9))
    fig, ax = plt.subplots(figsize=(2.5 + 1.1 * len(actions), min(2 + 0.22 * len(groups), 60)))
    if grid.size == 0 or np.isnan(grid).all():
        ax.text(0.5, 0.5, "no cost measured", ha="center", va="center")
        ax.set_axis_off()
        return fig
    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap)
    ax.set_xticks(range(len(actions)), [plain(a) for a in actions], rotation=30, ha="right")
    ax.set_yticks(range(len(groups)), [plain(g) for g in groups], fontsize=7 if len(groups) > 40 else 9)
    fig.colorbar(im, ax=ax, label=plain(f"log10 {measure} cost"))
    ax.set_title(plain(f"Sensitivity ({granularity} by {granularity}; darker hurts more)"))
    fig.tight_layout()
    return fig


def pareto_front(points: Sequence[Point], higher_is_better: bool, cost: Callable[[Point], float] | None = None
                 ) -> list[Point]:
    """The points no other point beats on both cost (default: bytes) and quality, cheapest first."""
    cost = cost or (lambda p: p.bytes)
    sign = 1.0 if higher_is_better else -1.0

    def beats(q: Point, p: Point) -> bool:
        return cost(q) <= cost(p) and sign * q.quality >= sign * p.quality and (cost(q), q.quality) != (cost(p), p.quality)

    return sorted([p for p in points if not any(beats(q, p) for q in points)], key=cost)


def on_front(f: Front) -> list[Point]:
    """The front the file names, or the one computed from its points."""
    if f.front is None:
        return pareto_front(f.points, f.higher_is_better)
    names = set(f.front)
    return sorted([p for p in f.points if p.name in names], key=lambda p: p.bytes)


def _panel(ax: Any, points: list[Point], front: list[Point], x: Any, xlabel: str, metric: str, better: str) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    kinds = list(dict.fromkeys(p.kind for p in points))
    for kind in kinds:
        marker, size, colour = MARKERS.get(kind, ("x", 55, None))
        ps = [p for p in points if p.kind == kind]
        ax.scatter([x(p) for p in ps], [p.quality for p in ps], marker=marker, s=size, c=colour, label=plain(kind),
                   zorder=4 if kind in ("original", "recipe") else 3)     # never hidden behind another point
    for p in points:
        if p.kind in ("original", "recipe"):
            ax.annotate(plain(p.name), (x(p), p.quality), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if len(front) > 1:
        ax.plot([x(p) for p in front], [p.quality for p in front], "k--", lw=1, label="front", zorder=2)
    xs = [x(p) for p in points]
    if min(xs) > 0 and max(xs) / min(xs) > 3:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        xlabel += " (log)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(plain(f"{metric} ({better} is better)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def pareto(f: Front) -> Any:
    """Size against quality (and latency against quality where two or more points were timed), the
    uncompressed model and recipes named, the front dashed."""
    plt = _pyplot()
    timed = [p for p in f.points if p.latency_ms is not None]
    panels = 2 if len(timed) > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.8), squeeze=False)
    better = "higher" if f.higher_is_better else "lower"
    _panel(axes[0][0], f.points, on_front(f), lambda p: p.bytes / 1024, f"{f.bytes_label}, KiB", f.metric, better)
    if panels == 2:
        latency = lambda p: p.latency_ms  # noqa: E731
        _panel(axes[0][1], timed, pareto_front(timed, f.higher_is_better, latency), latency, "latency median, ms",
               f.metric, better)
    fig.suptitle(plain(f"{f.label}: size vs {f.metric}" + (" and latency" if panels == 2 else "")))
    fig.tight_layout()
    return fig
