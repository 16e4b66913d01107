"""A joint search's result as files: the Pareto front as a table, JSON, a plot and one recipe per point."""
from __future__ import annotations

import json
from pathlib import Path

from torchslim.core.io import atomic_file
from torchslim.search.joint import Point, SearchResult


def _mix(p: Point) -> str:
    counts: dict[str, int] = {}
    for a in p.assignment.values():
        counts[a] = counts.get(a, 0) + 1
    return ", ".join(f"{a}: {n}" for a, n in sorted(counts.items())) or "uncompressed"


def to_markdown(r: SearchResult) -> str:
    """The front, smallest first, with ratios against the uncompressed model."""
    lat = "latency_ms" in r.objectives
    head = f"| trial | {r.metric} | MiB | size vs uncompressed |" + (" predicted ms | speed-up |" if lat else "") + " mix |"
    lines = [f"Study `{r.study_name}`: {len(r.points)} trials measured end to end, {r.pruned} pruned early; "
             f"{len(r.front)} on the Pareto front of {', '.join(r.objectives)}."
             + (" Latency is predicted by the per-layer latency model (medians measured on this machine)." if lat
                else ""), "", head, "|" + "---|" * (head.count("|") - 1)]
    base = r.base
    rows = r.front if any(not p.assignment for p in r.front) else [base, *r.front]
    for p in rows:
        name = "uncompressed" if p is base else f"{p.number}" + (" (uncompressed)" if not p.assignment else "")
        row = f"| {name} | {p.quality:.4g} | {p.bytes / 2**20:.3f} | {p.bytes / base.bytes:.3f}x |"
        if lat:
            row += (f" {p.latency_ms:.3g} | {base.latency_ms / p.latency_ms:.2f}x |" if p.latency_ms and base.latency_ms
                    else " n/a | n/a |")
        lines.append(row + f" {_mix(p)} |")
    return "\n".join(lines) + "\n"


def plot(r: SearchResult, path: str | Path) -> Path:
    from torchslim.report import plots

    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    pts = r.points
    lat = "latency_ms" in r.objectives
    colour = {"c": [p.latency_ms for p in pts], "cmap": "viridis"} if lat else {}
    sc = ax.scatter([p.bytes / 2**20 for p in pts], [p.quality for p in pts], s=22, alpha=0.6, label="trials",
                    **colour)
    if lat:
        fig.colorbar(sc, ax=ax, label="predicted ms")
    front = sorted(r.front, key=lambda p: p.bytes)
    ax.plot([p.bytes / 2**20 for p in front], [p.quality for p in front], "o-", color="crimson", mfc="none",
            label="Pareto front")
    ax.scatter([r.base.bytes / 2**20], [r.base.quality], marker="*", s=160, color="black", label="uncompressed")
    ax.set_xlabel("MiB stored")
    ax.set_ylabel(plots.plain(r.metric) + (" (higher is better)" if r.higher_is_better else " (lower is better)"))
    ax.set_title(f"Joint search: {len(pts)} trials")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, "wb") as f:
        f.write(plots.png(fig))
    return path


def save(r: SearchResult, folder: str | Path) -> dict[str, Path]:
    """``front.json``, ``front.md``, ``front.png`` and ``recipes/trial-N.yaml`` for each front point in ``folder``."""
    from torchslim.recipes.recipe import Recipe

    folder = Path(folder)
    (folder / "recipes").mkdir(parents=True, exist_ok=True)
    out = {"json": folder / "front.json", "md": folder / "front.md", "png": folder / "front.png"}
    with atomic_file(out["json"]) as f:
        f.write(json.dumps(r.to_dict(), indent=1))
    with atomic_file(out["md"]) as f:
        f.write("# Joint search\n\n" + to_markdown(r))
    plot(r, out["png"])
    for p in r.front:
        if p.recipe is not None:
            path = folder / "recipes" / f"trial-{p.number}.yaml"
            Recipe.from_dict(p.recipe, str(path)).save(path)
            out[f"trial-{p.number}"] = path
    return out
