"""Low-rank factorization on MiniLM (all-MiniLM-L6-v2): 30% of the encoder's linear weights removed by plain and
whitened SVD, then recovered by distillation from the uncompressed model; cosine fidelity on two domains and
latency against the dense model, timed interleaved in the same run.

Calibration (whitening statistics) and training use the mixed-calibration sentences (license calibration text +
standard-library docstrings: the source of neither evaluation text). Fidelity: the 124 GPL-3 evaluation sentences
and 124 sentences of Python's held-out reference topics. Regenerates docs/results/lowrank_minilm.md (+ .json);
benchmarks/lowrank/targets.py reads it.

    python benchmarks/lowrank/minilm.py [--ratio 0.3] [--steps 600]
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recovery"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
from common import ROOT, Row, artifact_bytes, interleaved, write_table  # noqa: E402
from common_rt import pydoc_sentences  # noqa: E402
from common_train import timed  # noqa: E402

import torchslim  # noqa: E402
from torchslim import DistillConfig, TrainConfig  # noqa: E402
from torchslim.data import text as text_data  # noqa: E402
from torchslim.lowrank import LowRankConfig, Method  # noqa: E402
from torchslim.tasks.embedding import SentenceEmbeddingTask  # noqa: E402

warnings.filterwarnings("ignore")
OUT = ROOT / "docs/results/lowrank_minilm.md"
SHAPES = ((1, 128), (32, 128))


def linear_params(m: torch.nn.Module) -> int:
    """Weights of the encoder's linear layers, factorized or not (what the ratio is a share of)."""
    return sum(p.numel() for n, p in m.named_parameters() if n.startswith("encoder.") and p.dim() == 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=600, help="distillation steps (batch 32)")
    ap.add_argument("--lr", type=float, default=3e-4)
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = torchslim.load_model("minilm")
    base, tok = loaded.model.eval(), loaded.task.tokenizer
    train = text_data.sentences("mixed-calibration")
    task = SentenceEmbeddingTask(tok, base, calibration_sentences=train)
    evals = {"GPL-3": loaded.task, "pydoc": SentenceEmbeddingTask(tok, base, eval_sentences=pydoc_sentences())}
    pct = f"{args.ratio:.0%}"
    models: dict[str, torch.nn.Module] = {"fp32 (dense)": base}
    notes = {"fp32 (dense)": "uncompressed"}
    values: dict[str, dict] = {"fp32 (dense)": {}}
    for method, label in ((Method.SVD, "plain SVD"), (Method.ASVD, "ASVD"), (Method.WHITEN, "whitened SVD")):
        m = copy.deepcopy(base)
        torchslim.factorize_(m, LowRankConfig(method=method, ratio=args.ratio, measure_speed=False), calibration=task)
        name = f"{label} {pct}"
        models[name], notes[name], values[name] = m.eval(), f"training-free, {pct} of the linear weights", {}
    student = copy.deepcopy(models[f"whitened SVD {pct}"])
    cfg = DistillConfig(output_weight=1.0, hidden_weight=1.0, relation_weight=1.0,
                        train=TrainConfig(steps=args.steps, batch_size=32, lr=args.lr, warmup_steps=args.steps // 10,
                                          max_grad_norm=1.0, eval_at_end=False, log_every=50, seed=0))
    name = f"whitened SVD {pct} + distillation"
    values[name] = {"steps": args.steps}
    with timed(values[name], args.steps, 32):
        torchslim.distill_(student, cfg, task=task, teacher=base)
    models[name], notes[name] = student.eval(), (f"{args.steps} steps, batch 32: embedding cosine + block MSE + "
                                                 f"last-block attention relations, AdamW lr {args.lr:g}, cosine")
    rows = []
    for n, m in models.items():
        v = values[n]
        v["linear params"] = linear_params(m)
        v["removed"] = f"{1 - v['linear params'] / linear_params(base):.1%}"
        for dom, t in evals.items():
            v[f"fidelity {dom}"] = t.evaluate(m)["cosine_fidelity"]
        v["artifact MB"] = artifact_bytes(m, loaded.source) / 1e6
        rows.append(Row(n, notes[n], v))
        print(rows[-1], flush=True)
    timed_names = ["fp32 (dense)", f"whitened SVD {pct} + distillation"]
    for b, s in SHAPES:
        x = loaded.task.example_inputs(b, s)
        with torch.inference_mode():
            lat = interleaved({k: (lambda m=models[k]: m(**x)) for k in timed_names}, rounds=9)
        for r in rows:
            if r.name in lat:
                r.values[f"{b}x{s} ms"] = 1e3 * lat[r.name]
                r.values[f"{b}x{s} speed-up"] = f"{lat['fp32 (dense)'] / lat[r.name]:.2f}x"
    cols = ["linear params", "removed", "fidelity GPL-3", "fidelity pydoc", "artifact MB"] + [
        f"{b}x{s} {k}" for b, s in SHAPES for k in ("ms", "speed-up")] + ["train s", "peak MB", "samples seen"]
    write_table(OUT, "Low-rank factorization: MiniLM (all-MiniLM-L6-v2)",
                f"{pct} of the encoder's linear weights removed (the same share from every layer, ranks rounded to "
                "multiples of 8). Cosine fidelity to the uncompressed model's normalized mean-pooled embeddings on "
                "the 124 GPL-3 sentences and 124 sentences of Python's held-out reference topics (neither trained "
                f"on). Calibration and training: {len(train)} mixed-calibration sentences (license texts + standard-"
                "library docstrings). Latency: medians of 9 interleaved rounds, ratio to fp32 in the same run. "
                "Regenerate: `python benchmarks/lowrank/minilm.py`.", cols, rows,
                ["The 30522 x 384 word embedding (half of the bytes) is not factorized, so artifacts shrink less "
                 "than the linear weights do."])


if __name__ == "__main__":
    main()
