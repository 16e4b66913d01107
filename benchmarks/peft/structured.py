"""The PEFT benchmark's recovery parts on SmolLM2 after 25% structured pruning (the structured25-lora recipe's
prune stage): ``structured`` (LoRA recovery against full fine-tuning at equal steps, perplexity on both texts)
and ``optim`` (AdamW against Lion, fp32 against bf16 autocast, for the same LoRA recovery).

The pruned model is made once and saved as a torchslim artifact in a work folder (``$TORCHSLIM_CACHE`` or
``~/.cache/torchslim``, ``bench-peft/``), with its one-shot and the unpruned perplexities beside it; every training
run loads that artifact in a fresh subprocess (worker.py), so its peak memory is its own.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import interleaved
from benchmarks.peft import variants
from benchmarks.peft.harness import perplexities, run_key, run_worker, say, work_dir

PRUNE = {"targets": ["neurons"], "ratio": 0.25, "importance": "wanda", "round_to": 8}   # structured25-lora's stage
TRAIN_COLUMNS = ["ppl GPL-3", "ppl pydoc", "trainable", "trainable %", "steps", "train s", "s/step", "peak MB"]


def pruned_artifact(threads: int, windows: int | None) -> tuple[Path, dict[str, Any]]:
    """The 25%-pruned SmolLM2 artifact and {fp32, one-shot perplexities, prune s}; made once, then reused."""
    import torch

    import torchslim
    from torchslim import StructuredConfig

    stem = "structured25" + (f"-w{windows}" if windows else "")     # smoke runs evaluate fewer windows
    folder, info_path = work_dir() / stem, work_dir() / f"{stem}.json"
    if info_path.exists() and folder.is_dir():
        info = json.loads(info_path.read_text())
        if info.get("prune") == PRUNE and info.get("eval_windows") == windows:
            say(f"structured: reusing the pruned artifact {folder}")
            return folder, info
    torch.set_num_threads(threads)
    lm = torchslim.load_model("smollm2-135m")
    say("structured: perplexity of the unpruned fp32 model")
    fp32 = perplexities(lm.model, lm.tokenizer, windows)
    t = time.perf_counter()
    say(f"structured: pruning {PRUNE} (calibration: the task's calibration text, as recipes do)")
    torchslim.prune_(lm.model, StructuredConfig(**PRUNE), task=lm.task)
    prune_s = time.perf_counter() - t
    params = sum(p.numel() for p in lm.model.parameters())
    say(f"structured: pruned in {prune_s:.0f} s to {params:,} parameters; perplexity one-shot")
    info = {"prune": PRUNE, "eval_windows": windows, "prune s": prune_s, "params": params, "fp32": fp32,
            "one-shot": perplexities(lm.model, lm.tokenizer, windows)}
    shutil.rmtree(folder, ignore_errors=True)      # a stale one from other settings (our own work folder)
    torchslim.save(lm.model, folder, source=lm.source)
    info_path.write_text(json.dumps(info, indent=1))
    return folder, info


def lora_spec(folder: Path, args: Any, **extra: Any) -> dict[str, Any]:
    return {"artifact": str(folder), "method": "torchslim-lora", "targets": "all", "r": args.lora_r,
            "alpha": 2 * args.lora_r, "loop": "trainer", "steps": args.steps, "batch": args.batch, "seq": args.seq,
            "lr": args.lora_lr, "threads": args.threads, "evaluate": True, "eval_windows": args.eval_windows, **extra}


def _train_row(name: str, r: dict[str, Any], steps: int, note: str) -> dict[str, Any]:
    note += f"; {r['source']}" if r.get("source") else ""      # a run whose figures were recovered by hand
    return {"name": name, **{k: r.get(k) for k in TRAIN_COLUMNS if k != "steps"}, "steps": steps, "note": note}


def _percent_at_rank(folder: Path, r: int) -> float:
    """Trainable % of LoRA rank ``r`` on every block linear layer of the pruned model (counted, not trained)."""
    import torchslim
    from torchslim import ApplyContext, LoraConfig

    rec = LoraConfig(r=r, alpha=2 * r).prepare(torchslim.load(folder), ApplyContext()).records[0]
    return rec["trainable_percent"]


def part_structured(args: Any) -> dict[str, Any]:
    folder, info = pruned_artifact(args.threads, args.eval_windows)
    rows = [{"name": "fp32, unpruned", **info["fp32"], "trainable": None, "note": "reference"},
            {"name": "25% structured, one-shot", **info["one-shot"],
             "note": f"{info['params']:,} parameters; pruned in {info['prune s']:.0f} s"}]
    lora = run_worker(lora_spec(folder, args, label="structured: LoRA"), reuse=True)
    name = f"+ LoRA r={args.lora_r} (alpha {2 * args.lora_r}), all block linears"
    rows.append(_train_row(name, lora, args.steps, f"AdamW lr {args.lora_lr:g}; merged exactly before evaluation"))
    for lr in args.extra_lora_lrs:
        extra = run_worker(lora_spec(folder, args, label=f"structured: LoRA lr {lr:g}", lr=lr), reuse=True)
        rows.append(_train_row(name, extra, args.steps, f"AdamW lr {lr:g} (an extra learning rate, "
                                                        "--extra-lora-lrs: not the target's row)"))
    for lr in args.ft_lrs:
        ft = run_worker({**lora_spec(folder, args, label=f"structured: full FT lr {lr:g}"), "method": "full",
                         "lr": lr}, reuse=True)
        rows.append(_train_row("+ full fine-tuning", ft, args.steps, f"AdamW lr {lr:g}, every parameter"))
    r16 = _percent_at_rank(folder, 16)
    return {"columns": TRAIN_COLUMNS, "rows": rows,
            "intro": f"SmolLM2-135M with 25% of every block's MLP neurons removed (the structured25-lora recipe's "
                     f"prune stage: StructuredConfig {PRUNE}, Wanda importance on the task's calibration text), "
                     f"then recovery at equal steps: {args.steps} steps, batch {args.batch} x {args.seq} tokens of "
                     "the calibration (license) text, torchslim's Trainer with the recovery benchmark's protocol "
                     "(AdamW, cosine, 10% warm-up, gradient norm clipped at 1, seed 0). Perplexity: GPL-3 "
                     "(the task's evaluation text, 14 x 512-token windows) and the held-out Python reference text "
                     "(48 x 512), neither trained on. Each training run is a fresh subprocess: peak MB is its own.",
            "notes": [f"LoRA rank {args.lora_r}: the target allows <= 2% of the parameters trainable; rank 16 on the "
                      f"same layers (the recipe's) would train {r16:.2f}%.",
                      "The learning rates were set before the run (LoRA at the high end of the usual range, as 100 "
                      "steps are few; full fine-tuning at the usual 5e-5 and, where listed, a higher one), not "
                      "tuned on either evaluation text.",
                      "Training on license text moves GPL-3 perplexity toward that domain for both methods alike; "
                      "the Python reference text is the out-of-domain check.",
                      f"torch threads per process: {args.threads}."]}


def _step_times(folder: Path, args: Any, lion_lr: float) -> dict[str, float]:
    import torchslim

    task = variants.train_task(variants.tokenizer_of_smollm2(), args.seq)
    data = variants.batches(task, args.batch, 4)
    fns = {}
    for name, opt, lr, bf16 in (("adamw-fp32", "adamw", args.lora_lr, False), ("lion-fp32", "lion", lion_lr, False),
                                ("adamw-bf16", "adamw", args.lora_lr, True)):
        m = torchslim.load(folder)
        variants.add_torchslim_lora(m, "all", args.lora_r, 2 * args.lora_r)
        step = variants.make_step(m, task, data, lr=lr, optimizer=opt, bf16=bf16)
        fns[name] = _say_after(name, step)
    return interleaved(fns, rounds=args.rounds)


def _say_after(name: str, fn: Any) -> Any:
    def call() -> None:
        t = time.perf_counter()
        fn()
        say(f"optim: {name} step {time.perf_counter() - t:.2f} s")
    return call


def part_optim(args: Any) -> dict[str, Any]:
    folder, _ = pruned_artifact(args.threads, args.eval_windows)
    lion_lr = args.lora_lr / 5
    med = _step_times(folder, args, lion_lr)
    shared = (work_dir() / "runs" / f"{run_key(lora_spec(folder, args))}.json").is_file()
    runs = {"adamw-fp32": run_worker(lora_spec(folder, args, label="optim: AdamW fp32"), reuse=True)}
    runs["lion-fp32"] = run_worker(lora_spec(folder, args, label="optim: Lion fp32", optimizer="lion", lr=lion_lr),
                                   reuse=True)
    runs["adamw-bf16"] = run_worker(lora_spec(folder, args, label="optim: AdamW bf16", bf16=True), reuse=True)
    names = {"adamw-fp32": f"AdamW, fp32 (lr {args.lora_lr:g})", "lion-fp32": f"Lion, fp32 (lr {lion_lr:g})",
             "adamw-bf16": f"AdamW, bf16 autocast (lr {args.lora_lr:g})"}
    rows = [{"name": names[k], "s/step": med[k], "vs AdamW fp32": f"{med[k] / med['adamw-fp32']:.3f}x",
             "peak MB": r["peak MB"], "ppl GPL-3": r["ppl GPL-3"], "ppl pydoc": r["ppl pydoc"], "train s": r["train s"],
             "note": "the structured part's LoRA run (the same spec)" if k == "adamw-fp32" and shared else ""}
            for k, r in runs.items()]
    return {"columns": ["s/step", "vs AdamW fp32", "peak MB", "ppl GPL-3", "ppl pydoc", "train s"], "rows": rows,
            "intro": f"The structured part's LoRA recovery (r={args.lora_r} on every block linear layer of the 25%-"
                     f"pruned SmolLM2, {args.steps} steps, batch {args.batch} x {args.seq}) with AdamW or torchslim's "
                     "Lion (lr 5x smaller, betas 0.9/0.99), in fp32 or under the Trainer's bfloat16 autocast "
                     "(TrainConfig(bf16=True): forward and loss; weights, gradients and optimizer state stay fp32). "
                     f"s/step: median of {args.rounds} interleaved rounds of the three in one process (the same "
                     "hand-written step as the speed part); peak MB, perplexities and train s: the full Trainer run, "
                     "each in a fresh subprocess.",
            "notes": [f"torch threads per process: {args.threads}."]}
