"""Distillation on MiniLM (all-MiniLM-L6-v2): a 3-block student made from the 6-block model (evenly spaced
blocks kept), and the 40%-structured model, each distilled from the uncompressed model.

Both are trained on the broad calibration sentences (license texts + Python's reference topics, disjoint from
the GPL-3 evaluation sentences) with the output-embedding, block-output and attention-relation losses; cosine
fidelity to the uncompressed model's embeddings on the GPL-3 sentences; latency at 1x128 and 32x128 timed
interleaved against fp32 in the same run. Regenerates docs/results/recovery_minilm.md (+ .json).

    python benchmarks/recovery/minilm.py [--steps 600]
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Row, artifact_bytes, interleaved, write_table  # noqa: E402
from common_train import timed  # noqa: E402

import torchslim  # noqa: E402
from torchslim import DistillConfig, ReconstructConfig, StructuredConfig, TrainConfig  # noqa: E402
from torchslim.data import text as text_data  # noqa: E402
from torchslim.pruning.structured import prune_block_fraction_  # noqa: E402
from torchslim.tasks.embedding import SentenceEmbeddingTask  # noqa: E402

warnings.filterwarnings("ignore")
SHAPES = ((1, 128), (32, 128))
OUT = ROOT / "docs/results/recovery_minilm.md"


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def distill(student, teacher, task, steps: int, lr: float, values: dict) -> None:
    cfg = DistillConfig(output_weight=1.0, hidden_weight=1.0, relation_weight=1.0,
                        train=TrainConfig(steps=steps, batch_size=32, lr=lr, warmup_steps=steps // 10,
                                          max_grad_norm=1.0, eval_at_end=False, log_every=50, seed=0))
    with timed(values, steps, 32):
        torchslim.distill_(student, cfg, task=task, teacher=teacher)
    student.eval()


def reconstruct(student, teacher, task, steps: int, values: dict) -> None:
    """Block-wise first: each student block learns the teacher's hidden state at its depth on cached inputs."""
    cfg = ReconstructConfig(steps=steps, n_samples=512, batch_size=16, lr=2e-4)
    with timed(values, steps * 6, 16):
        torchslim.distill_(student, cfg, task=task, teacher=teacher)
    student.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=600, help="distillation steps (batch 32)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--block-steps", type=int, default=200, help="block-wise steps per block (batch 16)")
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = torchslim.load_model("minilm")
    base = loaded.model.eval()
    train_sentences = text_data.sentences("broad-calibration")
    task = SentenceEmbeddingTask(loaded.task.tokenizer, base, calibration_sentences=train_sentences)
    rows = [Row("fp32 (6 blocks)", "uncompressed teacher", {"params": n_params(base)})]
    models = {rows[0].name: base}

    shallow = copy.deepcopy(base)
    torchslim.prune_(shallow, StructuredConfig(targets=["layers"], ratio=0.5, importance="uniform"))
    models["3 blocks kept, no training"] = copy.deepcopy(shallow).eval()
    rows.append(Row("3 blocks kept, no training", "evenly spaced blocks kept, first and last included",
                    {"params": n_params(shallow)}))
    blockwise = copy.deepcopy(shallow)
    values: dict = {"params": n_params(shallow)}
    reconstruct(blockwise, base, task, args.block_steps, values)
    models["3-block student, block-wise"] = copy.deepcopy(blockwise)
    rows.append(Row("3-block student, block-wise", f"{args.block_steps} steps per block: each block learns the "
                    "teacher's hidden state at its depth (blocks 1, 3, 5)", dict(values)))
    values = {"params": n_params(shallow)}
    distill(blockwise, base, task, args.steps, args.lr, values)
    models["3-block student, block-wise + distilled"] = blockwise
    rows.append(Row("3-block student, block-wise + distilled", f"then {args.steps} distillation steps", values))
    values = {"params": n_params(shallow)}
    distill(shallow, base, task, args.steps, args.lr, values)
    models["3-block student, distilled"] = shallow
    rows.append(Row("3-block student, distilled", f"{args.steps} steps: embedding cosine + block MSE + last-block "
                    "attention relations", values))

    narrow = copy.deepcopy(base)
    prune_block_fraction_(narrow, 0.4, importance="taylor", calibration=loaded.task)
    models["40% structured, no training"] = copy.deepcopy(narrow).eval()
    rows.append(Row("40% structured, no training", "heads then MLP neurons, Taylor", {"params": n_params(narrow)}))
    blockwise = copy.deepcopy(narrow)
    values = {"params": n_params(narrow)}
    reconstruct(blockwise, base, task, args.block_steps, values)
    models["40% structured, block-wise"] = copy.deepcopy(blockwise)
    rows.append(Row("40% structured, block-wise", f"{args.block_steps} steps per block", dict(values)))
    values = {"params": n_params(narrow)}
    distill(blockwise, base, task, args.steps, args.lr, values)
    models["40% structured, block-wise + distilled"] = blockwise
    rows.append(Row("40% structured, block-wise + distilled", f"then {args.steps} distillation steps", values))
    values = {"params": n_params(narrow)}
    distill(narrow, base, task, args.steps, args.lr, values)
    models["40% structured, distilled"] = narrow
    rows.append(Row("40% structured, distilled", f"{args.steps} steps, same losses", values))

    for r in rows:
        q = loaded.task.evaluate(models[r.name])
        r.values.update({"cosine fidelity": q["cosine_fidelity"], "nn agreement": q["nn_agreement"],
                         "artifact MB": artifact_bytes(models[r.name], loaded.source) / 1e6})
        print(r, flush=True)
    timed_names = [rows[0].name, "3-block student, distilled", "3-block student, block-wise + distilled",
                   "40% structured, distilled", "40% structured, block-wise + distilled"]
    for b, s in SHAPES:
        x = loaded.task.example_inputs(b, s)
        with torch.inference_mode():
            lat = interleaved({k: (lambda m=models[k]: m(**x)) for k in timed_names}, rounds=9)
        for k in timed_names:
            r = next(r for r in rows if r.name == k)
            r.values[f"{b}x{s} ms"] = 1e3 * lat[k]
            r.values[f"{b}x{s} speedup"] = f"{lat[rows[0].name] / lat[k]:.2f}x"
    cols = ["params", "cosine fidelity", "nn agreement", "artifact MB"] + [
        f"{b}x{s} {k}" for b, s in SHAPES for k in ("ms", "speedup")] + ["train s", "peak MB", "samples seen"]
    write_table(OUT, "Distillation: MiniLM (all-MiniLM-L6-v2)",
                "Cosine fidelity to the uncompressed model's normalized mean-pooled embeddings on the 124 GPL-3 "
                f"sentences (never trained on). Training: {len(train_sentences)} sentences of the broad calibration "
                "text (license texts + Python reference topics), batch 32, AdamW, cosine schedule. Latency: medians "
                "of 9 interleaved rounds, ratio to fp32 in the same run. "
                "Regenerate: `python benchmarks/recovery/minilm.py`.", cols, rows,
                ["The 30522x384 word embedding (11.7M of 22.7M parameters) is kept whole, so artifacts shrink "
                 "less than the blocks do."])


if __name__ == "__main__":
    main()
