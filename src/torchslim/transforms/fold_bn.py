"""Fold BatchNorm2d into the Conv2d before it: an exact transform for inference.

In eval mode ``bn(conv(x)) = conv'(x)`` with, per output channel ``o``,
``k_o = gamma_o / sqrt(var_o + eps)``, ``W'_o = k_o * W_o`` and ``b'_o = k_o * (b_o - mean_o) + beta_o``.

:func:`fold_bn_` finds conv -> BN edges with torch.fx (the conv's output must go only into the
BN), swaps the conv for a :class:`FoldedConv2d` (a ``Conv2d`` that always has a bias) and the BN
for a :class:`~torchslim.transforms.graph.FoldedAway` identity. Both are registered module formats,
so a folded model saves and loads as an artifact; quantizers see ``FoldedConv2d`` as a ``Conv2d``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.core.errors import TorchSlimError
from torchslim.core.modules import register_module_format
from torchslim.core.surgery import get_module, replace_module
from torchslim.transforms.graph import FoldedAway, module_chains, trace


def fold_conv_bn_weights(weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor,
                         eps: float, gamma: torch.Tensor | None, beta: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', b')`` of the conv that computes ``bn(conv(x))`` (pure; float64 inside for exactness)."""
    k = torch.rsqrt(var.double() + eps)
    if gamma is not None:
        k = k * gamma.double()
    b = bias.double() if bias is not None else torch.zeros_like(mean, dtype=torch.float64)
    new_b = (b - mean.double()) * k + (beta.double() if beta is not None else 0.0)
    new_w = weight.double() * k.reshape(-1, *([1] * (weight.dim() - 1)))
    return new_w.to(weight.dtype), new_b.to(weight.dtype)


def _conv_kwargs(conv: nn.Conv2d) -> dict[str, Any]:
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel_size": tuple(conv.kernel_size),
            "stride": tuple(conv.stride),
            "padding": conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),
            "dilation": tuple(conv.dilation), "groups": conv.groups, "padding_mode": conv.padding_mode}


@register_module_format
class FoldedConv2d(nn.Conv2d):
    """A ``Conv2d`` with a BatchNorm folded in (always biased). Computes exactly like ``nn.Conv2d``."""

    def __init__(self, folded: str = "", **conv_kwargs: Any):
        super().__init__(bias=True, **conv_kwargs)
        self.folded = folded

    @classmethod
    def from_conv_bn(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, bn_name: str = "") -> FoldedConv2d:
        if bn.running_mean is None or bn.running_var is None:
            raise TorchSlimError(f"cannot fold BatchNorm '{bn_name}': it has no running statistics")
        if bn.num_features != conv.out_channels:
            raise TorchSlimError(f"cannot fold BatchNorm '{bn_name}': {bn.num_features} features after a conv "
                                 f"with {conv.out_channels} output channels")
        m = cls(bn_name, **_conv_kwargs(conv)).to(device=conv.weight.device, dtype=conv.weight.dtype)
        w, b = fold_conv_bn_weights(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(),
                                    bn.running_mean, bn.running_var, bn.eps,
                                    bn.weight.detach() if bn.affine else None, bn.bias.detach() if bn.affine else None)
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(b)
        m.train(conv.training)
        return m

    def torchslim_layer_info(self) -> dict[str, Any]:
        kw = _conv_kwargs(self)
        return {"technique": "fold_bn", "config": None, "storage": f"{str(self.weight.dtype).removeprefix('torch.')}",
                "folded": self.folded, "conv": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}}

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> FoldedConv2d:
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in info["conv"].items()}
        dtype = getattr(getattr(original, "weight", None), "dtype", torch.float32)
        return cls(info.get("folded", ""), **kw).to(dtype)


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv name, bn name)`` for every Conv2d whose output goes only into a BatchNorm2d that keeps
    running statistics (one without them normalizes with batch statistics even in eval mode)."""
    graph = trace(model, "fold_bn_")
    pairs = module_chains(model, graph, nn.Conv2d, nn.BatchNorm2d)
    return [(c, b) for c, b in pairs if get_module(model, b).running_var is not None]


@torch.no_grad()
def fold_bn_(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every foldable BatchNorm2d into its Conv2d, in place; returns the ``(conv, bn)`` pairs folded.

    The model must be in eval mode (folding uses the running statistics, as eval mode does).
    Convs whose output is also used elsewhere, BNs after anything but a conv and BNs without running
    statistics are left as they are.
    """
    pairs = foldable_pairs(model)
    for conv_name, bn_name in pairs:
        if get_module(model, bn_name).training:
            raise TorchSlimError(f"fold_bn_: '{bn_name}' is in training mode; call model.eval() first "
                                 "(folding uses the running statistics)")
    for conv_name, bn_name in pairs:
        conv, bn = get_module(model, conv_name), get_module(model, bn_name)
        replace_module(model, conv_name, FoldedConv2d.from_conv_bn(conv, bn, bn_name))
        replace_module(model, bn_name, FoldedAway("fold_bn", conv_name, type(bn).__name__))
    return pairs


def fold_bn_for(model: nn.Module, who: str) -> list[tuple[str, str]]:
    """Fold every foldable BatchNorm in eval mode (running statistics), keep the model's training mode,
    and log what ``who`` (the technique that needs it) folded."""
    import logging

    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return []
    was = model.training
    model.eval()
    folded = fold_bn_(model)
    model.train(was)
    if folded:
        logging.getLogger("torchslim").info("%s: folded %d BatchNorm(s) into their convs first", who, len(folded))
    return folded
