"""tiny-llama pre-trained from scratch at 50% and 75% sparsity (RigL, SET; ERK) against dense, at equal steps.

The model is ``torchslim.zoo.tiny.tiny_llama`` (LlamaForCausalLM, hidden 64, 2 layers, GQA 4/2 heads, MLP 128,
tied embeddings, byte tokenizer), randomly initialised, trained on the ``broad-calibration`` text (Debian license
calibration files + Python reference topics, :mod:`torchslim.data.text`) and evaluated by token perplexity on two
held-out texts of different domains: GPL-3 (licenses) and ``pydoc-eval`` (Python reference topics), both disjoint
from the training text. Sparse variants cover every linear layer of the blocks (q/k/v/o, gate/up/down; embeddings
and the tied head stay dense). Every variant runs at each learning rate of ``--lrs`` with the same seed and data order.
Regenerates docs/results/sparse_training_tiny_llama.md (+ .json). No timing: runs unlocked.

    python benchmarks/sparse_training/tiny_llama.py [--steps 600] [--lrs 1e-3 3e-3] [--update-every 15]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row  # noqa: E402
from harness import BudgetCheck, publish, roundtrip, train_config, zero_fraction  # noqa: E402

import torchslim  # noqa: E402
from torchslim.core.state import state_of  # noqa: E402
from torchslim.data.text import split_text  # noqa: E402
from torchslim.pruning import DynamicSparseConfig  # noqa: E402
from torchslim.pruning.dynamic_sparse import dst_selector  # noqa: E402
from torchslim.tasks.causal_lm import CausalLMTask  # noqa: E402
from torchslim.zoo.tiny import tiny_llama  # noqa: E402

warnings.filterwarnings("ignore")
TEXTS = {"GPL-3": "eval", "Python reference": "pydoc-eval"}
VARIANTS = {"dense": None, "RigL 50%": ("rigl", 0.5), "RigL 75%": ("rigl", 0.75), "SET 50%": ("set", 0.5),
            "SET 75%": ("set", 0.75)}
# at the largest lr only: masks moved 4x less often (does RigL's growth need more steps to pay off?)
SLOW_EVERY = 60
ABLATION = {f"RigL 50%, update every {SLOW_EVERY}": ("rigl", 0.5, SLOW_EVERY),
            f"RigL 75%, update every {SLOW_EVERY}": ("rigl", 0.75, SLOW_EVERY),
            f"SET 75%, update every {SLOW_EVERY}": ("set", 0.75, SLOW_EVERY)}


def tasks(tokenizer: Any) -> dict[str, CausalLMTask]:
    train = split_text("broad-calibration")
    return {name: CausalLMTask(tokenizer, seq_len=128, eval_batch_size=16, eval_text=split_text(split),
                               calibration_text=train) for name, split in TEXTS.items()}


def run(variant: Any, lr: float, steps: int, every: int, seed: int, task: CausalLMTask) -> tuple[Any, dict]:
    model = tiny_llama(seed=seed).model
    train = train_config(steps, seed, batch=16, lr=lr, weight_decay=0.0)
    check = BudgetCheck()
    if variant is None:
        model = torchslim.finetune_(model, torchslim.FinetuneConfig(train=train), task=task)
    else:
        method, sparsity, *slow = variant
        cfg = DynamicSparseConfig(method=method, sparsity=sparsity, update_every=slow[0] if slow else every, seed=seed)
        model = torchslim.prune_(model, cfg, task=task, train=train, hooks=[check])
    details = state_of(model).history[-1].details
    return model.eval(), {"loss": details.get("final_loss"), "check": check, "records": details.get("records", [])}


def build(steps: int, lrs: list[float], every: int, seed: int) -> tuple[list[Row], dict[str, Any], Any]:
    lm = tiny_llama(seed=seed)
    by_text = tasks(lm.tokenizer)
    first = next(iter(by_text.values()))
    names = [n for n, _, _ in dst_selector().resolve(lm.model, True)]
    rows, models = [], {}
    for lr in lrs:
        dense_ppl: dict[str, float] = {}
        for name, variant in {**VARIANTS, **(ABLATION if lr == max(lrs) else {})}.items():
            model, info = run(variant, lr, steps, every, seed, first)
            ppl = {t: task.evaluate(model)["perplexity"] for t, task in by_text.items()}
            dense_ppl = ppl if variant is None else dense_ppl
            zeros, nonzero = zero_fraction(model, names)
            check, recs = info["check"], info["records"]
            values: dict[str, Any] = {"lr": lr}
            for t, p in ppl.items():
                values[f"ppl {t}"] = p
                values[f"{t} vs dense"] = f"{p / dense_ppl[t]:.3f}x"
            values.update({"final train loss": info["loss"], "zeros in block linears": f"{100 * zeros:.2f}%",
                           "nonzero block weights": nonzero,
                           "budget held every step": "–" if variant is None else
                           (f"yes ({check.steps})" if check.violations == 0 else f"NO ({check.violations})"),
                           "mask updates": "–" if variant is None else sum("grown" in r for r in recs)})
            rows.append(Row(f"{name}, lr {lr:g}", "", values))
            models[f"{name}, lr {lr:g}"] = model
            print(rows[-1].name, {k: v for k, v in values.items() if k.startswith("ppl")}, flush=True)
    return rows, models, lm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    ap.add_argument("--update-every", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, models, lm = build(args.steps, args.lrs, args.update_every, args.seed)
    key = f"RigL 75%, lr {args.lrs[0]:g}"
    ids = lm.task.example_inputs(2)["input_ids"]
    trip = roundtrip(models[key], lm.source, ids, lambda m, x: m(input_ids=x).logits)
    cols = ["lr", *[c for t in TEXTS for c in (f"ppl {t}", f"{t} vs dense")], "final train loss",
            "zeros in block linears", "nonzero block weights", "budget held every step", "mask updates"]
    tokens = args.steps * 16 * 128

    def updates(every: int) -> int:
        return sum(1 for s in range(1, int(0.75 * args.steps)) if s % every == 0)
    notes = [
        f"Recipe (every row): {args.steps} steps of 16 x 128 tokens ({tokens / 1e6:.2f} M tokens, about "
        f"{tokens / len(split_text('broad-calibration').encode()):.1f} passes over the 412 KB training text), AdamW "
        f"at the row's lr, no weight decay, cosine, warm-up {max(1, args.steps // 30)} steps, seed {args.seed}. "
        "Perplexity: every non-overlapping 128-token window of each text (GPL-3: 274, Python reference: 965).",
        f"Sparse rows: ERK densities over the 14 block linear layers, masks moved every {args.update_every} steps "
        f"until step {int(0.75 * args.steps)} (drop 0.3, cosine-decayed). 'x vs dense' compares with the dense row "
        "at the same lr. One seed (a second would double the run); read differences under ~3% as noise.",
        f"Rows 'update every {SLOW_EVERY}' (at lr {max(args.lrs):g} only): the same runs with masks moved every "
        f"{SLOW_EVERY} steps instead of {args.update_every} ({updates(SLOW_EVERY)} updates instead of "
        f"{updates(args.update_every)}), to see whether growth "
        "that is dropped again before it has grown explains RigL trailing SET here.",
        f"{key} artifact: {trip}.",
    ]
    publish("tiny_llama", "Sparse training from scratch: tiny-llama pre-training at 50% and 75% sparsity",
                "RigL and SET (ERK) against dense at equal steps and equal learning rate; token perplexity on two "
                "held-out texts of different domains (lower is better).", cols, rows, notes)


if __name__ == "__main__":
    main()
