"""CSR sparse matmul vs dense fp32 ``F.linear`` on CPU, for SmolLM2-135M's linear shapes.

For each shape (in -> out), sparsity and token count, both kernels compute ``y = x @ W.T`` for a
random fp32 weight with a random unstructured mask (exactly ``round(numel * sparsity)`` zeros):

* dense: ``F.linear(x, W)`` with the zeros stored densely;
* csr:   :func:`torchslim.pruning.sparse_linear.csr_linear` (``torch.sparse.mm(W_csr, x.T).T``, int32
  indices), exactly what ``SparseLinear`` runs in eval mode with the CSR kernel.

Each variant is timed as an inner loop of calls lasting about 1 ms, variants round-robin in one
process (``common.interleaved``), median of ``--rounds`` rounds; at torch's default thread count, then
at 1 thread. The share of the CPUs that other processes used meanwhile is recorded. A first
table compares CSR formulations (which way round to multiply, index width) on two shapes, at 1 thread. The
``CSR_FASTER_AT`` table in ``src/torchslim/pruning/sparse_linear.py`` is read off the 1-token rows.

    python benchmarks/pruning/csr_kernel.py [--rounds 41] [--no-lm-head] [--threads N ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, interleaved, machine_line, write_table  # noqa: E402

from torchslim.pruning.masks import layer_mask  # noqa: E402
from torchslim.pruning.sparse_format import torch_csr as csr_weight  # noqa: E402
from torchslim.pruning.sparse_linear import csr_linear  # noqa: E402

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
SHAPES = [(576, 576), (576, 1536), (1536, 576)]  # (in, out): attention projections, MLP up/gate, MLP down
LM_HEAD = (576, 49152)
SPARSITIES = (0.5, 0.75, 0.85, 0.9, 0.95, 0.98)
TOKENS = (1, 32)
TARGET_S = 1e-3
OUT = ROOT / "docs/results/pruning_csr_kernel.md"


def sparse_weight(in_f: int, out_f: int, sparsity: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    mask = layer_mask(torch.rand(out_f, in_f, generator=g), sparsity)
    return w * mask, mask


def looped(fn: Callable[[], Any], reps: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(reps):
            fn()
    return run


def time_us(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median µs per call of each fn, interleaved; each fn's inner loop lasts about TARGET_S."""
    reps = {}
    for k, fn in fns.items():
        fn()
        t = time.perf_counter()
        fn()
        reps[k] = max(1, int(TARGET_S / max(time.perf_counter() - t, 1e-7)))
    med = interleaved({k: looped(fn, reps[k]) for k, fn in fns.items()}, rounds=rounds)
    return {k: 1e6 * v / reps[k] for k, v in med.items()}


def formulations(rounds: int) -> list[dict[str, Any]]:
    """Ways to compute x @ W.T with a CSR weight, against dense; all checked against dense first."""
    rows = []
    for (in_f, out_f), sp in (((576, 1536), 0.9), ((576, 576), 0.95)):
        w, mask = sparse_weight(in_f, out_f, sp)
        w32 = csr_weight(w, mask, torch.float32)
        w64 = w.to_sparse_csr()  # int64 indices
        wt = w.t().contiguous().to_sparse_csr()  # W.T [in, out] as CSR, for x @ W.T directly
        for tok in TOKENS:
            x = torch.randn(tok, in_f)
            fns = {
                "dense F.linear(x, W)": lambda: F.linear(x, w),
                "sparse.mm(W, x.T).T, int32 idx (used)": lambda: csr_linear(x, w32, None),
                "sparse.mm(W, x.T).T, int64 idx": lambda: torch.sparse.mm(w64, x.t()).t(),
                "(W @ x.T).T, int32 idx": lambda: (w32 @ x.t()).t(),
                "x @ W.T with W.T as CSR": lambda: x @ wt,
                "F.linear(x, W_csr)": lambda: F.linear(x, w32),
            }
            ref = F.linear(x, w)
            for name, fn in fns.items():
                assert torch.allclose(fn(), ref, atol=1e-4, rtol=1e-4), name
            us = time_us(fns, rounds)
            for name, v in us.items():
                rows.append({"shape": f"{in_f}->{out_f}", "sparsity": sp, "tokens": tok, "formulation": name,
                             "us": round(v, 1), "vs dense": round(us["dense F.linear(x, W)"] / v, 2)})
            print(f"formulations {in_f}->{out_f} {sp:.0%} tokens={tok}: "
                  + ", ".join(f"{k}={v:.0f}" for k, v in us.items()), flush=True)
    return rows


def kernel_rows(shapes: list[tuple[int, int]], rounds: int, threads: int) -> list[Row]:
    rows = []
    for in_f, out_f in shapes:
        for sp in SPARSITIES:
            w, mask = sparse_weight(in_f, out_f, sp)
            w_csr = csr_weight(w, mask, torch.float32)
            for tok in TOKENS:
                x = torch.randn(tok, in_f)
                assert torch.allclose(csr_linear(x, w_csr, None), F.linear(x, w), atol=1e-4, rtol=1e-4)
                us = time_us({"dense": lambda: F.linear(x, w), "csr": lambda: csr_linear(x, w_csr, None)}, rounds)
                values = {"sparsity": f"{sp:.0%}", "tokens": tok, "threads": threads,
                          "dense µs": round(us["dense"], 1), "csr µs": round(us["csr"], 1),
                          "speedup": round(us["dense"] / us["csr"], 2)}
                rows.append(Row(f"{in_f}->{out_f}", "", values))
                print(f"{in_f}->{out_f} {sp:.0%} tokens={tok} threads={threads}: dense {us['dense']:.0f} µs, "
                      f"csr {us['csr']:.0f} µs, x{values['speedup']}", flush=True)
            del w, mask, w_csr
    return rows


