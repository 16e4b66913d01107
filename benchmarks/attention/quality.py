"""Quality of the efficient attentions on two text domains, and MiniLM's recovery by distillation at 512 tokens.

* MiniLM (encoder): cosine fidelity of mean-pooled embeddings to the uncompressed model on 512-token passages of
  two domains: Debian common-licenses (held-out files) and Python's reference topics (held-out quarter). Every
  method one-shot; then sliding window 128 (+[CLS] global) recovered by distillation from the original model
  (``DistillConfig``: cosine of the last hidden states + relative MSE of every block + the task's embedding loss),
  trained on 512-token passages of the calibration texts of both domains (no evaluation passage is trained on).
  Linformer (k=256 over n=512) is recovered the same way (``--linformer-steps``).
* SmolLM2-135M (decoder): perplexity of 512-token windows of the same two domains, original vs converted
  (one-shot, no recovery).

Writes docs/results/attention_quality.md and .json. Not a timing: it does not take the benchmark lock.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, machine_line  # noqa: E402

import torchslim  # noqa: E402
from torchslim import AttentionConfig, DistillConfig, TrainConfig  # noqa: E402
from torchslim.data import text as text_data  # noqa: E402
from torchslim.tasks.embedding import SentenceEmbeddingTask  # noqa: E402

DOMAINS = {"licenses": ("eval", "calibration"), "python-reference": ("pydoc-eval", "pydoc-calibration")}
ENCODER = {"sliding_window": dict(window=128, n_global=1), "block_sparse": dict(window=128, n_global=1),
           "linformer": dict(proj_len=256, max_length=512), "performer": dict(features=256)}
DECODER = {"sliding_window": dict(window=128, n_global=1), "block_sparse": dict(window=128, n_global=1),
           "performer": dict(features=256)}


def passages(text: str, tokenizer, n_tokens: int, limit: int) -> list[str]:
    """Consecutive passages of ``text`` that each fill ``n_tokens`` tokens (decoded back to text)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    step = n_tokens - 2
    out = [tokenizer.decode(ids[i:i + step]) for i in range(0, len(ids) - step, step)]
    return out[:limit]


