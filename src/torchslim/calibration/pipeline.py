"""Calibration, written once for every method.

A method gives *what to measure* (a statistics object per layer with ``add_batch(x)`` fed the
layer's input) and *what to do* once a group of layers has been measured (``solve``). The
runner decides how to feed the data:

* :func:`run_sequential` for transformer models: the inputs of the first block are caught
  once, then blocks are processed one at a time. Each block is measured on its cached inputs,
  solved (e.g. quantized), and re-run to give the next block its inputs, so error from earlier
  blocks is seen by later ones and memory stays at one block plus its inputs.
* :func:`run_basic` for everything else (and for layers outside the blocks, such as ``lm_head``):
  forward the whole model over the batches with hooks on the target layers.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from torchslim.calibration.onload import BlockInputs, HiddenStore, onloader_of
from torchslim.core.archs import arch_of, chain_blocks
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.progress import track


class Stats(Protocol):
    def add_batch(self, x: torch.Tensor) -> None: ...


StatsFactory = Callable[[str, nn.Module], Stats]
Solver = Callable[[dict[str, tuple[nn.Module, Stats]]], None]
Forward = Callable[[nn.Module, dict[str, Any]], Any]


def calibration_batches(calibration: Any, n_samples: int, batch_size: int = 8) -> tuple[list[dict], Forward]:
    """Batches and the forward function from a Task (``n_samples`` samples in batches of ``batch_size``)
    or from a list of batches (dicts of model kwargs, used as given)."""
    if calibration is None:
        raise ConfigError("this method needs calibration data: pass calibration=<Task or list of batches>")
    if hasattr(calibration, "calibration_batches"):
        return calibration.calibration_batches(n_samples, batch_size), calibration.forward
    batches = list(calibration)
    if not batches or not all(isinstance(b, dict) for b in batches):
        raise ConfigError("calibration must be a Task or a non-empty list of dicts of model inputs")
    return batches[:n_samples], lambda model, b: model(**b)


def shared_input_groups(targets: dict[str, nn.Module], run_once: Callable[[], Any]) -> list[list[str]]:
    """Group target layers that receive the very same input tensor (q/k/v, gate/up), with one probe run."""
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda _m, args, n=n: seen.setdefault(n, args[0]))
               for n, m in targets.items()]
    try:
        run_once()
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    for name in targets:
        x = seen.get(name)
        for g in groups:
            if x is not None and seen.get(g[0]) is x:
                g.append(name)
                break
        else:
            groups.append([name])
    return groups


def _hook_stats(targets: dict[str, nn.Module], factory: StatsFactory,
                groups: list[list[str]] | None = None) -> tuple[dict[str, Stats], list]:
    """One statistics object per group of layers sharing an input (fed once), hooked on the group's first layer."""
    stats, handles = {}, []
    for group in groups or [[n] for n in targets]:
        s = factory(group[0], targets[group[0]])
        for n in group:
            stats[n] = s
        handles.append(targets[group[0]].register_forward_pre_hook(lambda _m, args, s=s: s.add_batch(args[0])))
    return stats, handles


@torch.no_grad()
def run_basic(model: nn.Module, targets: dict[str, nn.Module], batches: list[dict], forward: Forward,
              factory: StatsFactory, solve: Solver, desc: str = "calibrating") -> None:
    """Measure ``targets`` over full-model forwards, then ``solve`` them all at once."""
    if not targets:
        return
    if onloader_of(model) is not None:
        raise ConfigError(f"{desc}: {len(targets)} layer(s) ({next(iter(targets))}, ...) need whole-model forwards, "
                          "which layer-wise onloading cannot run (the blocks are not all in memory at once)")
    groups = shared_input_groups(targets, lambda: forward(model, batches[0]))
    stats, handles = _hook_stats(targets, factory, groups)
    try:
        for b in track(batches, desc):
            forward(model, b)
    finally:
        for h in handles:
            h.remove()
    solve({n: (targets[n], stats[n]) for n in targets})


class _Stop(Exception):
    pass


@torch.no_grad()
def catch_block_inputs(model: nn.Module, first_block: nn.Module, batches: list[dict], forward: Forward) -> list[tuple]:
    """``(args, kwargs)`` of ``first_block`` for each batch, without running the rest of the model."""
    caught: list[tuple] = []

    def hook(_m, args, kwargs):
        caught.append((tuple(None if _is_cache(a) else a for a in args), _without_cache(kwargs)))
        raise _Stop

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b in batches:
            try:
                forward(model, b)
            except _Stop:
                pass
    finally:
        handle.remove()
    if len(caught) != len(batches):
        raise TorchSlimError("calibration: the first transformer block was not reached by every batch")
    return caught


_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past")


def _is_cache(x: Any) -> bool:
    """A Hugging Face KV cache object (``transformers.cache_utils.Cache``, recognised without importing it):
    GPT-2 passes it to its blocks positionally."""
    return any(t.__name__ == "Cache" and t.__module__.endswith("cache_utils") for t in type(x).__mro__)


