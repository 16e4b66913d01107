"""An architecture search's trials as files: a Markdown table (with the machine the latencies come from) and JSON."""
from __future__ import annotations

import json
from pathlib import Path

from torchslim.core.io import atomic_file
from torchslim.search.nas import NASResult


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "" if v is None else format(v, spec)


def to_markdown(r: NASResult) -> str:
    """Every trial, the chosen one marked, with the constraint, the full model's figures and the proxy check."""
    from torchslim.runtime.machine import machine_line

    c = r.config
    cons = " and ".join(x for x in (f"<= {c.max_latency_ms} ms" if c.max_latency_ms is not None else "",
                                    f">= {c.min_speedup}x" if c.min_speedup is not None else "") if x)
    shape = f"{c.shape[0]}x{c.shape[1]}" if c.shape[1] else f"batch {c.shape[0]}"
    rho = "not computed (fewer than 3 recovered)" if r.proxy_spearman is None else f"{r.proxy_spearman:.3f}"
    lines = [f"Constraint: {cons} at {shape}; full model {r.base_ms:.3f} ms (median), {r.base_params} parameters"
             + (f", {r.metric} {r.base_quality:.4g}" if r.base_quality is not None else "") + ".",
             f"Proxy (output divergence from the full model right after pruning, lower is better) against recovered "
             f"{r.metric}: Spearman {rho}.", f"Machine: {machine_line(r.machine or None)}.", "",
             f"| trial | origin | shape | params | ms | speed-up | meets constraint | proxy | recovered {r.metric} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in r.trials:
        mark = " (chosen)" if r.best is not None and t.number == r.best.number else ""
        lines.append(f"| {t.number}{mark} | {t.origin} | {t.shape.label()} | {t.params} | {t.latency_ms:.3f} | "
                     f"{t.speedup:.2f}x | {'yes' if t.feasible else 'no'} | {t.proxy:.4g} | {_fmt(t.quality)} |")
    return "\n".join(lines) + "\n"


def save(r: NASResult, path: str | Path) -> Path:
    """Write ``path`` (``.md``) and the same name with ``.json``; returns the Markdown path."""
    path = Path(path).with_suffix(".md")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write(to_markdown(r))
    with atomic_file(path.with_suffix(".json")) as f:
        json.dump(r.to_dict(), f, indent=1, default=str)
    return path
