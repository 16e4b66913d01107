"""Shared steps of the architecture-search benchmarks: search, the uniform baseline at the same measured latency,
the same recovery for both, an interleaved final timing and quality on held-out data.

The search selects on a validation task (never the reported test data); the uniform baseline keeps the same
fraction of every searched unit (heads and neurons of every block, or every channel group), built from the same
importance scores by the same code, at the widest fraction that meets the same latency constraint (a finer grid
than the search's widths), and is recovered with the search's recovery config.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import Row, write_table  # noqa: E402

from torchslim.search.arch_space import space_of  # noqa: E402
from torchslim.search.latency import end_to_end  # noqa: E402
from torchslim.search.nas import NASConfig, NASResult, feasible, n_params, nas, quiet_build, recover  # noqa: E402
from torchslim.search.nas_report import to_markdown  # noqa: E402

SMOKE = os.environ.get("TORCHSLIM_BENCH_SMOKE") == "1"      # a quick check of the script, not a table
torch.set_num_threads(1)                                   # one core, as the tables say
GRID = [round(0.2 + 0.05 * i, 2) for i in range(16)]       # uniform fractions tried: 0.20 ... 0.95


def uniform_at_constraint(base: nn.Module, task: Any, config: NASConfig, space: Any, scores: Any
                          ) -> tuple[nn.Module, float, list[dict]]:
    """The widest uniform shape meeting ``config``'s constraint (timed like the search's candidates)."""
    tried = []
    for w in sorted(GRID, reverse=True):
        cand = quiet_build(base, space, space.uniform(w), scores)
        ms = end_to_end({"full": base, "cand": cand}, task, config.shape, config.latency_iters)
        speedup = ms["full"] / ms["cand"]
        tried.append({"fraction kept": w, "ms": ms["cand"], "speedup": speedup, "params": n_params(cand)})
        print(f"uniform {w:.2f}: {ms['cand']:.3f} ms, {speedup:.2f}x", flush=True)
        if feasible(config, ms["cand"], speedup):
            return cand, w, tried
    raise SystemExit("no uniform fraction met the constraint")


def recovered_over_seeds(raw: nn.Module, base: nn.Module, search_task: Any, report: dict[str, Any], config: NASConfig,
                         metric: str, seeds: int) -> tuple[nn.Module, dict[str, list[float]]]:
    """``raw`` recovered once per training seed (the same budget each time): the seed-0 model and the quality per
    report domain and seed."""
    out, first = {d: [] for d in report}, None
    for seed in range(seeds):
        rc = dataclasses.replace(config.recover, train=dataclasses.replace(config.recover.train, seed=seed))
        m = recover(copy.deepcopy(raw), base, search_task, rc)
        first = first or m
        for domain, task in report.items():
            out[domain].append(float(task.evaluate(m)[metric]))
        print(f"recovered, seed {seed}: " + ", ".join(f"{d} {v[-1]:.4f}" for d, v in out.items()), flush=True)
    return first, out


def run(base: nn.Module, search_task: Any, report: dict[str, Any], config: NASConfig, metric: str, seeds: int = 1
        ) -> tuple[list[Row], NASResult, dict[str, Any]]:
    """Search, baseline, recovery (``seeds`` training seeds for both the searched and the uniform shape), timing and
    quality; returns the table rows, the search and run facts."""
    t0 = time.perf_counter()
    result = nas(base, search_task, config)
    search_s = time.perf_counter() - t0
    if result.best is None:
        raise SystemExit("the search found no architecture meeting the constraint")
    t0 = time.perf_counter()
    space, scores = space_of(base, search_task, widths=config.widths, min_depth=config.min_depth, heads=config.heads,
                             neurons=config.neurons, selector=config.selector, round_to=config.round_to,
                             n_samples=config.n_importance_samples, importance=config.importance)
    uniform_raw, w, tried = uniform_at_constraint(base, search_task, config, space, scores)
    searched_raw = quiet_build(base, space, result.best.shape, scores)
    searched, q_searched = recovered_over_seeds(searched_raw, base, search_task, report, config, metric, seeds)
    uniform, q_uniform = recovered_over_seeds(uniform_raw, base, search_task, report, config, metric, seeds)
    compare_s = time.perf_counter() - t0
    u = f"uniform {w:.2f}"
    models = {"full model": base, "searched, recovered": searched, f"{u}, recovered": uniform,
              "searched, no recovery": searched_raw, f"{u}, no recovery": uniform_raw}
    per_seed = {"searched, recovered": q_searched, f"{u}, recovered": q_uniform}
    b, s = config.shape
    ms = end_to_end({k: models[k] for k in list(models)[:3]}, search_task, config.shape, 4 * config.latency_iters)
    rows = []
    for name, m in models.items():
        v: dict[str, Any] = {"params": n_params(m)}
        if name in ms:
            v.update({f"{b}x{s} ms" if s else f"batch {b} ms": ms[name],
                      "speed-up": f"{ms['full model'] / ms[name]:.2f}x"})
        for domain, task in report.items():
            got = per_seed[name][domain] if name in per_seed else [float(task.evaluate(m)[metric])]
            v[f"{metric} {domain}"] = statistics.mean(got)
        if name in per_seed:
            first = next(iter(report))
            v[f"{first} per seed"] = " / ".join(f"{x:.4g}" for x in per_seed[name][first])
        rows.append(Row(name, "", v))
    rows[1].note = rows[3].note = f"trial {result.best.number}: {result.best.shape.label()}"
    rows[2].note = rows[4].note = f"every searched unit keeps {w:.0%}"
    facts = {"search s": search_s, "uniform s": compare_s, "uniform tried": tried, "seeds": seeds,
             "validation": {"searched": result.best.quality}, "per seed": per_seed}
    return rows, result, facts


Part = tuple[str, list[Row], NASResult, dict[str, Any]]


def write(out: Path, title: str, intro: str, parts: list[Part], notes: list[str]) -> None:
    """The comparison table of every constraint (+ .json), then each search's trials."""
    rows = [Row(f"{label}: {r.name}" if label else r.name, r.note, r.values) for label, rs, _, _ in parts for r in rs]
    cols = list(dict.fromkeys(c for r in rows for c in r.values))
    threads = torch.get_num_threads()
    notes = notes + ["; ".join(f"{label or 'search'}: search {f['search s']:.0f} s, comparison {f['uniform s']:.0f} s "
                               f"(uniform sweep, then both shapes recovered with {f['seeds']} seed(s))"
                               for label, _, _, f in parts)
                     + f"; {threads} thread(s), pinned to one core at nice 19 on a machine shared with other work: "
                     "latencies are medians of interleaved runs, the ratios being the robust figures.",
                     "Recovered rows: mean over the training seeds (the per-seed column lists the first domain); the "
                     "timing uses the seed-0 model."]
    write_table(out, title, intro, cols, rows, notes)
    with out.open("a") as f:
        for label, _, result, facts in parts:
            f.write(f"\n## Search trials{': ' + label if label else ''}\n\n" + to_markdown(result))
            f.write("\nUniform fractions timed for the baseline (widest meeting the constraint used): "
                    + ", ".join(f"{t['fraction kept']:.2f}: {t['speedup']:.2f}x" for t in facts["uniform tried"])
                    + ".\n")
    data = [{"label": label, "rows": [{"name": r.name, "note": r.note, **r.values} for r in rs],
             "search": result.to_dict(), "facts": facts} for label, rs, result, facts in parts]
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