def thresholds(rows: list[Row], threads: int) -> list[dict[str, Any]]:
    """Per sparsity, the slowest 1-token CSR speedup over the decoder-block shapes."""
    block = {f"{i}->{o}" for i, o in SHAPES}
    out = []
    for sp in SPARSITIES:
        sel = [r.values["speedup"] for r in rows if r.name in block and r.values["tokens"] == 1
               and r.values["threads"] == threads and r.values["sparsity"] == f"{sp:.0%}"]
        out.append({"threads": threads, "sparsity": sp, "min speedup": min(sel)})
    return out


def cpu_seconds() -> tuple[float, float, float]:
    """(all CPUs' busy seconds, all CPUs' total seconds, this process's CPU seconds) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    idle = fields[3] + fields[4]
    t = os.times()
    return (sum(fields) - idle) / tick, sum(fields) / tick, t.user + t.system


def measure(threads: int, shapes: list[tuple[int, int]], rounds: int) -> tuple[list[Row], str]:
    """Kernel rows at ``threads`` and a note on how busy the other processes kept the CPUs meanwhile."""
    torch.set_num_threads(threads)
    b0, t0, own0 = cpu_seconds()
    rows = kernel_rows(shapes, rounds, threads)
    b1, t1, own1 = cpu_seconds()
    others = max(0.0, (b1 - b0) - (own1 - own0)) / max(t1 - t0, 1e-9)
    return rows, f"{threads} thread(s): other processes kept {others:.0%} of the {os.cpu_count()} CPUs busy"


def write_results(rows: list[Row], forms: list[dict[str, Any]], summary: list[dict[str, Any]],
                  notes: list[str]) -> None:
    write_table(OUT, "Pruning: CSR sparse matmul vs dense fp32 F.linear (CPU)",
                "SmolLM2-135M linear shapes (in->out), one token (decode) and 32 tokens.",
                ["sparsity", "tokens", "threads", "dense µs", "csr µs", "speedup"], rows, notes)
    text = OUT.read_text().replace("| variant |", "| shape (in->out) |", 1)
    lines = ["## CSR formulations (1 thread)", "", "| shape | sparsity | tokens | formulation | µs | vs dense |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['sparsity']:.0%} | {r['tokens']} | {r['formulation']} | {r['us']} | "
              f"{r['vs dense']} |" for r in forms]
    OUT.write_text(text + "\n".join(lines) + "\n")
    OUT.with_suffix(".json").write_text(json.dumps({
        "machine": machine_line(), "kernel": [{"shape": r.name, **r.values} for r in rows],
        "formulations": forms, "thresholds": summary, "notes": notes}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--no-lm-head", action="store_true", help="skip the 576->49152 output head shape")
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads(), 1],
                    help="thread counts to measure (default: torch's default, then 1)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    shapes = SHAPES + ([] if args.no_lm_head else [LM_HEAD])
    threads, default = list(dict.fromkeys(args.threads)), torch.get_num_threads()
    torch.set_num_threads(1)  # formulations: at 1 thread, which other processes' load disturbs least
    forms = formulations(args.rounds)
    rows, busy = [], []
    for n in threads:
        r, note = measure(n, shapes, args.rounds)
        rows += r
        busy.append(note)
    torch.set_num_threads(default)  # the machine line reports torch's default
    summary = [s for n in threads for s in thresholds(rows, n)]
    notes = [
        "speedup = dense µs / csr µs (> 1: CSR faster). Weights fp32, no bias, random unstructured masks.",
        "dense = F.linear(x, W) with zeros stored densely; csr = torch.sparse.mm(W_csr, x.T).T with int32 "
        "indices (torchslim.pruning.sparse_linear.csr_linear). Median of interleaved rounds, inner loops of ~1 ms.",
        "Slowest 1-token speedup over the decoder-block shapes, by sparsity: " + "; ".join(
            f"{s['threads']} thr {s['sparsity']:.0%}: {s['min speedup']}x" for s in summary) + ".",
        "SparseLinear's AUTO kernel (CSR_FASTER_AT in src/torchslim/pruning/sparse_linear.py) picks CSR only "
        "at a thread count and from a sparsity where every shape of that size measured faster at 1 token.",
        "When other processes keep the CPUs busy, CSR at > 1 thread can stall for a scheduler slice (milliseconds "
        "per call) while dense F.linear does not; compare the two thread counts and the load line below.",
        "Machine load during the run (timings of a busy machine are inflated, most at > 1 thread): "
        + "; ".join(busy) + ".",
        f"Run time {time.perf_counter() - t0:.0f} s; python benchmarks/pruning/csr_kernel.py.",
    ]
    write_results(rows, forms, summary, notes)
    print(f"wrote {OUT} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
