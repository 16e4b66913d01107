"""The parallel option at the edges: recipes' training stages, ``torchslim finetune`` and ``torchslim run``
under torchrun (2 processes, gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchslim.pruning import UnstructuredConfig
from torchslim.recipes.stages import with_parallel
from torchslim.train import FinetuneConfig, ParallelKind, TrainConfig


def test_with_parallel_sets_every_training_stage_and_leaves_the_others() -> None:
    own = with_parallel(FinetuneConfig(train=TrainConfig(steps=7, parallel="ddp")), "fsdp")
    assert own.train.parallel is ParallelKind.FSDP and own.train.steps == 7
    default = with_parallel(FinetuneConfig(), "ddp")             # no TrainConfig: the defaults, not a no-op
    assert default.train == TrainConfig(parallel="ddp")
    assert with_parallel(FinetuneConfig(), None).train is None
    one_shot = UnstructuredConfig()
    assert with_parallel(one_shot, "fsdp") is one_shot


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHSLIM_PROGRESS": "0"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [*launcher, "--standalone", "--nproc-per-node", "2", "-m", "torchslim.cli.main", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.slow
def test_torchslim_run_qlora_recipe_on_two_processes_with_fsdp(tmp_path: Path) -> None:
    """int4 GPTQ then LoRA (gradient checkpointing on) as a recipe, the LoRA stage sharded: rank 0 writes the
    artifact and the run state, the other rank's hidden folder is gone, the history says how it trained."""
    out = tmp_path / "out"
    proc = _torchrun(["run", "int4-qlora", "--model", "tiny-llama", "--out", str(out), "--max-steps", "3",
                      "--parallel", "fsdp", "--no-report"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    train = [h for h in manifest["history"] if h.get("details", {}).get("world_size")]
    assert train and train[-1]["details"]["parallel"] == "fsdp" and train[-1]["details"]["world_size"] == 2
    assert not list(tmp_path.glob(".out.rank*"))
    import torchslim

    assert torchslim.load(out) is not None
