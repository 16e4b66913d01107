"""Merge an adapter into its base layers, undo it, and switch between adapters.

* :func:`merge_` writes each branch's update into its layer: float layers exactly, sparse layers inside their
  mask, packed layers re-quantized to their own format (round to nearest, scales fitted to the merged
  weight). It reports per storage how many layers it wrote and, for re-quantized layers, how much of the
  adapter's update the re-quantization lost (``update_error``: ``||W_q - W_merged|| / ||W_merged - W_base||``;
  0 is a perfect merge, 1 or more means the update drowned in the quantization grid: keep the branch).
* ``keep=True`` keeps the branches (marked merged, so they stop adding) and what :func:`unmerge_` needs to
  restore the base exactly; the default removes them (the deployable model).
* :func:`set_adapter` makes some adapters active and the others idle, without touching the base.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.core.resize import remove_added
from torchslim.core.surgery import get_module, replace_module
from torchslim.peft.branch import Branch, adapters, branches, layer_name
from torchslim.peft.weights import effective_weight, write_weight

log = logging.getLogger("torchslim.peft")
_SAVED = "_torchslim_unmerged"      # branch.__dict__ key: what unmerge restores
_SAVED_BIAS = "_torchslim_unmerged_bias"   # and a float layer's bias, for branches that change it


def _mergeable(model: nn.Module, adapter: str | None) -> list[tuple[str, Branch]]:
    found = [(n, b) for n, b in branches(model, adapter) if b.enabled and not b.merged]
    if not found:
        have = adapters(model)
        raise ConfigError(f"nothing to merge: no active adapter {adapter!r}" if adapter else "nothing to merge: "
                          "the model has no active adapter" + (f" (it has {', '.join(have)})" if have else ""))
    for n, b in found:
        if not callable(getattr(b, "merged_weight", None)):
            raise ConfigError(f"'{n}' is a {b.method} adapter, which adds a computation of its own rather than a "
                              "change of its layer's weights, and cannot be merged: keep it as a branch")
    return found


@torch.no_grad()
def merge_(model: nn.Module, adapter: str | None = None, *, keep: bool = False) -> dict[str, Any]:
    """Fold the active branches of ``adapter`` (None: every active adapter) into their layers. A branch that
    defines ``merged_bias(layer)`` (IA3's output scaling) has that bias written too."""
    counts: dict[str, int] = {}
    errors = []
    found = _mergeable(model, adapter)
    merged = ", ".join(repr(a) for a in dict.fromkeys(b.adapter for _, b in found))   # what the log names
    for name, branch in found:
        lname = layer_name(name)
        layer = get_module(model, lname)
        base = effective_weight(layer)
        target = branch.merged_weight(layer)
        bias = branch.merged_bias(layer) if callable(getattr(branch, "merged_bias", None)) else None
        saved = layer if _packedish(layer) else layer.weight.detach().clone()
        if keep and bias is not None and not _packedish(layer):
            branch.__dict__[_SAVED_BIAS] = layer.bias.detach().clone()
        new, how = write_weight(model, lname, layer, target)
        if bias is not None:            # a branch that scales the output scales the bias too (IA3)
            new.bias.copy_(bias.to(new.bias.dtype).reshape(new.bias.shape))
        counts[how] = counts.get(how, 0) + 1
        if how == "requantized":
            moved = (target - base).norm()
            errors.append(float((effective_weight(new) - target).norm() / moved.clamp_min(1e-12)))
        if keep:
            branch.merged = True
            branch.__dict__[_SAVED] = saved
        else:
            remove_added(model, name)
    report: dict[str, Any] = {"adapter": adapter, "layers": counts}
    if errors:
        report["update_error"] = {"mean": sum(errors) / len(errors), "max": max(errors)}
        if report["update_error"]["mean"] > 0.5:
            log.warning("merging adapter %s re-quantized %d layer(s): the rounding error is %.2fx the adapter's "
                        "update on average (0 would be a perfect merge; 1 or more: the update drowned in the "
                        "quantization grid); keep the adapter as a branch (skip merge_, or LoraConfig(merge=False))",
                        merged, counts["requantized"], report["update_error"]["mean"])
    log.info("merged adapter %s into %s", merged, ", ".join(f"{v} {k}" for k, v in counts.items()))
    return report


def _packedish(layer: nn.Module) -> bool:
    return not isinstance(getattr(layer, "weight", None), nn.Parameter)


@torch.no_grad()
def unmerge_(model: nn.Module, adapter: str | None = None) -> int:
    """Undo :func:`merge_` ``(keep=True)``: restore each layer exactly and make its branch add again."""
    done = 0
    for name, branch in branches(model, adapter):
        if not branch.merged:
            continue
        saved = branch.__dict__.pop(_SAVED, None)
        lname = layer_name(name)
        if isinstance(saved, nn.Module):
            replace_module(model, lname, saved)
        elif isinstance(saved, torch.Tensor):
            get_module(model, lname).weight.copy_(saved)
            bias = branch.__dict__.pop(_SAVED_BIAS, None)
            if bias is not None:
                get_module(model, lname).bias.copy_(bias)
            setter = getattr(get_module(model, lname), "set_mask", None)
            if callable(setter):
                setter(get_module(model, lname).mask.clone())
        else:
            raise ConfigError(f"'{name}' was merged without keep=True (or restored from an artifact): its base "
                              "is gone; reload the base to unmerge")
        branch.merged = False
        done += 1
    if not done:
        raise ConfigError(f"nothing to unmerge for adapter {adapter!r}")
    return done


def set_adapter(model: nn.Module, adapter: str | list[str] | None) -> list[str]:
    """Make ``adapter`` (a name, a list of names, or None for none: the bare base) the active adapter(s);
    returns the active names. The base is untouched, so switching is free."""
    wanted = [] if adapter is None else [adapter] if isinstance(adapter, str) else list(adapter)
    have = adapters(model)
    missing = [a for a in wanted if a not in have]
    if missing:
        raise ConfigError(f"the model has no adapter {missing[0]!r} (it has {', '.join(have) or 'none'})")
    for _, b in branches(model):
        if b.merged and b.adapter not in wanted:
            raise ConfigError(f"adapter {b.adapter!r} is merged into the base: unmerge it before switching it off")
        b.enabled = b.adapter in wanted
    return wanted


def delete_adapter(model: nn.Module, adapter: str) -> int:
    """Remove every branch of ``adapter`` (it must not be merged)."""
    found = branches(model, adapter)
    if not found:
        raise ConfigError(f"the model has no adapter {adapter!r}")
    for name, b in found:
        if b.merged:
            raise ConfigError(f"adapter {adapter!r} is merged into the base: unmerge it first")
        remove_added(model, name)
    return len(found)
