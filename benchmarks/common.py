"""Shared benchmark helpers: variants measured side by side in one process, interleaved, as ratios."""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    name: str
    note: str = ""
    values: dict[str, Any] = field(default_factory=dict)


def machine_line() -> str:
    """CPU, ISA features (AVX2 / AVX512-VNNI / AMX decide the kernels), threads, torch, and the date."""
    from torchslim.runtime.machine import machine_line as line

    return f"{line()}, {time.strftime('%Y-%m-%d')}"


def artifact_bytes(model: torch.nn.Module, source: dict | None = None) -> int:
    import torchslim

    with tempfile.TemporaryDirectory() as d:
        path = torchslim.save(model, Path(d) / "a", source=source)
        return sum(p.stat().st_size for p in path.iterdir())


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int = 5, settle_s: float = 0.0,
                warm_calls: int = 0) -> dict[str, float]:
    """Median seconds per call of each function, calling them round-robin ``rounds`` times.

    ``settle_s``: an untimed pause before each call. ONNX Runtime's worker threads spin for a while after a
    run; without a pause the next variant (whichever it is) shares the cores with them. ``warm_calls``:
    untimed calls of the same variant right before each timed one, so each is timed in steady state (its
    weights in cache) rather than cold after the other variants evicted them."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            if settle_s:
                time.sleep(settle_s)
            for _ in range(warm_calls):
                fn()
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def write_table(path: Path, title: str, intro: str, columns: list[str], rows: list[Row], notes: list[str]) -> None:
    lines = [f"# {title}", "", intro, "", f"Machine: {machine_line()}", "",
             "| variant | " + " | ".join(columns) + " | notes |", "|" + "---|" * (len(columns) + 2)]
    for r in rows:
        cells = [_fmt(r.values.get(c)) for c in columns]
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {r.note} |")
    lines += [""] + [f"- {n}" for n in notes] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps([{"name": r.name, "note": r.note, **r.values} for r in rows], indent=1, default=str))


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def write_checks(path: Path, title: str, checks: list[tuple[str, str, bool | None, str]]) -> None:
    """A target-check table (target, measured, met, what was tried for a miss) with the machine line; printed too."""
    lines = [f"# {title}", "", f"Machine: {machine_line()}", "",
             "| target | measured | met | what was tried (for a miss) |", "|---|---|---|---|"]
    for target, got, ok, tried in checks:
        lines.append(f"| {target} | {got} | {'yes' if ok else 'NO'} | {'' if ok else tried} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
