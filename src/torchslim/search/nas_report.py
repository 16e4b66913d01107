"""An architecture search's trials as files: a Markdown table (with the machine the latencies come from) and JSON."""
from __future__ import annotations

import json
from pathlib import Path

from torchslim.core.io import atomic_file
from torchslim.search.nas import NASResult


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "" if v is None else format(v, spec)


def _constraint(r: NASResult) -> str:
    c = r.config
    parts = [f"<= {c.max_latency_ms} ms" if c.max_latency_ms is not None else "",
             f">= {c.min_speedup}x" if c.min_speedup is not None else ""]
    shape = f"{c.shape[0]}x{c.shape[1]}" if c.shape[1] else f"batch {c.shape[0]}"
    cons = " and ".join(x for x in parts if x)
    cons = f"{cons} at {shape}" if cons else ""
    if r.param_budget is not None:
        cons = " and ".join(x for x in (cons, f"<= {r.param_budget} parameters "
                                               f"({r.param_budget / r.base_params:.1%} of the full model)") if x)
    return cons


def to_markdown(r: NASResult) -> str:
    """Every trial, the chosen one marked, with the constraint, the full model's figures and the proxy check."""
    from torchslim.runtime.machine import machine_line

    rho = "not computed (fewer than 3 recovered)" if r.proxy_spearman is None else f"{r.proxy_spearman:.3f}"
    full = (f"{r.base_ms:.3f} ms (median), " if r.base_ms is not None else "") + f"{r.base_params} parameters"
    lines = [f"Constraint: {_constraint(r)}; full model {full}"
             + (f", {r.metric} {r.base_quality:.4g}" if r.base_quality is not None else "") + "."]
    if r.param_budget is not None:
        met = r.n_drawn - r.n_over_budget - r.n_under_use
        floor = f", {r.n_under_use} below {r.config.min_param_use:.0%} of it" if r.config.min_param_use > 0 else ""
        lines.append(f"Parameter budget: {met} of the {r.n_drawn} shapes built met it ({r.n_over_budget} over it"
                     f"{floor}; those were neither timed nor scored).")
    lines += [f"Proxy (output divergence from the full model right after pruning, lower is better) against recovered "
              f"{r.metric}: Spearman {rho}.", f"Machine: {machine_line(r.machine or None)}.", "",
              f"| trial | origin | shape | params | ms | speed-up | meets constraint | proxy | recovered {r.metric} |",
              "|---|---|---|---|---|---|---|---|---|"]
    for t in r.trials:
        mark = " (chosen)" if r.best is not None and t.number == r.best.number else ""
        ms = "–" if t.latency_ms is None else f"{t.latency_ms:.3f}"
        sp = "–" if t.speedup is None else f"{t.speedup:.2f}x"
        if t.confirmed_speedup is not None:
            sp += f" (again: {t.confirmed_speedup:.2f}x)"
        lines.append(f"| {t.number}{mark} | {t.origin} | {t.shape.label()} | {t.params} | {ms} | {sp} | "
                     f"{'yes' if t.feasible else 'no'} | {t.proxy:.4g} | {_fmt(t.quality)} |")
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
