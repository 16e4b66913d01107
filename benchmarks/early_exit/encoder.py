"""Early exit on MiniLM (all-MiniLM-L6-v2, 6 blocks) fine-tuned on two labelled offline text tasks of different
domains: which Python reference topic (``pydoc``, 8 classes) and which license (``licenses``, 7 classes) a 16-word
passage comes from (torchslim.data.labelled). Writes docs/results/early_exit_minilm_<task>.md (+ .json).

Steps per task: fine-tune MiniLM with a classification head (the baseline; kept in out/bench-early-exit), add an exit
head after blocks 1-5 and train them by distillation from the final layer (model frozen), choose each policy's
setting on the validation split, then time the test split: batch 1 (each passage alone, unpadded) and batches of
16 (with and without compaction), interleaved with the plain model, medians of 3 rounds. ``--prepare`` only trains
(and keeps the models), which needs no lock; the timed run goes under ``flock /tmp/torchslim-bench.lock``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RES, WORK, choose, full_logits, say, timed, write  # noqa: E402

import torchslim  # noqa: E402
from torchslim.core.config import config_from_dict  # noqa: E402
from torchslim.data.labelled import class_names, labelled_split  # noqa: E402
from torchslim.early_exit import EarlyExitConfig, exit_heads  # noqa: E402
from torchslim.tasks.source_text import source_task  # noqa: E402
from torchslim.zoo.minilm import minilm_path  # noqa: E402

FT = torchslim.TrainConfig(steps=400, batch_size=16, lr=1e-4, warmup_steps=40, eval_at_end=False, log_every=10)
EXIT_TRAIN = torchslim.TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=10, eval_at_end=False, log_every=10)


def call(model: torch.nn.Module, x: dict) -> torch.Tensor:
    return model(**x).logits


def baseline(task: str, tok) -> torch.nn.Module:
    path = WORK / f"minilm-{task}"
    if (path / "manifest.json").is_file():
        return torchslim.load(path).eval()
    from transformers import BertForSequenceClassification

    say(f"fine-tuning MiniLM on {task} ({FT.steps} steps)")
    model = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=len(class_names(task)))
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)   # short run on 2 cores: embeddings kept
    torchslim.finetune_(model, torchslim.FinetuneConfig(), task=source_task(task, tok, eval_split="val"), train=FT)
    torchslim.save(model.eval(), path)
    return model


def with_exits(task: str, tok) -> torch.nn.Module:
    path = WORK / f"minilm-{task}-exits"
    if (path / "manifest.json").is_file():
        return torchslim.load(path).eval()
    model = baseline(task, tok)
    say(f"training exit heads on {task} ({EXIT_TRAIN.steps} steps)")
    torchslim.early_exit_(model, EarlyExitConfig(), task=source_task(task, tok, eval_split="val"), train=EXIT_TRAIN)
    torchslim.save(model.eval(), path)
    return model


def swept(task: str, model: torch.nn.Module, val: list, cost: list[float]) -> tuple[float, dict]:
    """The validation accuracy and each policy's chosen setting, kept in the work folder (the sweep times nothing,
    so it can run before the timed run, outside the lock)."""
    path = WORK / f"picked-{task}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        return data["full_val"], {k: {**v, "policy": config_from_dict(v["policy"])} for k, v in data["picked"].items()}
    full_val = full_logits(model, val, call)
    picked = choose(model, val, full_val, cost)
    path.write_text(json.dumps({"full_val": full_val, "picked": {k: {**v, "policy": v["policy"].to_dict()}
                                                                 for k, v in picked.items()}}))
    return full_val, picked


def batches(tok, task: str, split: str, size: int) -> list[tuple[dict, torch.Tensor]]:
    texts, labels = labelled_split(task, split)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()   # classes mixed
    texts, labels = [texts[i] for i in order], [labels[i] for i in order]
    out = []
    for i in range(0, len(texts), size):
        enc = tok(texts[i:i + size], padding=True, truncation=True, max_length=64, return_tensors="pt")
        out.append(({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
                    torch.tensor(labels[i:i + size])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["pydoc", "licenses"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--time-samples", type=int, default=160, help="time on the first N test passages (0: all)")
    ap.add_argument("--prepare", action="store_true", help="only fine-tune and train the exits (no timing: no lock)")
    ap.add_argument("--sweep", action="store_true",
                    help="also choose the policies' settings on the validation split and keep them (no timing: no lock)")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path())
    for task in args.tasks:
        model = with_exits(task, tok)
        if args.prepare:
            continue
        n = len(exit_heads(model))
        cost = [(k + 1) / (n + 1) for k in range(n + 1)]
        full_val, picked = swept(task, model, batches(tok, task, "val", 1), cost)
        if args.sweep:
            continue
        rows = timed(model, picked, {"1": batches(tok, task, "test", 1), "16": batches(tok, task, "test", 16)},
                     call, n, args.rounds, args.time_samples or None)
        texts, _ = labelled_split(task, "test")
        write(RES / f"early_exit_minilm_{task}.md", f"Early exit: MiniLM on the '{task}' task",
              f"all-MiniLM-L6-v2 fine-tuned with a classification head ({FT.steps} steps of {FT.batch_size}, lr {FT.lr}, word embeddings frozen) on '{task}' "
              f"({len(class_names(task))} classes; test split {len(texts)} passages of 16 words); exit heads after "
              f"blocks 1-{n} trained by distillation from the final layer ({EXIT_TRAIN.steps} steps, model frozen). "
              f"Each policy's setting is the cheapest whose validation accuracy is within 0.5 points of the full "
              f"model's. Accuracy and exits are over the whole test split; times over its first "
              f"{args.time_samples or len(texts)} passages, interleaved with the plain model, medians of {args.rounds} "
              f"rounds.",
              rows, ["speed-up = full model's median time / the variant's (same batches, same process)",
                     "exits: passages leaving at exit 1..5, then at the final layer",
                     "batch 1 feeds each passage alone (no padding); batch 16 pads to the longest in the batch",
                     "the split is in a fixed shuffled order (seed 0), so timed passages and batches mix the classes"],
              {"task": task, "full_val": full_val, "picked": {k: {**v, "policy": str(v["policy"])}
                                                               for k, v in picked.items()}})


if __name__ == "__main__":
    main()
