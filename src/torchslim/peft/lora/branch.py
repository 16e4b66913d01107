"""The LoRA branch: ``out + s * B(A(dropout(x)))``, with DoRA's magnitude as an option.

``A`` is ``[r, in]`` (a convolution's ``[r, in, *kernel]``, applied with the layer's stride, padding and
dilation) and ``B`` ``[out, r]`` (a 1x1 convolution for convolutions). ``s`` is ``alpha / r``, or
``alpha / sqrt(r)`` with rsLoRA. ``B`` starts at zero, so the adapted model starts as the base.

DoRA (Liu et al. 2024) splits the adapted weight into a learned magnitude per output and a direction:
``W' = m * (W + s B A) / ||W + s B A||``. The norm is computed without gradient on every forward, as the
paper and peft do (section 4.3), from the layer's effective weight (a packed base is dequantized for that
layer only, then dropped).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.core.kinds import ModuleKind, register_kind
from torchslim.peft.branch import Branch
from torchslim.peft.weights import bias_of, effective_weight


def lora_scaling(r: int, alpha: float, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoraBranch(Branch):
    method = "lora"

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, *, dropout: float = 0.0,
                 rslora: bool = False, dora: bool = False, conv: dict[str, Any] | None = None,
                 adapter: str = "default", enabled: bool = True) -> None:
        super().__init__(adapter, enabled)
        if not (isinstance(r, int) and r >= 1):
            raise ConfigError(f"LoRA rank must be a positive integer, got {r!r}")
        self.in_features, self.out_features, self.r = int(in_features), int(out_features), r
        self.alpha, self.dropout, self.rslora, self.dora = float(alpha), float(dropout), bool(rslora), bool(dora)
        self.conv = dict(conv) if conv is not None else None
        kernel = tuple(self.conv["kernel_size"]) if self.conv else ()
        ones = (1,) * len(kernel)
        self.A = nn.Parameter(torch.empty(r, self.in_features, *kernel))
        self.B = nn.Parameter(torch.zeros(self.out_features, r, *ones))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))        # as nn.Linear (and peft) initialise A
        self.magnitude = nn.Parameter(torch.ones(self.out_features)) if self.dora else None

    @property
    def scaling(self) -> float:
        return lora_scaling(self.r, self.alpha, self.rslora)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "in_features": self.in_features, "out_features": self.out_features,
                "r": self.r, "alpha": self.alpha, "dropout": self.dropout, "rslora": self.rslora, "dora": self.dora,
                "conv": self.conv}

    # -- math ---------------------------------------------------------------------------------------
    def update(self, x: torch.Tensor) -> torch.Tensor:
        """``s * B(A(dropout(x)))`` in ``x``'s dtype."""
        x = F.dropout(x, self.dropout, self.training) if self.dropout else x
        a, b = self.A.to(x.dtype), self.B.to(x.dtype)
        if self.conv is None:
            return F.linear(F.linear(x, a), b) * self.scaling
        c = self.conv
        conv = F.conv1d if c["dims"] == 1 else F.conv2d
        h = conv(x, a, None, tuple(c["stride"]), tuple(c["padding"]), tuple(c["dilation"]))
        return conv(h, b) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``s * B A`` in the layer's weight shape (float32)."""
        a, b = self.A.float(), self.B.float().flatten(1)
        return torch.einsum("or,ri...->oi...", b, a) * self.scaling

    def _channels(self, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``t`` (``[out]``) shaped to broadcast over ``out``'s channel dimension."""
        return t.reshape(-1, *([1] * (out.dim() - 2))) if self.conv is not None else t

    @torch.no_grad()
    def weight_norm(self, layer: nn.Module) -> torch.Tensor:
        """``||W + s B A||`` per output (no gradient)."""
        w = effective_weight(layer) + self.delta_weight()
        return w.flatten(1).norm(dim=1)

    @torch.no_grad()
    def init_magnitude(self, layer: nn.Module) -> None:
        if self.magnitude is not None:
            self.magnitude.copy_(self.weight_norm(layer))

    def on_output(self, layer: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        upd = self.update(x)
        if self.magnitude is None:
            return out + upd
        bias = bias_of(layer)
        bias = self._channels(bias.to(out.dtype), out) if bias is not None else None
        base = out - bias if bias is not None else out
        scale = self._channels((self.magnitude / self.weight_norm(layer).clamp_min(1e-12)).to(out.dtype), out)
        res = (base + upd) * scale
        return res + bias if bias is not None else res

    def merged_weight(self, layer: nn.Module) -> torch.Tensor:
        """The effective weight the layer would need to compute what the adapted layer computes."""
        w = effective_weight(layer) + self.delta_weight().detach()
        if self.magnitude is not None:
            norm = w.flatten(1).norm(dim=1).clamp_min(1e-12)
            w = w * (self.magnitude.detach().float() / norm).reshape(-1, *([1] * (w.dim() - 1)))
        return w

    def extra_repr(self) -> str:
        kind = "DoRA" if self.dora else "LoRA"
        return f"{kind} r={self.r} alpha={self.alpha:g} {self.in_features}->{self.out_features}, " + super().extra_repr()


register_kind(ModuleKind(
    "LoraBranch", LoraBranch, lambda m: m.describe(),
    lambda d: LoraBranch(d["in_features"], d["out_features"], d["r"], d["alpha"], dropout=d["dropout"],
                         rslora=d["rslora"], dora=d["dora"], conv=d["conv"], adapter=d["adapter"],
                         enabled=d["enabled"])))