def _without_cache(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Block kwargs safe to replay many times: no KV cache object (it would grow on every run)."""
    kw = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS and not _is_cache(v)}
    if "use_cache" in kw:
        kw["use_cache"] = False
    return kw


def block_output(out: Any) -> torch.Tensor:
    """The hidden states a transformer block returns (first item of a tuple, or the tensor itself)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _block_inputs(model: nn.Module, caught: list[tuple]) -> BlockInputs:
    """The caught first-block inputs, hidden states in the store the model's onloader gives (spilling to disk
    beyond its budget), or all in memory."""
    loader = onloader_of(model)
    return BlockInputs.from_caught(caught, loader.new_store() if loader is not None else HiddenStore())


def _run_block(model: nn.Module, block: nn.Module, cache: BlockInputs) -> HiddenStore:
    """``block``'s hidden-state outputs for every cached input (the next block's inputs)."""
    loader = onloader_of(model)
    store = loader.new_store() if loader is not None else HiddenStore()
    for args, kwargs in cache:
        store.append(block_output(block(*args, **kwargs)))
    return store


@torch.no_grad()
def walk_blocks(model: nn.Module, batches: list[dict], forward: Forward,
                desc: str = "blocks") -> Iterator[tuple[str, nn.Module, BlockInputs, HiddenStore]]:
    """For each transformer block in order: ``(name, block, inputs, outputs)``, where ``inputs`` are the
    block's cached ``(args, kwargs)`` per batch and ``outputs`` its hidden states (the next block's inputs).
    Only one block's activations are held at a time; with an onloader attached (:mod:`.onload`) only one
    block's weights too."""
    blocks = chain_blocks(model)
    loader = onloader_of(model)
    cache = _block_inputs(model, catch_block_inputs(model, blocks[0][1], batches, forward))
    for bname, block in track(blocks, desc):
        if loader is not None:
            loader.enter(bname, block)
        outputs = _run_block(model, block, cache)
        yield bname, block, cache, outputs
        if loader is not None:
            loader.leave(bname, block)
        cache = cache.with_hidden(outputs)


def _head_from_cache(model: nn.Module, rest: dict[str, nn.Module], cache: list[tuple], factory: StatsFactory,
                     solve: Solver) -> dict[str, nn.Module]:
    """Measure the output head from the last block's cached outputs (``final_norm`` then ``head`` in the
    architecture table), instead of another whole-model pass. Returns the targets still left."""
    spec = arch_of(model)
    if spec is None or spec.head not in rest or spec.final_norm is None:
        return rest
    norm, head = model.get_submodule(spec.final_norm), rest[spec.head]
    stats = factory(spec.head, head)
    for args, _ in cache:
        stats.add_batch(norm(args[0]))
    solve({spec.head: (head, stats)})
    return {n: m for n, m in rest.items() if n != spec.head}


@torch.no_grad()
def run_sequential(model: nn.Module, targets: dict[str, nn.Module], batches: list[dict], forward: Forward,
                   factory: StatsFactory, solve: Solver, desc: str = "calibrating",
                   propagate_solved: bool = True) -> None:
    """Block-by-block calibration of ``targets`` (layers outside blocks go through :func:`run_basic`).

    With ``propagate_solved`` each block is run twice: once to measure, once after solving so the
    next block sees the compressed block's outputs. Without it, one run does both (the next block
    sees the original outputs): half the compute.
    """
    try:
        blocks = chain_blocks(model)
    except TorchSlimError:
        return run_basic(model, targets, batches, forward, factory, solve, desc)
    loader = onloader_of(model)
    cache = _block_inputs(model, catch_block_inputs(model, blocks[0][1], batches, forward))
    done: set[str] = set()
    for bname, block in track(blocks, desc):
        if loader is not None:
            loader.enter(bname, block)
        inside = {n: m for n, m in targets.items() if n.startswith(bname + ".")}
        outputs = None
        if inside:
            args0, kwargs0 = cache[0]
            groups = shared_input_groups(inside, lambda: block(*args0, **kwargs0))
            stats, handles = _hook_stats(inside, factory, groups)
            try:
                outputs = _run_block(model, block, cache)
            finally:
                for h in handles:
                    h.remove()
            solve({n: (inside[n], stats[n]) for n in inside})
            done |= set(inside)
        if outputs is None or propagate_solved:
            if outputs is not None:
                outputs.release()
            outputs = _run_block(model, block, cache)
        if loader is not None:
            loader.leave(bname, block)
        cache = cache.with_hidden(outputs)
    rest = _head_from_cache(model, {n: m for n, m in targets.items() if n not in done}, cache, factory, solve)
    run_basic(model, rest, batches, forward, factory, solve, desc + " (outside blocks)")


def pick_runner(sequential: bool, propagate_solved: bool = True,
                autocast_dtype: torch.dtype | None = None) -> Callable[..., None]:
    """The runner for a method: block-by-block (``sequential``) or whole-model forwards, optionally
    with the forwards under ``torch.autocast`` (e.g. bf16: faster, statistics from bf16 activations)."""
    runner = run_basic if not sequential else (
        lambda *a, **k: run_sequential(*a, propagate_solved=propagate_solved, **k))
    if autocast_dtype is None:
        return runner

    def autocast_runner(model: nn.Module, *a: Any, **k: Any) -> None:
        device = next(model.parameters()).device.type
        with torch.autocast(device, dtype=autocast_dtype):
            runner(model, *a, **k)

    return autocast_runner

