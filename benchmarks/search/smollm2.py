"""Sensitivity of SmolLM2-135M, block by block, to three action types (issue 22), and how well its cheap proxy
(by default the block-local one: each block's relative output error on its cached calibration inputs) agrees with
end-to-end perplexity.

Writes docs/results/search_sensitivity_smollm2.{md,json,png}. The scan's wall time is a target (<= 15 minutes on
2 cores); the proxy check applies each action to a subset of blocks, one at a time, and measures perplexity on the
evaluation text (GPL-3) and on the Python reference text, then reports Spearman's rank correlation between the
proxy and each perplexity increase.

    python benchmarks/search/smollm2.py [--actions int4g128,sparse50,svd20] [--samples 4] [--check-blocks 8]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, machine_line  # noqa: E402

import torchslim  # noqa: E402
from torchslim.core.select import Selector  # noqa: E402
from torchslim.data.text import pydoc_text  # noqa: E402
from torchslim.search import parse_actions, sensitivity, to_markdown  # noqa: E402
from torchslim.search.report import UNITS, heat_map  # noqa: E402
from torchslim.tasks.causal_lm import CausalLMTask  # noqa: E402

RES = ROOT / "docs/results"


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for pos, i in enumerate(order):
            r[i] = float(pos)
        return r
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--actions", default="int4g128,sparse50,svd20")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--measure", default="block", help="block (the block-local proxy) or kl (end to end)")
    ap.add_argument("--check-blocks", type=int, default=8)
    ap.add_argument("--windows", type=int, default=12, help="evaluation windows per text in the proxy check")
    args = ap.parse_args()
    loaded = torchslim.load_model("smollm2-135m")
    model, task = loaded.model.eval(), loaded.task
    actions = parse_actions(args.actions)
    t0 = time.perf_counter()
    scan = sensitivity(model, task, actions, granularity="block", n_samples=args.samples, measure=args.measure)
    scan_s = time.perf_counter() - t0
    print(to_markdown(scan, top=10), flush=True)
    (RES / "search_sensitivity_smollm2.scan.json").write_text(json.dumps(   # kept if the check below is stopped
        {"machine": machine_line(), "load_average": list(os.getloadavg()), "scan_s": scan_s, "scan": scan.to_dict()}))

    blocks = [r.group for r in scan.rows if r.group.startswith("model.layers.")]
    step = max(1, len(blocks) // args.check_blocks)
    picked = blocks[::step][: args.check_blocks]
    rule = Selector(include=tuple(f"re:{b.replace('.', '[.]')}[.].*" for b in picked))
    task.max_eval_windows = args.windows
    pydoc = CausalLMTask(loaded.tokenizer, seq_len=task.seq_len, max_eval_windows=args.windows,
                         eval_text=pydoc_text(True))
    t1 = time.perf_counter()
    e2e = {name: sensitivity(model, t, actions, granularity="block", layers=rule, measure="task")
           for name, t in (("GPL-3", task), ("Python reference", pydoc))}
    check_s = time.perf_counter() - t1
    kl = {(r.group, a): r.cells[a].cost for r in scan.rows for a in scan.actions}
    agreement = {}
    for name, res in e2e.items():
        pairs = [(kl[(r.group, a)], r.cells[a].cost) for r in res.rows for a in res.actions
                 if r.cells[a].cost is not None and kl.get((r.group, a)) is not None]
        agreement[name] = {"spearman": spearman([p[0] for p in pairs], [p[1] for p in pairs]), "points": len(pairs)}
    load = list(os.getloadavg())
    doc = {"machine": machine_line(), "load_average": load, "scan_s": scan_s, "check_s": check_s, "actions": scan.actions,
           "samples": args.samples, "seq_len": task.seq_len, "check_blocks": picked, "windows": args.windows,
           "agreement": agreement, "scan": scan.to_dict(),
           "e2e": {k: v.to_dict() for k, v in e2e.items()}}
    (RES / "search_sensitivity_smollm2.json").write_text(json.dumps(doc, indent=1))
    heat_map(scan, RES / "search_sensitivity_smollm2.png")
    lines = ["# Sensitivity of SmolLM2-135M, block by block", "",
             f"Machine: {machine_line()}", "",
             f"Actions {', '.join(scan.actions)} on each of {len(scan.rows)} groups alone (each transformer block's "
             f"linear layers together; the output head apart): {len(scan.rows) * len(scan.actions)} trials in "
             f"**{scan_s / 60:.1f} min**, measured on {args.samples} calibration windows of {task.seq_len} tokens "
             f"(cost: {UNITS[scan.measure]}). Load average (1/5/15 min) at the "
             f"end: {', '.join(f'{x:.1f}' for x in load)} on 2 cores: other jobs shared the CPU when it exceeds 2.", "",
             "![heat map](search_sensitivity_smollm2.png)", "",
             "## Does the proxy rank blocks as end-to-end perplexity does?", "",
             f"{len(picked)} blocks ({', '.join(b.rsplit('.', 1)[1] for b in picked)}) x {len(scan.actions)} "
             f"actions, each alone, perplexity on {args.windows} windows of each text ({check_s / 60:.1f} min):", "",
             f"| text | Spearman rank correlation ({scan.measure} proxy vs perplexity increase) | points |", "|---|---|---|"]
    for name, a in agreement.items():
        lines.append(f"| {name} | {a['spearman']:.2f} | {a['points']} |")
    lines += ["", "## The scan", "", to_markdown(scan)]
    (RES / "search_sensitivity_smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:20]))


if __name__ == "__main__":
    main()
