"""Gradient checkpointing for the Trainer (``TrainConfig.gradient_checkpointing``).

The activations inside each transformer block are not kept for backward: backward recomputes them from the
block's input. Activation memory then holds about one hidden state per block (plus what runs outside the
blocks) instead of every intermediate tensor of every block, for about one more forward pass per step.
The mathematics is unchanged: same loss, same gradients (dropout masks are replayed from the saved RNG state).

* Hugging Face models: their own switch, ``gradient_checkpointing_enable`` (``activation_checkpointing_enable``
  in transformers 5) with ``use_reentrant=False``, switched off again after training when it was off before.
* Other models: every block the architecture table finds (:func:`torchslim.core.archs.find_blocks`) runs
  under ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` while gradients are on; the blocks'
  own ``forward`` is restored after training. Forward hooks on a block run once, not again on recompute.
* No block found: a warning says checkpointing was requested but nothing could be checkpointed.

``use_reentrant=False`` is what lets gradients reach small trainable modules inside a block (LoRA-style
adapters over a frozen, possibly packed base) when the block's input does not require grad.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from torchslim.core.archs import find_blocks
from torchslim.core.errors import TorchSlimError

log = logging.getLogger("torchslim.train")


def _hf_switch(model: nn.Module, what: str) -> Any:
    """A Hugging Face model's checkpointing method or property (``enable``, ``disable``, ``is``): transformers 5
    names it ``activation_checkpointing``, and keeps ``gradient_checkpointing`` as a deprecated alias."""
    names = {"enable": ("activation_checkpointing_enable", "gradient_checkpointing_enable"),
             "disable": ("activation_checkpointing_disable", "gradient_checkpointing_disable"),
             "is": ("is_activation_checkpointing", "is_gradient_checkpointing")}[what]
    new, old = names
    return getattr(model, new) if hasattr(type(model), new) else getattr(model, old, None)


def _hf_supported(model: nn.Module) -> bool:
    return callable(_hf_switch(model, "enable")) and bool(getattr(model, "supports_gradient_checkpointing", False))


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)          # evaluation under no_grad: nothing to save, nothing to recompute
    return run


@contextlib.contextmanager
def _hf_checkpointing(model: nn.Module) -> Iterator[str]:
    was_on = bool(_hf_switch(model, "is"))
    if was_on:
        log.info("gradient checkpointing: already enabled on %s, left as it is", type(model).__name__)
    elif hasattr(type(model), "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = getattr(model, "config", None)
    cache = getattr(config, "use_cache", None)
    if cache:                      # training needs no KV cache, and transformers warns that it is switched off
        config.use_cache = False
    try:
        yield "transformers"
    finally:
        if cache:
            config.use_cache = cache
        if not was_on:
            _hf_switch(model, "disable")()


@contextlib.contextmanager
def _block_checkpointing(blocks: list[nn.Module]) -> Iterator[str]:
    saved = [(b, b.__dict__.get("forward")) for b in blocks]     # an instance-level forward, if a block had one
    for b in blocks:
        b.forward = _checkpointed(b.forward)
    try:
        yield f"{len(blocks)} blocks"
    finally:
        for b, own in saved:
            if own is None:
                b.__dict__.pop("forward", None)
            else:
                b.forward = own


def _blocks(model: nn.Module) -> list[nn.Module]:
    try:
        return [b for _, b in find_blocks(model)]
    except TorchSlimError:
        return []


@contextlib.contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[str]:
    """Checkpoint ``model``'s transformer blocks inside the ``with`` (the model is left as found after it).
    Yields how: ``"transformers"``, ``"N blocks"``, ``"none"`` (nothing found: warned) or ``"off"``."""
    if not enabled:
        yield "off"
        return
    if _hf_supported(model):
        with _hf_checkpointing(model) as how:
            yield how
        return
    blocks = _blocks(model)
    if not blocks:
        warnings.warn(f"gradient_checkpointing=True, but no transformer blocks of {type(model).__name__} were found "
                      "(neither a Hugging Face model that supports it nor an architecture-table row): training "
                      "runs without checkpointing", stacklevel=2)
        yield "none"
        return
    with _block_checkpointing(blocks) as how:
        log.info("gradient checkpointing: %s of %s", how, type(model).__name__)
        yield how
