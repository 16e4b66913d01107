"""Structured pruning of MiniLM (all-MiniLM-L6-v2): 40% of the encoder blocks' parameters (heads, then
MLP neurons), embedding fidelity before and after recovery distillation, latency at batch 1 and 32.

Regenerates docs/results/pruning_minilm.md (+ .json).

    python benchmarks/pruning/minilm.py [--steps N]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, artifact_bytes, interleaved, write_table  # noqa: E402

import torchslim  # noqa: E402
from torchslim.pruning.structured import block_params, prune_block_fraction_  # noqa: E402
from torchslim.train import TrainConfig, Trainer  # noqa: E402

warnings.filterwarnings("ignore")
SHAPES = ((1, 128), (32, 128))


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def reloads(m: torch.nn.Module, task) -> bool:
    x = task.example_inputs(2, 32)
    with tempfile.TemporaryDirectory() as d:
        torchslim.save(m, Path(d) / "a")
        r = torchslim.load(Path(d) / "a")
        with torch.inference_mode():
            return torch.allclose(r(**x).last_hidden_state, m(**x).last_hidden_state, atol=1e-5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300, help="recovery distillation steps (batch 32)")
    ap.add_argument("--fraction", type=float, default=0.4)
    args = ap.parse_args()
    loaded = torchslim.load_model("minilm")
    base, task = loaded.model.eval(), loaded.task
    rows, models = [Row("fp32", "unpruned", {"params": n_params(base)})], {"fp32": base}
    for imp in ("magnitude_l2", "wanda", "taylor"):
        m = copy.deepcopy(base)
        t = time.perf_counter()
        prune_block_fraction_(m, args.fraction, importance=imp, calibration=task)
        secs = time.perf_counter() - t
        name = f"{int(args.fraction * 100)}% of block params, {imp}"
        rows.append(Row(name, "one-shot", {"params": n_params(m), "prune s": secs,
                                           "block params removed": f"{1 - block_params(m) / block_params(base):.0%}"}))
        models[name] = m
        print(name, rows[-1].values, flush=True)
    best = max((r for r in rows[1:]), key=lambda r: task.evaluate(models[r.name])["cosine_fidelity"])
    rec = copy.deepcopy(models[best.name])
    t = time.perf_counter()
    Trainer(rec, task, TrainConfig(steps=args.steps, batch_size=32, lr=1e-4, warmup_steps=args.steps // 10,
                                   eval_at_end=False, log_every=50)).fit()
    rec.eval()
    name = f"{best.name} + {args.steps}-step recovery"
    rows.append(Row(name, "distillation to the fp32 embeddings (task loss); "
                    + ("reloads identically" if reloads(rec, task) else "RELOAD MISMATCH"),
                    dict(best.values, **{"recovery s": time.perf_counter() - t})))
    models[name] = rec
    for r in rows:
        q = task.evaluate(models[r.name])
        r.values.update({"cosine fidelity": q["cosine_fidelity"], "min cosine": q["min_cosine"],
                         "nn agreement": q["nn_agreement"],
                         "artifact MB": artifact_bytes(models[r.name], loaded.source) / 1e6})
    for b, s in SHAPES:
        x = task.example_inputs(b, s)
        keep = {k: models[k] for k in ("fp32", name)}
        with torch.inference_mode():
            lat = interleaved({k: (lambda m=m: m(**x)) for k, m in keep.items()}, rounds=9)
        for k in keep:
            r = next(r for r in rows if r.name == k)
            r.values[f"{b}x{s} ms"] = 1e3 * lat[k]
            r.values[f"{b}x{s} speedup"] = f"{lat['fp32'] / lat[k]:.2f}x"
    cols = ["params", "block params removed", "cosine fidelity", "min cosine", "nn agreement", "artifact MB"] + [
        f"{b}x{s} {k}" for b, s in SHAPES for k in ("ms", "speedup")] + ["prune s", "recovery s"]
    write_table(ROOT / "docs/results/pruning_minilm.md", "Structured pruning: MiniLM (all-MiniLM-L6-v2)",
                f"{int(args.fraction * 100)}% of the 6 encoder blocks' parameters removed (attention heads, then MLP "
                "neurons, the same in every block). Cosine fidelity to the unpruned model's normalized mean-pooled "
                "embeddings on 124 GPL-3 sentences; recovery = distillation to those embeddings on the other "
                "license texts with the training engine (batch 32, AdamW lr 1e-4). Latency: medians of 9 "
                "interleaved rounds per shape, ratio to fp32 in the same run. "
                "Regenerate: `python benchmarks/pruning/minilm.py`.",
                cols, rows, ["The 30522x384 word embedding (11.7M of 22.7M parameters) is not pruned, so the "
                             "artifact shrinks less than the blocks do."])


if __name__ == "__main__":
    main()
