"""Hardware-aware architecture search on MiniLM (all-MiniLM-L6-v2): blocks kept, heads and MLP neurons per block
searched under a measured speed-up constraint at 1x128, against uniform structured pruning (the same fraction of
heads and neurons in every block) at the same constraint, both recovered by the same distillation budget.

The search trains on the broad calibration sentences and selects on 124 of them held out from its training;
quality is the cosine fidelity to the uncompressed model's embeddings on two domains never seen by the search: the
GPL-3 sentences and sentences of Python's held-out reference topics. Regenerates docs/results/nas_minilm.md (+ .json).

    python benchmarks/nas/minilm.py [--speedup 2.0] [--steps 100]
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402
from common_rt import pydoc_sentences  # noqa: E402
from harness import SMOKE, run, write  # noqa: E402

import torchslim  # noqa: E402
from torchslim import DistillConfig, TrainConfig  # noqa: E402
from torchslim.data import text as text_data  # noqa: E402
from torchslim.search import NASConfig  # noqa: E402
from torchslim.tasks.embedding import SentenceEmbeddingTask  # noqa: E402

warnings.filterwarnings("ignore")
OUT = Path("/tmp/nas_minilm.md") if SMOKE else ROOT / "docs/results/nas_minilm.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--speedup", type=float, default=2.0, help="constraint: measured speed-up at 1x128")
    ap.add_argument("--steps", type=int, default=100, help="recovery distillation steps (batch 16) per candidate")
    ap.add_argument("--seeds", type=int, default=3, help="recovery seeds for the searched and the uniform shape")
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = torchslim.load_model("minilm")
    base, tok = loaded.model.eval(), loaded.task.tokenizer
    pool = text_data.sentences("broad-calibration")
    held = pool[-124:]
    search = SentenceEmbeddingTask(tok, base, calibration_sentences=pool[:-124], eval_sentences=held)
    report = {"GPL-3": loaded.task, "pydoc": SentenceEmbeddingTask(tok, base, eval_sentences=pydoc_sentences()),
              "validation": search}
    steps = 4 if SMOKE else args.steps
    recover = DistillConfig(output_weight=1.0, hidden_weight=1.0,
                            train=TrainConfig(steps=steps, batch_size=16, lr=3e-4, warmup_steps=max(1, steps // 10),
                                              max_grad_norm=1.0, eval_at_end=False, progress=False, seed=0))
    config = NASConfig(min_speedup=args.speedup, shape=(1, 128), widths=(0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0),
                       min_depth=0.5, n_candidates=6 if SMOKE else 40, n_recover=2 if SMOKE else 5,
                       n_validate=1 if SMOKE else 4, recover=recover, n_importance_samples=64, round_to=8,
                       latency_iters=9 if SMOKE else 15)
    rows, result, facts = run(base, search, report, config, "cosine_fidelity", seeds=1 if SMOKE else args.seeds)
    write(OUT, "Architecture search: MiniLM (all-MiniLM-L6-v2)",
          f"Constraint: speed-up >= {args.speedup}x at 1x128 over the uncompressed model, measured on this machine "
          "(each candidate timed interleaved with the full model, medians). Space: which of the 6 blocks to keep "
          "(at least 3; blocks drawn favouring high Block Influence), and per kept block the attention heads (of 12) "
          "and MLP neurons (of 1536, multiples of 8) kept, in steps of 1/8 around a drawn overall level. Importance: "
          "Taylor (task-loss gradients on 64 calibration sentences), measured once on the full model. Recovery for "
          f"every recovered candidate and the baseline: {steps} distillation steps of batch 16 (embedding cosine + "
          "block-output MSE, AdamW lr 3e-4) on the broad calibration sentences minus the 124 held out for "
          "selection. Quality: cosine fidelity of normalized mean-pooled embeddings to the uncompressed model's. "
          "Regenerate: `python benchmarks/nas/minilm.py`.",
          [("", rows, result, facts)],
          ["GPL-3: the 124 GPL-3 evaluation sentences; pydoc: 124 sentences of Python's held-out reference topics; "
           "validation: the 124 held-out calibration sentences the search selected on.",
           "The 30522x384 word embedding is kept whole (the space prunes the blocks)."])


if __name__ == "__main__":
    main()
