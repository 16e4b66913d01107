"""Workloads of the FSDP tests: a short distillation of tiny-llama, with and without checkpoints.

Run as a script under ``torchrun`` (``python _fsdp_helpers.py MODE OUT [CKPT]``) it writes ``rank<r>.json``
into ``OUT``. Modes: ``all`` (the comparisons of test_fsdp.py; ``CKPT`` holds a 1-process checkpoint to
resume), ``slow`` (checkpoints every 3 steps, then crawls so that a test can kill -9 it after the first one).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from torchslim.train import LambdaHook, ParallelKind, TrainConfig
from torchslim.train.distributed import init_distributed
from torchslim.train.fsdp import choose_parallel

STEPS = 8
EVERY = 3


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def train_config(**kw: Any) -> TrainConfig:
    base = dict(steps=STEPS, batch_size=4, lr=3e-3, optimizer="adamw", schedule="cosine", warmup_steps=1,
                max_grad_norm=1.0, seed=5, progress=False, eval_at_end=False, parallel="fsdp")
    return TrainConfig(**{**base, **kw})


def run_stage(model: torch.nn.Module, config: Any, ctx: Any, task: Any) -> dict[str, Any]:
    """prepare -> fit -> convert, as the verbs run a training config; the history and the converted model's
    logits on a fixed batch. Added modules start from a different random draw on each rank: the engine must
    start every rank from rank 0's."""
    from torchslim.train.transform import fit

    torch.manual_seed(100 + rank())
    prepared = config.prepare(model, ctx)
    res = fit(model, config, prepared, ctx)[-1]
    model = config.convert(model, prepared).eval()
    batch = next(task.train_batches(2, seed=9))
    with torch.no_grad():
        logits = task.forward(model, batch).logits[:, :4, :8]
    return {"losses": res.losses, "parallel": res.parallel, "world_size": res.world_size,
            "resumed_from": res.resumed_from, "class": type(model).__name__, "logits": logits.flatten().tolist(),
            "plain": all(type(p) is torch.nn.Parameter for p in model.parameters()),
            "tied": model.lm_head.weight is model.model.embed_tokens.weight}


def distill(train: TrainConfig, hidden: float = 1.0, hooks: tuple = ()) -> dict[str, Any]:
    """Distil a narrower tiny-llama (hidden 32, so the hidden-state term trains added projections) from tiny-llama."""
    from torchslim.core.context import ApplyContext
    from torchslim.distill import DistillConfig
    from torchslim.zoo.tiny import tiny_llama

    teacher = tiny_llama(0)
    student = tiny_llama(1, hidden_size=32, intermediate_size=64).model
    config = DistillConfig(output_weight=1.0, hidden_weight=hidden, train=train)
    return run_stage(student, config, ApplyContext(task=teacher.task, teacher=teacher.model, hooks=tuple(hooks)),
                     teacher.task)


def lora_on_int4(train: TrainConfig) -> dict[str, Any]:
    """LoRA over a packed int4 base (frozen; its codes are buffers, not parameters), then merged."""
    import torchslim
    from torchslim.core.context import ApplyContext
    from torchslim.peft import LoraConfig
    from torchslim.quantization import IntFormat, PerGroup, WeightOnlyConfig
    from torchslim.zoo.tiny import tiny_llama

    lm = tiny_llama(0)
    torchslim.quantize_(lm.model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(32)))
    return run_stage(lm.model, LoraConfig(r=4, train=train), ApplyContext(task=lm.task), lm.task)


def qat(train: TrainConfig) -> dict[str, Any]:
    """QAT of int8 weights and static int8 activations (learned LSQ steps: scalar parameters, which FSDP keeps
    whole on every rank and averages), converted to the static int8 kernels."""
    from torchslim.core.context import ApplyContext
    from torchslim.quantization import ActQuant, IntFormat, PerChannel, QATConfig
    from torchslim.zoo.tiny import tiny_llama

    lm = tiny_llama(0)
    config = QATConfig(format=IntFormat(8, symmetric=True), granularity=PerChannel(), activations=ActQuant(),
                       n_samples=4, train=train)
    return run_stage(lm.model, config, ApplyContext(task=lm.task, calibration=lm.task), lm.task)


def crawl_after(step: int, seconds: float) -> LambdaHook:
    """A hook that sleeps after each step past ``step`` (so a kill lands after that step's checkpoint)."""
    return LambdaHook(on_step_end=lambda trainer, s: time.sleep(seconds) if s > step else None)


def run_all(ckpt: str) -> dict[str, Any]:
    """``ckpt/resume`` holds a 1-process checkpoint to continue; ``ckpt/two`` receives this run's checkpoints."""
    two = train_config(checkpoint_dir=str(Path(ckpt, "two")), checkpoint_every=EVERY, keep_checkpoints=10)
    return {"output": distill(two, hidden=0.0),
            "hidden": distill(train_config()),
            "hidden_ddp": distill(train_config(parallel="ddp")),
            "lora": lora_on_int4(train_config(grad_accum=2, lr=1e-2)),
            "qat": qat(train_config(lr=1e-3)),
            "resume": distill(train_config(checkpoint_dir=str(Path(ckpt, "resume")), resume=True), hidden=0.0),
            "auto": choose_parallel(ParallelKind.AUTO, torch.nn.Linear(4, 4), init_distributed(), [])}


def main(mode: str, out: str, ckpt: str) -> None:
    Path(out, f"pid{rank()}").write_text(str(os.getpid()))    # torchrun starts workers in their own sessions
    if mode == "all":
        result = run_all(ckpt)
    elif mode == "slow":
        result = distill(train_config(checkpoint_dir=ckpt, checkpoint_every=EVERY), hidden=0.0,
                         hooks=(crawl_after(EVERY, 3.0),))
    else:
        raise SystemExit(f"unknown mode {mode}")
    Path(out, f"rank{rank()}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2], sys.argv[3])
