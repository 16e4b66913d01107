"""A sensitivity scan as a Markdown table, JSON and a heat map (PNG, matplotlib)."""
from __future__ import annotations

import json
from pathlib import Path

from torchslim.core.io import atomic_file
from torchslim.search.sensitivity import Sensitivity

UNITS = {"kl": "mean KL divergence from the original's output distribution (nats per position)",
         "mse": "output squared error relative to the output's mean square",
         "task": "loss in the task's metric on its evaluation split",
         "block": "squared error of the output of the block holding the group, relative to its mean square, on the "
                  "block's cached calibration inputs (outside the blocks: of the model's output)"}


def _cost(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def to_markdown(s: Sensitivity, top: int | None = None) -> str:
    """One row per group (the most sensitive first, by the sum of its costs), a cost and bytes per action."""
    head = ["group", "params", "MiB"] + [f"{a} cost" for a in s.actions] + [f"{a} MiB" for a in s.actions]
    lines = [f"Cost: {UNITS[s.measure]}; {s.granularity} by {s.granularity}, each alone"
             + (f", over {s.positions} positions" if s.positions else "") + f"; scanned in {s.seconds:.0f} s.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = sorted(s.rows, key=lambda r: -sum(c.cost or 0.0 for c in r.cells.values()))
    for r in rows[:top] if top else rows:
        cells = [r.cells.get(a) for a in s.actions]
        lines.append("| " + " | ".join([r.group, f"{r.params:,}", f"{r.bytes / 2**20:.2f}"]
                                       + [_cost(c.cost if c else None) for c in cells]
                                       + ["n/a" if not c or c.bytes is None else f"{c.bytes / 2**20:.2f}"
                                          for c in cells]) + " |")
    if top and len(rows) > top:     # the printed table was cut silently: 15 of SmolLM2's 30 blocks, no word of it
        lines += ["", f"The {top} most sensitive of {len(rows)} {s.granularity}s; sensitivity.md lists all."]
    lines.append("")
    for a in s.actions:
        cells = [r.cells[a] for r in s.rows if a in r.cells]
        speeds = sorted({c.note for c in cells if c.cost is not None and c.note})
        skipped = [c for c in cells if c.cost is None and c.note.startswith("not applied")]
        warned = [c for c in cells if c.warning]
        said = ([f"kernel table: {', '.join(speeds[:3])}{' ...' if len(speeds) > 3 else ''}"] if speeds else []) + \
               ([f"not applied to {len(skipped)} group(s) (e.g. {skipped[0].note[13:]})"] if skipped else []) + \
               ([f"{len(warned)} trial(s) warned (e.g. {warned[0].warning[:200]})"] if warned else [])
        if said:
            lines.append(f"- {a}: " + "; ".join(said))
    return "\n".join(lines) + "\n"


def heat_map(s: Sensitivity, path: str | Path) -> Path:
    """A groups x actions heat map of log10(cost) (grey where an action does not apply), written as PNG."""
    from torchslim.report import plots

    costs = [[c.cost if c is not None else None for c in (r.cells.get(a) for a in s.actions)] for r in s.rows]
    data = plots.png(plots.heat_map([r.group for r in s.rows], s.actions, costs, s.measure, s.granularity))
    path = Path(path)
    with atomic_file(path, "wb") as f:
        f.write(data)
    return path


def save(s: Sensitivity, folder: str | Path) -> dict[str, Path]:
    """``sensitivity.json``, ``sensitivity.md`` and ``sensitivity.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {"json": folder / "sensitivity.json", "md": folder / "sensitivity.md", "png": folder / "sensitivity.png"}
    with atomic_file(out["json"]) as f:
        f.write(json.dumps(s.to_dict(), indent=1))
    with atomic_file(out["md"]) as f:
        f.write("# Sensitivity\n\n" + to_markdown(s))
    heat_map(s, out["png"])
    return out


def load(path: str | Path) -> Sensitivity:
    from torchslim.core.config import read_mapping

    return Sensitivity.from_dict(read_mapping(path))
