"""FSDP beside DDP under torchrun on CPU (gloo): a distillation stage on 1 process and on 2, and a kill -9.

A Llama-architecture student (hidden 512, 6 blocks, 19M parameters, seeded random weights) learns from a teacher
of the same shape (another seed) by logit distillation, batch 4 x 128 tokens, AdamW, 12 steps. Variants, each one
``torchrun`` launch under ``flock /tmp/torchslim-bench.lock``, one thread per process (so 1 process uses one
core and 2 processes two; see ``THREADS``):

- ``1 process``: no wrapper;
- ``2 x DDP``: ``TrainConfig.parallel="ddp"``; ``2 x FSDP``: ``parallel="fsdp"`` (fully_shard per block + root).

Per process: median seconds per step (steps 3..12), peak RSS during training (VmHWM reset when training starts,
after the model is built and sharded), peak RSS of the whole process, and the bytes of training state it holds
(its parameters, gradients and optimizer state: shards under FSDP). Then the kill -9 check: a 2-process FSDP run
checkpointing every 4 steps is killed (SIGKILL to torchrun and both workers) after its first checkpoint, and
1 process resumes it; its losses are compared with the uninterrupted 1-process run.

Regenerates docs/results/scale_fsdp.md (+ .json).

    python benchmarks/scale/fsdp.py [--steps 12] [--rounds 1]
    python benchmarks/scale/fsdp.py --smoke --out /tmp/fsdp.md        # tiny model, 4 steps: a quick trial
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import LOCK, ROOT, Row, machine_line, write_table  # noqa: E402

SHAPE = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
             num_key_value_heads=4)
SMOKE_SHAPE: dict[str, int] = {}
VARIANTS = {"1 process": ("none", 1), "2 x DDP": ("ddp", 2), "2 x FSDP": ("fsdp", 2)}
THREADS = 1           # per process, every variant: 2 threads of one process on a busy 2-core machine spun for
                      # 20 s a step (OpenMP under oversubscription), 9x the 2-process step


# -- the worker (one per process, under torchrun) ------------------------------------------------
def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def meter() -> Any:
    """A TrainHook: per-step wall time, peak RSS before and while training, training-state bytes held."""
    from torchslim.train import TrainHook

    class Meter(TrainHook):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.state_bytes = self.peak_train = self.peak_before = self.rss_start = 0

        def on_start(self, trainer: Any) -> None:
            self.peak_before, self.rss_start = _vm("VmHWM"), _vm("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")           # VmHWM := the current RSS
            self._t = time.perf_counter()

        def on_step_end(self, trainer: Any, step: int) -> None:
            now = time.perf_counter()
            self.times.append(now - self._t)
            self._t = now

        def on_end(self, trainer: Any) -> None:                      # before the engine gathers the model back
            self.peak_train = _vm("VmHWM")
            params = list(trainer.model.parameters())
            opt = [v for st in trainer.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
            self.state_bytes = sum(_local_bytes(p) for p in params) + sum(_local_bytes(v) for v in opt) \
                + sum(_local_bytes(p.grad) for p in params if p.grad is not None)

    return Meter()


def worker(parallel: str, steps: int, smoke: bool, out: Path, ckpt: str | None, every: int) -> None:
    from torchslim.core.context import ApplyContext
    from torchslim.distill import DistillConfig
    from torchslim.train import TrainConfig
    from torchslim.train.transform import fit
    from torchslim.zoo.tiny import build_tiny_llama, tiny_llama

    Path(out, f"pid{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))   # for the kill -9 (own sessions)
    shape = SMOKE_SHAPE if smoke else SHAPE
    loaded = tiny_llama(0, **shape)
    student = build_tiny_llama(1, **shape)
    train = TrainConfig(steps=steps, batch_size=4, lr=1e-3, optimizer="adamw", schedule="cosine", warmup_steps=1,
                        max_grad_norm=1.0, seed=3, progress=False, eval_at_end=False,
                        parallel="fsdp" if parallel == "none" else parallel,
                        checkpoint_dir=ckpt, checkpoint_every=every if ckpt else 0, resume=bool(ckpt))
    config = DistillConfig(output_weight=1.0, train=train)
    m = meter()
    ctx = ApplyContext(task=loaded.task, teacher=loaded.model, hooks=(m,))
    prepared = config.prepare(student, ctx)
    res = fit(student, config, prepared, ctx)[-1]
    rank = int(os.environ.get("RANK", "0"))
    doc = {"losses": res.losses, "parallel": res.parallel, "world_size": res.world_size,
           "resumed_from": res.resumed_from, "step_s": m.times, "peak_train_rss": m.peak_train,
           "peak_rss": max(m.peak_before, m.peak_train), "state_bytes": m.state_bytes, "rss_start": m.rss_start,
           "params": sum(p.numel() for p in student.parameters()), "threads": torch.get_num_threads()}
    (out / f"rank{rank}.json").write_text(json.dumps(doc))


# -- the driver --------------------------------------------------------------------------------
def _cmd(procs: int, args: list[str]) -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", "--nproc-per-node", str(procs), __file__, "--worker", *args]


def _env(procs: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": str(ROOT / "src")}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def launch(parallel: str, procs: int, steps: int, smoke: bool, ckpt: str | None = None, every: int = 0,
           timed: bool = True) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        args = [parallel, str(steps), str(int(smoke)), d, ckpt or "-", str(every)]
        cmd = (["flock", LOCK] if timed else []) + _cmd(procs, args)
        proc = subprocess.run(cmd, env=_env(procs), capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"{parallel} x {procs} failed:\n{proc.stderr[-4000:]}")
        return [json.loads(Path(d, f"rank{r}.json").read_text()) for r in range(procs)]


def kill_and_resume(steps: int, smoke: bool, every: int) -> dict[str, Any]:
    """2-process FSDP, SIGKILL after its first checkpoint, resumed by 1 process."""
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d, "ckpt")
        args = ["fsdp", str(steps), str(int(smoke)), d, str(ckpt), str(every)]
        proc = subprocess.Popen(_cmd(2, args), env=_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + 1200
        while not any(ckpt.glob("step-*/state.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [int(p.read_text()) for p in Path(d).glob("pid*")]
        os.killpg(proc.pid, signal.SIGKILL)          # torchrun; its workers run in sessions of their own
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)
        killed_at = sorted(p.parent.name for p in ckpt.glob("step-*/state.json"))
        finished = Path(d, "rank0.json").exists()
        resumed = launch("none", 1, steps, smoke, str(ckpt), every, timed=False)[0]
    return {"checkpoints_at_kill": killed_at, "finished_before_kill": finished, "resumed": resumed}


def _mib(b: float) -> float:
    return round(b / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=1, help="launches per variant, interleaved")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "scale_fsdp.md")
    ap.add_argument("--worker", nargs=6, metavar=("PARALLEL", "STEPS", "SMOKE", "OUT", "CKPT", "EVERY"))
    a = ap.parse_args()
    if a.worker:
        parallel, steps, smoke, out, ckpt, every = a.worker
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        worker(parallel, int(steps), smoke == "1", Path(out), None if ckpt == "-" else ckpt, int(every))
        return
    runs: dict[str, list[list[dict[str, Any]]]] = {k: [] for k in VARIANTS}
    a.load = [os.getloadavg()[0]]
    for _ in range(a.rounds):
        for name, (parallel, procs) in VARIANTS.items():
            runs[name].append(launch(parallel, procs, a.steps, a.smoke))
            print(name, "done", flush=True)
    a.load.append(os.getloadavg()[0])
    every = max(a.steps // 3, 1)
    kill = kill_and_resume(a.steps, a.smoke, every)
    report(a, runs, kill, every)


def report(a: argparse.Namespace, runs: dict[str, list[list[dict[str, Any]]]], kill: dict[str, Any],
           every: int) -> None:
    ref = runs["1 process"][0][0]["losses"]
    rows = []
    for name, launches in runs.items():
        ranks = launches[0]
        steps = [t for launch_ in launches for t in launch_[0]["step_s"][2:]]
        dev = max(abs(x - y) / abs(y) for x, y in zip(ranks[0]["losses"], ref))
        rows.append(Row(name, f"threads per process {ranks[0]['threads']}; ran as {ranks[0]['parallel']}", {
            "s / step (median)": round(statistics.median(steps), 3),
            "RSS at training start, MiB / process": max(_mib(r["rss_start"]) for r in ranks),
            "peak RSS training, MiB / process": max(_mib(r["peak_train_rss"]) for r in ranks),
            "peak RSS whole run, MiB / process": max(_mib(r["peak_rss"]) for r in ranks),
            "training state, MiB / process": max(_mib(r["state_bytes"]) for r in ranks),
            "final loss": round(ranks[0]["losses"][-1], 5),
            "max rel. loss gap to 1 process": f"{dev:.1e}"}))
    res = kill["resumed"]
    start = res["resumed_from"] or 0
    gap = max((abs(x - y) / abs(y) for x, y in zip(res["losses"][start:], ref[start:])), default=float("nan"))
    curves = {name: launches[0][0]["losses"] for name, launches in runs.items()}
    notes = [
        f"Student: Llama architecture, {runs['1 process'][0][0]['params'] / 1e6:.1f}M parameters "
        f"({'smoke shape' if a.smoke else SHAPE}), seeded random weights; teacher of the same shape (another seed), "
        f"not sharded (every process keeps a copy). Logit distillation, global batch 4 x 128 tokens, AdamW, "
        f"{a.steps} steps, max grad norm 1. gloo on CPU; {a.rounds} launch(es) per variant under flock {LOCK}. "
        f"1-minute load average of the machine (shared with other work) before and after the timed launches: "
        f"{a.load[0]:.1f}, {a.load[1]:.1f} on {os.cpu_count()} cores: seconds per step are indicative only.",
        "One thread per process. The 1-process run with 2 threads instead took 22.7 s a step against 2.6 s for "
        "2 x DDP in an earlier run of this script on this machine (load average about 17): OpenMP threads "
        "spinning on oversubscribed cores, not a property of the engine.",
        "Training state = parameters + gradients + AdamW moments this process holds (its shards under FSDP), at "
        "the end of training. Peak RSS training = VmHWM reset when training starts (model built, sharded, "
        "optimizer made) and read at the end; whole run = the larger of that and the peak before training (imports, both models built whole before sharding).",
        "Loss curves (per step): " + "; ".join(f"{k}: {', '.join(f'{x:.4f}' for x in v)}" for k, v in curves.items()),
        f"kill -9: a 2-process FSDP run checkpointing every {every} steps was killed with SIGKILL (torchrun and both "
        f"workers) once its first checkpoint was written (checkpoints then: {kill['checkpoints_at_kill']}; "
        f"finished before the kill: {kill['finished_before_kill']}). 1 process resumed it from step {start} "
        f"(ran as {res['parallel']}): max relative gap of its losses after step {start} to the uninterrupted "
        f"1-process run {gap:.1e}.",
    ]
    intro = ("Training stages across torchrun processes on CPU: FSDP (fully_shard per transformer block + root) "
             "beside DDP and 1 process, same global batch. Regenerate: `python benchmarks/scale/fsdp.py`.")
    cols = ["s / step (median)", "RSS at training start, MiB / process", "peak RSS training, MiB / process", "peak RSS whole run, MiB / process",
            "training state, MiB / process", "final loss", "max rel. loss gap to 1 process"]
    write_table(a.out, "Scale: FSDP and DDP training on CPU", intro, cols, rows, notes)
    extra = {"machine": machine_line(), "curves": curves, "kill": kill, "rows": [r.values | {"name": r.name}
                                                                                  for r in rows]}
    a.out.with_suffix(".json").write_text(json.dumps(extra, indent=1, default=str))
    print(a.out.read_text())


if __name__ == "__main__":
    main()
