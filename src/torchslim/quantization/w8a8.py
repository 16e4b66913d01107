"""W8A8 post-training quantization: dynamic (per-token, no calibration needed) or static
(calibrated activation ranges), optionally preceded by SmoothQuant (Xiao et al., 2023).

SmoothQuant migrates activation outliers into the weights: for each input channel j,
``s_j = max|X_j|**alpha / max|W_j|**(1 - alpha)``; the layer computes ``(X / s) @ (W * s)^T``.
Here ``1/s`` is applied to the input inside the quantized layer (one multiply per element),
which works for every linear without knowing which norm precedes it.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

from torch import nn

from torchslim.calibration.pipeline import calibration_batches, pick_runner
from torchslim.calibration.stats import ChannelStats
from torchslim.core.config import BaseConfig, between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.progress import track
from torchslim.core.registry import register_handler
from torchslim.core.linear import LinearLike
from torchslim.core.select import Selector
from torchslim.core.surgery import replace_module
from torchslim.quantization.int8_conv import conv_input_stats, convert_conv
from torchslim.quantization.int8_linear import Int8DynamicLinear, Int8StaticLinear
from torchslim.quantization.observers import MinMax, Observer, smooth_factors, static_range
from torchslim.quantization.weight_only import selected_linears

log = logging.getLogger("torchslim.quantization")


class ActMode(str, enum.Enum):
    DYNAMIC = "dynamic"
    STATIC = "static"


@dataclass
class W8A8Config(BaseConfig):
    """Int8 weights (per channel) and int8 activations, ``dynamic`` per token or ``static`` calibrated."""

    family = "quantization"
    technique = "w8a8"
    mode: ActMode = ActMode.DYNAMIC
    smooth_alpha: float | None = None
    observer: Observer = MinMax()
    n_samples: int = between(128, 1, 1 << 16)
    sequential: bool = True
    # linear layers and convolutions (static mode quantizes convs with BatchNorm folded into them first)
    selector: Selector = field(default_factory=lambda: Selector(include=(LinearLike, nn.Conv2d)))

    def validate(self) -> None:
        if self.smooth_alpha is not None and not 0 <= self.smooth_alpha <= 1:
            raise ConfigError(f"W8A8Config.smooth_alpha must be in [0, 1], got {self.smooth_alpha}")

    @property
    def needs_calibration(self) -> bool:
        return self.mode is ActMode.STATIC or self.smooth_alpha is not None


def _convert(lin: nn.Module, cfg: W8A8Config, stats: ChannelStats | None) -> nn.Module:
    if isinstance(lin, nn.Conv2d):
        return convert_conv(lin, cfg, stats)
    smooth = smooth_factors(stats.absmax, lin.weight, cfg.smooth_alpha) if cfg.smooth_alpha is not None else None
    if cfg.mode is ActMode.DYNAMIC:
        return Int8DynamicLinear.from_linear(lin, cfg, smooth)
    m = Int8StaticLinear.from_linear(lin, cfg, smooth)
    m.set_range(*static_range(stats, smooth, cfg.observer))
    return m


def _stats_for(_name: str, mod: nn.Module) -> ChannelStats:
    return conv_input_stats(mod) if isinstance(mod, nn.Conv2d) else ChannelStats(mod.in_features)


def _conv_prelude(model: nn.Module, config: W8A8Config, layers: dict) -> dict:
    """Static mode: fold BatchNorms into the selected convs (exact in eval mode) so they quantize as one op.
    Dynamic mode quantizes activations per token, which convs do not have: they stay float, said once."""
    convs = [n for n, (m, _) in layers.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        return layers
    if config.mode is ActMode.DYNAMIC:
        log.warning("W8A8 dynamic: %d Conv2d layer(s) stay float (dynamic int8 is per token, for linear "
                    "layers); use mode=static to quantize convolutions", len(convs))
        left = {n: v for n, v in layers.items() if n not in convs}
        if not left:
            raise ConfigError("W8A8Config(mode=dynamic) found only Conv2d layers: use mode=static for convolutions")
        return left
    from torchslim.transforms.fold_bn import fold_bn_for

    if fold_bn_for(model, "W8A8 static"):
        layers = {n: (m, c) for n, m, c in selected_linears(model, config, convs=True)}
    return layers


@register_handler(W8A8Config, uses=("calibration", "task"))
def _w8a8(model: nn.Module, config: W8A8Config, ctx: ApplyContext) -> nn.Module:
    layers = _conv_prelude(model, config, {n: (m, c) for n, m, c in selected_linears(model, config, convs=True)})
    if not config.needs_calibration:
        for name, (lin, cfg) in track(list(layers.items()), "W8A8"):
            replace_module(model, name, _convert(lin, cfg, None))
        return model
    batches, forward = calibration_batches(ctx.calibration_data, config.n_samples)

    def solve(measured: dict) -> None:
        for name, (lin, stats) in measured.items():
            replace_module(model, name, _convert(lin, layers[name][1], stats))

    pick_runner(config.sequential)(model, {n: m for n, (m, _) in layers.items()}, batches, forward,
                                   _stats_for, solve, "W8A8 calibration")
    return model