def encoder_tasks(tok, teacher, n_eval: int, n_train: int) -> tuple[dict, list[str]]:
    train = []
    for _, (_, cal) in DOMAINS.items():
        train += passages(text_data.split_text(cal), tok, 512, n_train // 2)
    tasks = {d: SentenceEmbeddingTask(tok, teacher, max_length=512, batch_size=8,
                                      eval_sentences=passages(text_data.split_text(ev), tok, 512, n_eval),
                                      calibration_sentences=train)
             for d, (ev, _) in DOMAINS.items()}
    return tasks, train


def fidelity(model, tasks: dict) -> dict[str, float]:
    return {d: t.evaluate(model)["cosine_fidelity"] for d, t in tasks.items()}


def recover(model, teacher, task, steps: int, lr: float) -> float:
    cfg = DistillConfig(task_weight=1.0, output_weight=1.0, hidden_weight=1.0, temperature=1.0,
                        train=TrainConfig(steps=steps, batch_size=4, lr=lr, warmup_steps=max(1, steps // 10),
                                          max_grad_norm=1.0, progress=False, log_every=max(1, steps // 5)))
    t0 = time.time()
    torchslim.distill_(model, cfg, task=task, teacher=teacher)
    model.eval()
    return time.time() - t0


def minilm(args) -> dict:
    loaded = torchslim.load_model("minilm")
    teacher, tok = loaded.model.eval(), loaded.task.tokenizer
    tasks, train = encoder_tasks(tok, teacher, args.eval_passages, args.train_passages)
    out = {"passages": {d: len(t.sentences("eval")) for d, t in tasks.items()}, "train_passages": len(train),
           "rows": []}
    for method, kw in ENCODER.items():
        m = copy.deepcopy(teacher)
        torchslim.convert_attention_(m, AttentionConfig(method=method, **kw))
        print("minilm", method, "one-shot ...", flush=True)
        row = {"method": method, "config": AttentionConfig(method=method, **kw).rule(), "one_shot": fidelity(m, tasks)}
        steps = {"sliding_window": args.steps, "linformer": args.linformer_steps}.get(method, 0)
        if steps:
            row["seconds"] = recover(m, teacher, tasks["licenses"], steps, args.lr)
            row["steps"], row["recovered"] = steps, fidelity(m, tasks)
        out["rows"].append(row)
        print("minilm", row, flush=True)
    return out


def perplexity(model, windows: list[torch.Tensor]) -> float:
    nll, n = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            out = model(input_ids=ids[None], labels=ids[None])
            nll += out.loss.item() * (ids.numel() - 1)
            n += ids.numel() - 1
    return math.exp(nll / n)


def smollm2(args) -> dict:
    loaded = torchslim.load_model("smollm2-135m")
    base, tok = loaded.model.eval(), loaded.task.tokenizer
    windows = {}
    for d, (ev, _) in DOMAINS.items():
        ids = tok(text_data.split_text(ev), add_special_tokens=False, verbose=False)["input_ids"]
        windows[d] = [torch.tensor(ids[i:i + 512]) for i in range(0, len(ids) - 512, 512)][: args.ppl_windows]
    rows = [{"method": "sdpa (original)", "ppl": {d: perplexity(base, w) for d, w in windows.items()}}]
    for method, kw in DECODER.items():
        m = copy.deepcopy(base)
        torchslim.convert_attention_(m, AttentionConfig(method=method, **kw))
        rows.append({"method": method, "config": AttentionConfig(method=method, **kw).rule(),
                     "ppl": {d: perplexity(m, w) for d, w in windows.items()}})
        print("smollm2", rows[-1], flush=True)
    return {"windows": {d: len(w) for d, w in windows.items()}, "rows": rows}


def render(enc: dict, dec: dict, args) -> str:
    doms = list(DOMAINS)
    lines = ["# Efficient attention: quality on two text domains, and recovery", "",
             "Generated by `benchmarks/attention/quality.py` (`make bench-attention`).", "",
             f"Machine: {machine_line()}", "",
             "## MiniLM: cosine fidelity to the original model on 512-token passages", "",
             f"Evaluation passages: {', '.join(f'{d} {n}' for d, n in enc['passages'].items())} (held-out texts); "
             f"recovery trains on {enc['train_passages']} passages of the calibration texts of both domains "
             f"(batch 4, lr {args.lr}, AdamW, cosine schedule).", "",
             "| method | " + " | ".join(f"{d} one-shot" for d in doms) + " | recovery steps | "
             + " | ".join(f"{d} recovered" for d in doms) + " |", "|---|" + "---|" * (2 * len(doms) + 1)]
    for r in enc["rows"]:
        rec = r.get("recovered", {})
        lines.append(f"| {r['config']} | " + " | ".join(f"{r['one_shot'][d]:.4f}" for d in doms)
                     + f" | {r.get('steps', '–')} | " + " | ".join(f"{rec[d]:.4f}" if d in rec else "–" for d in doms)
                     + " |")
    lines += ["", "## SmolLM2-135M: perplexity of 512-token windows (one-shot, no recovery)", "",
              f"Windows: {', '.join(f'{d} {n}' for d, n in dec['windows'].items())}.", "",
              "| method | " + " | ".join(doms) + " |", "|---|" + "---|" * len(doms)]
    for r in dec["rows"]:
        lines.append(f"| {r.get('config', r['method'])} | " + " | ".join(f"{r['ppl'][d]:.2f}" for d in doms) + " |")
    lines += ["", "Linformer is not run on the decoder: its projections mix every position, so it cannot be causal.",
              ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--linformer-steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--eval-passages", type=int, default=16)
    ap.add_argument("--train-passages", type=int, default=80)
    ap.add_argument("--ppl-windows", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "docs/results/attention_quality.md"))
    args = ap.parse_args()
    enc = minilm(args)
    dec = smollm2(args)
    out = Path(args.out)
    out.write_text(render(enc, dec, args))
    out.with_suffix(".json").write_text(json.dumps({"machine": machine_line(), "minilm": enc, "smollm2": dec,
                                                    "args": vars(args)}, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
