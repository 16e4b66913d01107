"""The IA3 branch (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning"): a learned vector, initialised to ones, that scales a layer's output per output feature
(attention keys and values) or, for feed-forward layers, its input per input feature.

Both are a rescaling of the weight, so the branch merges exactly into a float layer: output scaling scales
the weight's rows and the bias, input scaling its columns (a convolution's output or input channels).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.core.kinds import ModuleKind, register_kind
from torchslim.peft.branch import Branch
from torchslim.peft.weights import bias_of, effective_weight


class IA3Branch(Branch):
    """``feedforward``: scale the layer's input (``in_features``) instead of its output (``out_features``);
    ``conv``: the layer is a convolution (channels on dimension 1 rather than last)."""

    method = "ia3"

    def __init__(self, features: int, *, feedforward: bool = False, conv: bool = False, adapter: str = "default",
                 enabled: bool = True) -> None:
        super().__init__(adapter, enabled)
        if not (isinstance(features, int) and features >= 1):
            raise ConfigError(f"an IA3 vector needs a positive feature count, got {features!r}")
        self.features, self.feedforward, self.conv = features, bool(feedforward), bool(conv)
        self.vector = nn.Parameter(torch.ones(features))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "features": self.features, "feedforward": self.feedforward, "conv": self.conv}

    def _shaped(self, t: torch.Tensor) -> torch.Tensor:
        """The vector in ``t``'s dtype, shaped to broadcast over ``t``'s feature (channel) dimension."""
        v = self.vector.to(t.dtype)
        return v.reshape(-1, *([1] * (t.dim() - 2))) if self.conv else v

    # only one of the two hooks is registered, by which side this branch scales
    def on_output(self, layer: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out * self._shaped(out)

    def on_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x * self._shaped(x)

    def torchslim_attach(self, layer: nn.Module) -> None:
        if self.feedforward:
            layer.register_forward_pre_hook(self._input_hook)
        else:
            layer.register_forward_hook(self._output_hook)

    # -- merge ----------------------------------------------------------------------------------------
    def merged_weight(self, layer: nn.Module) -> torch.Tensor:
        """The layer's effective weight with its rows (output scaling) or columns (input scaling) scaled."""
        w = effective_weight(layer)
        v = self.vector.detach().float()
        if self.feedforward:
            return w * v.reshape(1, -1, *([1] * (w.dim() - 2)))
        return w * v.reshape(-1, *([1] * (w.dim() - 1)))

    def merged_bias(self, layer: nn.Module) -> torch.Tensor | None:
        """The bias the merged layer needs: scaled with the output; unchanged (None) for input scaling."""
        bias = bias_of(layer)
        if self.feedforward or bias is None:
            return None
        return bias.detach().float() * self.vector.detach().float()

    def extra_repr(self) -> str:
        side = "input" if self.feedforward else "output"
        return f"IA3 scales {side} ({self.features}), " + super().extra_repr()


register_kind(ModuleKind(
    "IA3Branch", IA3Branch, lambda m: m.describe(),
    lambda d: IA3Branch(d["features"], feedforward=d["feedforward"], conv=d["conv"], adapter=d["adapter"],
                        enabled=d["enabled"])))
