"""One PEFT-benchmark measurement in a fresh process: load a base, attach an adapter (or train every parameter),
train, and print one JSON line with its memory (see harness.py for the definition), time per step, parameter
counts and, if asked, perplexity on both texts. Called by smollm2.py; by hand:

    python benchmarks/peft/worker.py '{"label": "x", "method": "torchslim-lora", "targets": "qv", "r": 8,
        "alpha": 16, "loop": "manual", "steps": 4, "batch": 4, "seq": 256, "lr": 1e-4}'

Spec keys: ``method`` (torchslim-lora | peft-lora | full), ``targets`` (qv | all), ``r``, ``alpha``, ``loop``
(manual: the shared hand-written step of variants.py; trainer: torchslim.finetune_ with the one Trainer),
``steps``, ``batch``, ``seq``, ``lr``, ``optimizer`` (adamw | lion), ``bf16``, ``gc`` (gradient checkpointing,
trainer loop), ``artifact`` (a saved base instead of the zoo's fp32 SmolLM2), ``evaluate``,
``eval_windows`` (smoke runs), ``threads``.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.peft import harness, variants  # noqa: E402
from benchmarks.peft.harness import peak_rss_mb, rss_mb, say  # noqa: E402

warnings.filterwarnings("ignore")


def trainer_config(spec: dict[str, Any]) -> Any:
    """The recovery benchmark's training protocol (AdamW, cosine, 10% warm-up, clip 1), with the spec's options."""
    from benchmarks.recovery.smollm2 import _train

    cfg = _train(spec["steps"], spec["lr"], spec["batch"])
    return dataclasses.replace(cfg, optimizer=spec.get("optimizer", "adamw"), bf16=bool(spec.get("bf16")),
                               gradient_checkpointing=bool(spec.get("gc")),
                               log_every=max(1, min(10, spec["steps"] // 5)))


def train_with_trainer(model: Any, task: Any, spec: dict[str, Any]) -> dict[str, Any]:
    import torchslim
    from torchslim.peft import branches

    cfg = trainer_config(spec)
    t = time.perf_counter()
    if spec["method"] == "full":
        torchslim.finetune_(model, torchslim.FinetuneConfig(train=cfg), task=task)
        n = sum(p.numel() for p in model.parameters())
        counts = {"trainable": n, "total": n}
    elif spec["method"] == "torchslim-lora":
        sel = variants.torchslim_selector(spec["targets"])
        torchslim.finetune_(model, torchslim.LoraConfig(r=spec["r"], alpha=spec["alpha"], selector=sel), task=task,
                            train=cfg)
        trainable = sum(p.numel() for _, b in branches(model) for p in b.parameters())
        counts = {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}
    else:
        raise SystemExit(f"error: the trainer loop trains torchslim-lora or full, not {spec['method']!r}")
    wall = time.perf_counter() - t
    return {**counts, "train s": wall, "s/step": wall / spec["steps"]}


def train_by_hand(model: Any, task: Any, spec: dict[str, Any]) -> dict[str, Any]:
    losses: list[float] = []
    data = variants.batches(task, spec["batch"], min(spec["steps"], 8))
    step = variants.make_step(model, task, data, lr=spec["lr"], optimizer=spec.get("optimizer", "adamw"),
                              bf16=bool(spec.get("bf16")), losses=losses)
    times = []
    t0 = time.perf_counter()
    for i in range(spec["steps"]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        say(f"step {i + 1}/{spec['steps']}: loss {losses[-1]:.3f}, {times[-1]:.2f} s")
    return {"train s": time.perf_counter() - t0, "s/step": statistics.median(times[1:] or times),
            "first loss": losses[0], "last loss": losses[-1]}


def main() -> None:
    spec = json.loads(sys.argv[1])
    import torch

    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    import peft  # noqa: F401  (imported by every variant, so the baseline below is the same for all)

    import torchslim  # noqa: F401

    tokenizer = variants.tokenizer_of_smollm2()
    task = variants.train_task(tokenizer, spec["seq"])
    task.token_ids("calibration")                 # tokenized before the baseline: data, not model memory
    rss0 = rss_mb()
    model = variants.load_base(spec)
    counts: dict[str, Any] = {}
    if spec["loop"] == "manual":
        model, counts = variants.adapt(model, spec)
    out: dict[str, Any] = {"load peak MB": peak_rss_mb() - rss0}
    harness.release_and_reset_peak()
    out["model MB"] = rss_mb() - rss0
    say(f"{spec.get('label')}: base resident {out['model MB']:.0f} MB (loading peaked at {out['load peak MB']:.0f})")
    if spec["loop"] == "manual":
        out.update(counts, **train_by_hand(model, task, spec))
    elif spec["loop"] == "trainer":
        out.update(train_with_trainer(model, task, spec))
    else:
        raise SystemExit(f"error: unknown loop {spec['loop']!r}")
    out["peak MB"] = peak_rss_mb() - rss0
    out["trainable %"] = 100.0 * out["trainable"] / out["total"]
    say(f"{spec.get('label')}: peak {out['peak MB']:.0f} MB, {out['s/step']:.2f} s/step")
    if spec.get("evaluate"):
        from torchslim.peft import adapters, merge_

        for name in adapters(model):
            merge_(model, name)                   # exact into float layers: the same outputs, evaluated faster
        t = time.perf_counter()
        out.update(harness.perplexities(model, tokenizer, spec.get("eval_windows")))
        out["eval s"] = time.perf_counter() - t
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
