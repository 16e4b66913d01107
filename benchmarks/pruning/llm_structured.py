"""Structured pruning of causal LMs (SmolLM2-135M and the tiny GQA Llama): attention heads (GQA-aware)
and MLP neurons at 25% and 50%, perplexity before and after recovery fine-tuning, reload +
generate check, decode speed as a ratio to the unpruned model in the same run.

Regenerates docs/results/pruning_llm_structured.md (+ .json).

    python benchmarks/pruning/llm_structured.py [--quick] [--models smollm2-135m tiny-llama]
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
from common import ROOT, Row, write_table  # noqa: E402
from quantization.smollm2 import decode_rounds  # noqa: E402

import torchslim  # noqa: E402
from torchslim.pruning.structured import block_params, prune_block_fraction_  # noqa: E402
from torchslim.tasks.causal_lm import CausalLMTask  # noqa: E402
from torchslim.train import TrainConfig, Trainer  # noqa: E402

warnings.filterwarnings("ignore")


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def recover(m: torch.nn.Module, task: CausalLMTask, steps: int, lr: float) -> float:
    t = time.perf_counter()
    Trainer(m, task, TrainConfig(steps=steps, batch_size=4, lr=lr, warmup_steps=max(1, steps // 10),
                                 log_every=max(1, steps // 5), eval_at_end=False)).fit()
    m.eval()
    return time.perf_counter() - t


def reload_check(m: torch.nn.Module, prompt: torch.Tensor) -> str:
    with tempfile.TemporaryDirectory() as d:
        torchslim.save(m, Path(d) / "a")
        r = torchslim.load(Path(d) / "a")
        same = r.generate(prompt, max_new_tokens=16, do_sample=False).tolist() == \
            m.generate(prompt, max_new_tokens=16, do_sample=False).tolist()
    return "reloads, same greedy tokens" if same else "reloads, DIFFERENT tokens"


def load(name: str, pretrain_steps: int):
    """The model, its eval task and a training task; the random tiny Llama is first trained on the
    text (``pretrain_steps``) so that perplexity before/after pruning means something."""
    lm = torchslim.load_model(name)
    seq = 512 if name == "smollm2-135m" else 128
    ev = CausalLMTask(lm.tokenizer, seq_len=seq)
    train = CausalLMTask(lm.tokenizer, seq_len=128)
    m = lm.model.eval()
    if name == "tiny-llama":
        Trainer(m, train, TrainConfig(steps=pretrain_steps, batch_size=16, lr=3e-3, warmup_steps=20,
                                      eval_at_end=False, log_every=100)).fit()
        m.eval()
    return m, ev, train, lm


def recipes(name: str) -> list[tuple[str, float, float, str, bool]]:
    """``(label, fraction, head share, importance, recover)``: neurons only, and heads + neurons."""
    imps = ("wanda", "taylor", "magnitude_l2") if name == "tiny-llama" else ("wanda", "magnitude_l2")
    out = []
    for frac in (0.25, 0.5):
        pct = int(frac * 100)
        for imp in imps:
            out.append((f"{pct}% neurons only, {imp}", frac, 0.0, imp, imp == "wanda"))
        out.append((f"{pct}% heads+neurons, wanda", frac, 1.0, "wanda", True))
    return out


def run_model(name: str, args) -> list[Row]:
    base, ev, train, lm = load(name, 600 if not args.quick else 100)
    steps = args.steps if name == "smollm2-135m" else 300
    lr = args.lr if name == "smollm2-135m" else 1e-3
    base_ppl = ev.evaluate(base)["perplexity"]
    prompt = lm.task.example_inputs(1, 16)["input_ids"]
    rows = [Row("unpruned", "", {"params": n_params(base), "ppl": base_ppl})]
    models = {"unpruned": base}
    for label, frac, share, imp, rec in recipes(name):
        if args.recipes and not any(r in label for r in args.recipes):
            continue
        m = copy.deepcopy(base)
        t = time.perf_counter()
        prune_block_fraction_(m, frac, importance=imp, calibration=train, head_share=share)
        secs = time.perf_counter() - t
        heads = m.config.torchslim_layer_sizes[0]["num_attention_heads"] if hasattr(m.config, "torchslim_layer_sizes") \
            else m.config.num_attention_heads
        v = {"params": n_params(m), "block params removed": f"{1 - block_params(m) / block_params(base):.0%}",
             "heads": heads, "ppl": ppl_of(ev, m), "prune s": secs}
        rows.append(Row(label, "one-shot, no recovery", v))
        print(label, v, flush=True)
        if rec:
            fit_s = recover(m, train, steps, lr)
            v2 = dict(v, ppl=ppl_of(ev, m), **{"recovery s": fit_s})
            label2 = f"{label} + {steps}-step recovery"
            rows.append(Row(label2, reload_check(m, prompt), v2))
            models[label2] = m
            print(label2, v2, flush=True)
    if not args.recipes:
        control = copy.deepcopy(base)     # the same fine-tuning without pruning: what recovery alone buys
        fit_s = recover(control, train, steps, lr)
        rows.insert(1, Row(f"unpruned + {steps}-step fine-tuning (control)", "same recipe as recovery, no pruning",
                           {"params": n_params(control), "ppl": ppl_of(ev, control), "recovery s": fit_s}))
    dec = decode_rounds(models, lm.task, rounds=3, tokens=32)
    for r in rows:
        r.values["ppl vs unpruned"] = f"{100 * (r.values['ppl'] / base_ppl - 1):+.1f}%"
        r.values["params ratio"] = round(r.values["params"] / rows[0].values["params"], 3)
        if r.name in dec:
            r.values["decode tok/s"] = dec[r.name]["tok_s"]
            r.values["decode speedup"] = f"{dec[r.name]['tok_s'] / dec['unpruned']['tok_s']:.2f}x"
        r.name = f"{name}: {r.name}"
    return rows


def ppl_of(ev: CausalLMTask, m: torch.nn.Module) -> float:
    return ev.evaluate(m)["perplexity"]


def keep_other_rows(path: Path, rows: list[Row], rerun_models: set[str]) -> list[Row]:
    """Rows of the existing table that this run did not replace (other models, other recipes), then the new ones
    in place of same-named old ones."""
    import json

    old = json.loads(path.read_text()) if path.exists() else []
    new = {r.name: r for r in rows}
    out = [new.pop(d["name"], None) or Row(d["name"], d.get("note", ""),
                                            {k: v for k, v in d.items() if k not in ("name", "note")})
           for d in old if d["name"].split(": ", 1)[0] not in rerun_models]
    return out + [r for r in rows if r.name in new]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", nargs="*", default=["tiny-llama", "smollm2-135m"])
    ap.add_argument("--steps", type=int, default=60, help="recovery steps for SmolLM2 (batch 4 x 128 tokens)")
    ap.add_argument("--lr", type=float, default=1e-4, help="recovery learning rate for SmolLM2")
    ap.add_argument("--recipes", nargs="*", help="only recipes whose label contains one of these (rows merge into "
                                                    "the existing table; no control row)")
    args = ap.parse_args()
    rows: list[Row] = []
    for name in args.models:
        rows += run_model(name, args)
    if args.recipes or set(args.models) != {"tiny-llama", "smollm2-135m"}:   # keep the rows not re-run
        rows = keep_other_rows(ROOT / "docs/results/pruning_llm_structured.json", rows,
                               set() if args.recipes else set(args.models))
    cols = ["params", "params ratio", "block params removed", "heads", "ppl", "ppl vs unpruned", "decode tok/s",
            "decode speedup", "prune s", "recovery s"]
    write_table(ROOT / "docs/results/pruning_llm_structured.md", "Structured pruning: SmolLM2-135M and tiny GQA Llama",
                "25% / 50% of every block's parameters removed, leaving ordinary smaller nn.Linear layers: "
                "'neurons only' takes MLP neurons alone; 'heads+neurons' first removes attention heads at the same "
                "ratio (GQA-aware: query heads pruned by the same count in every key/value group, or whole groups, "
                "as near the target as the groups allow; 'heads' = query heads left per block) and then as many "
                "neurons as the rest needs. Perplexity on Debian's GPL-3 text (SmolLM2: 512-token windows; tiny Llama: 128). "
                "Recovery = fine-tuning with the training engine on the other license texts (batch 4 x 128 tokens, "
                "AdamW, cosine; SmolLM2 lr 1e-4, tiny Llama 1e-3). Decode = greedy 32 tokens at batch 1, interleaved rounds, ratio to the unpruned "
                "model in the same run. The tiny Llama is random-initialized, so it is first trained on the text "
                "(600 steps) and that model is the unpruned baseline. "
                "Regenerate: `python benchmarks/pruning/llm_structured.py`.",
                cols, rows, ["'block params removed' counts the transformer blocks only; the tied 49152x576 "
                             "embedding (28M of SmolLM2's 135M parameters) is not pruned."]
                + (["QUICK RUN"] if args.quick else []))


if __name__ == "__main__":
    main()
