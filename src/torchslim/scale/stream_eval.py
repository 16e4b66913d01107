"""Perplexity of an artifact larger than memory, by block streaming.

The model is rebuilt with its stored tensors on the meta device (:func:`torchslim.artifact.format.load_structure`)
and only the layers outside the blocks are read. Then:

1. the first block's inputs are caught for every evaluation batch (the forward stops there);
2. each block is read from the artifact once, run on every batch's hidden states (which spill to disk beyond a
   budget), and released: all windows through block 1, then block 2, ...;
3. the task's own evaluation runs with each block replaced by a stand-in that passes its input on, the last one
   handing back the last block's real output for that batch, so the final norm, head and loss are the
   task's code on the very hidden states an in-memory run computes: the same perplexity.

The cost over an in-memory evaluation (reading every block's weights, a second embedding pass) is measured and
stated.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.calibration.onload import BlockInputs, HiddenStore
from torchslim.calibration.pipeline import block_output, catch_block_inputs
from torchslim.core.errors import ConfigError
from torchslim.scale.files import TensorFiles, human, parse_bytes
from torchslim.scale.source import artifact_task, block_prefixes, in_block, load_tensors


@dataclass
class StreamStats:
    blocks: int = 0
    batches: int = 0
    read_bytes: int = 0
    read_seconds: float = 0.0
    block_seconds: float = 0.0
    seconds: float = 0.0
    spilled_bytes: int = 0

    def line(self) -> str:
        other = self.seconds - self.read_seconds - self.block_seconds
        return (f"block streaming: {self.blocks} blocks read once each ({human(self.read_bytes)} in "
                f"{self.read_seconds:.1f} s), {self.batches} batches through every block in {self.block_seconds:.1f} s,"
                f" embeddings, head and loss {other:.1f} s; total {self.seconds:.1f} s, of which "
                f"{100 * self.read_seconds / max(self.seconds, 1e-9):.0f}% reading weights, which an in-memory "
                "evaluation of a model that fits does not spend"
                + (f"; {human(self.spilled_bytes)} of hidden states spilled to disk" if self.spilled_bytes else ""))


class _Stand(nn.Module):
    """A block's stand-in: passes its input on, or (the last block) hands back the real outputs in call order."""

    def __init__(self, outputs: HiddenStore | None, as_tuple: bool) -> None:
        super().__init__()
        self.outputs, self.as_tuple, self.calls = outputs, as_tuple, 0

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.outputs is not None:
            real = self.outputs[self.calls]
            if real.shape != hidden.shape:
                raise ConfigError("block streaming: the evaluation batches changed between passes")
            hidden = real
        self.calls += 1
        return (hidden,) if self.as_tuple else hidden


@torch.inference_mode()
def stream_perplexity(path: str | Path, task: Any = None, *, cache_memory: str | int | None = None,
                      work: str | Path | None = None) -> tuple[dict[str, float], StreamStats]:
    """The task's perplexity of the artifact at ``path`` (its own task by default), reading one block at a time.
    ``cache_memory``: bytes of hidden states kept in memory before spilling to ``work`` (default: a temporary
    folder beside the artifact). Returns ``(metrics, stats)``."""
    import shutil
    import tempfile

    from torchslim.artifact.format import load_structure

    t0 = time.perf_counter()
    path = Path(path)
    from torchslim.artifact.format import apply_layer_formats

    model, manifest, wpath = load_structure(path, defer=lambda _name: True)
    prefixes = block_prefixes(model)
    apply_layer_formats(model, manifest, [n for n in manifest["layers"] if not in_block(n + ".", prefixes)])
    if task is None:
        task = artifact_task(path, manifest, model)
    if task is None or not hasattr(task, "eval_batches"):
        raise ConfigError(f"{path}: block streaming evaluates causal language models (perplexity); no such task")
    files, aliases = TensorFiles([wpath]), manifest.get("aliases", {})
    load_tensors(model, files, aliases=aliases, skip=prefixes)
    stats = StreamStats(blocks=len(prefixes))
    folder = Path(tempfile.mkdtemp(prefix=".stream-", dir=work or path.parent))
    budget = parse_bytes(cache_memory) if cache_memory is not None else None
    try:
        metrics = _stream(model, manifest, task, prefixes, (files, aliases), HiddenStore(budget, folder), stats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    stats.seconds = time.perf_counter() - t0
    return metrics, stats


def _stream(model: nn.Module, manifest: dict[str, Any], task: Any, prefixes: list[str], weights: tuple,
            first: HiddenStore, stats: StreamStats) -> dict[str, float]:
    from torchslim.artifact.format import apply_layer_formats

    batches = task.eval_batches()
    stats.batches = len(batches)
    parent = model.get_submodule(prefixes[0].rpartition(".")[0])
    keys = [p.rpartition(".")[2] for p in prefixes]
    model.eval()
    cache = BlockInputs.from_caught(catch_block_inputs(model, parent._modules[keys[0]], batches, task.forward), first)
    as_tuple = False
    for name, key in zip(prefixes, keys):
        t = time.perf_counter()
        apply_layer_formats(model, manifest, [n for n in manifest["layers"] if in_block(n + ".", [name])])
        block = parent._modules[key]
        stats.read_bytes += load_tensors(block, weights[0], prefix=name + ".", aliases=weights[1])
        stats.read_seconds += time.perf_counter() - t
        t = time.perf_counter()
        out = HiddenStore(first.budget, first.folder)
        for args, kwargs in cache:
            raw = block(*args, **kwargs)
            as_tuple = isinstance(raw, (tuple, list))
            out.append(block_output(raw))
        stats.spilled_bytes += out.spilled
        stats.block_seconds += time.perf_counter() - t
        parent._modules[key] = _Stand(None, as_tuple)      # the block and its weights are dropped
        del block
        cache = cache.with_hidden(out)
    for key in keys:
        parent._modules[key].as_tuple = as_tuple
    parent._modules[keys[-1]].outputs = cache.hidden
    try:
        return task.evaluate(model)
    finally:
        cache.hidden.release()
