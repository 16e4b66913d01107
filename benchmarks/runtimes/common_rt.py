"""What both runtime benchmarks share: the machine line with each runtime's version and threads, a second text
domain, and timing every runtime's forward with the harness's own interleaved loop."""
from __future__ import annotations

import contextlib
import importlib.metadata
import re
from typing import Any

import common
import torch

from torchslim.eval.speed import forward_fn
from torchslim.runtime.machine import machine_info, machine_line
from torchslim.runtime.timing import measure_interleaved

ORT_QUIET = {"session.intra_op.allow_spinning": "0"}      # ONNX Runtime's workers sleep after a run (see notes)


def timing_lock() -> contextlib.AbstractContextManager[str]:
    """The shared benchmark lock (common.timing_lock), queued behind the other runtime benchmark: the two runtime
    benchmarks never overlap, with or without the shared lock."""
    return common.timing_lock("runtimes")


def versions() -> str:
    out = []
    for pkg in ("onnxruntime", "openvino", "llama-cpp-python"):
        try:
            out.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{pkg} not installed")
    return ", ".join(out)


def machine(load_at_start: tuple[float, ...] | None = None) -> dict[str, Any]:
    """The machine line with runtime versions and the load average (other work on the machine slows every row)."""
    import os

    info = machine_info()
    load = os.getloadavg()
    seen = f"load average {load[0]:.1f} at the end" + (f", {load_at_start[0]:.1f} at the start" if load_at_start else "")
    return {"line": f"{machine_line(info)}; {versions()}; {seen}", "load_end": load, "load_start": load_at_start,
            **info}


def pydoc_sentences(n: int = 124) -> list[str]:
    """Sentences of Python's held-out reference topics (the second domain beside the GPL-3 sentences)."""
    from torchslim.data.text import pydoc_text

    parts = re.split(r"(?<=[.!?])\s+", " ".join(pydoc_text(True).split()))
    return [p for p in parts if 8 <= len(p.split()) <= 60][:n]


def interleaved_forwards(runners: dict[str, torch.nn.Module], task: Any, batch: int, seq: int, warmup: int,
                         iters: int) -> dict[str, Any]:
    """Median latency of one forward per runner at ``batch x seq``: the harness's ``forward_fn`` (the task's forward)
    timed by ``measure_interleaved`` (A B C A B C ...), every runner fed the same inputs."""
    inputs = task.example_inputs(batch, seq)
    return measure_interleaved({k: forward_fn(m, task, inputs) for k, m in runners.items()}, warmup, iters)
