"""AWQ: activation-aware weight quantization (Lin et al., 2024).

Salient input channels (large mean |x|) are protected by scaling them up before quantization:
the layer stores ``Q(W * s)`` and multiplies its input by ``1/s``, with ``s = mean|x|**alpha``
(normalized). ``alpha`` is searched on a grid to minimize the layer's output error on sampled
calibration rows. The scaling is kept inside the quantized layer (one multiply per input
element) instead of being folded into the previous norm, so it applies to every linear and
each layer gets its own best ``alpha``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchslim.calibration.pipeline import calibration_batches
from torchslim.calibration.plan import CalibrationPlan, execute, register_planner
from torchslim.calibration.stats import ChannelStats
from torchslim.core.config import BaseConfig, between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.registry import register_handler
from torchslim.core.surgery import replace_module
from torchslim.quantization.qlinear import QuantLinear
from torchslim.quantization.scaled import ScaledLinear, input_scale_of
from torchslim.quantization.weight_only import WeightOnlyConfig, check_calibration_dtype, quantize_weight, split_calibrated, start_calibrated


@dataclass
class AWQConfig(BaseConfig):
    """AWQ scaling search on top of a weight-only scheme (``weight``)."""

    family = "quantization"
    technique = "awq"
    weight: WeightOnlyConfig = field(default_factory=WeightOnlyConfig)
    grid: int = between(20, 2, 1000)
    n_samples: int = between(128, 1, 1 << 16)
    sequential: bool = True
    propagate_quantized: bool = True
    calibration_dtype: torch.dtype | None = None   # e.g. torch.bfloat16: autocast calibration forwards
    # True: only search and apply the scaling (the layers stay float, exactly equivalent) so that a later
    # stage quantizes them (GPTQ, round-to-nearest); that stage shares this calibration pass in a recipe.
    scale_only: bool = False

    def validate(self) -> None:
        check_calibration_dtype(self)

    @property
    def selector(self):
        return self.weight.selector


def awq_search(w: torch.Tensor, x: torch.Tensor, absmean: torch.Tensor, wcfg: WeightOnlyConfig,
               grid: int) -> tuple[torch.Tensor, float]:
    """Best input scaling ``s`` (per channel) and its alpha, for weight ``w`` and sample inputs ``x``."""
    w = w.detach().float()
    ref = x @ w.T
    best_err, best_s, best_a = float("inf"), torch.ones_like(absmean), 0.0
    for i in range(grid):
        a = i / grid
        s = absmean.clamp_min(1e-4) ** a
        s = s / (s.max() * s.min()).sqrt()
        deq = quantize_weight(w * s, wcfg).dequantize() / s
        err = float((x @ deq.T - ref).pow(2).mean())
        if err < best_err:
            best_err, best_s, best_a = err, s, a
    return best_s, best_a


@register_planner(AWQConfig)
def plan_awq(model: nn.Module, config: AWQConfig, ctx: ApplyContext) -> CalibrationPlan | None:
    """Per layer: the input scaling with the least output error after quantizing with ``weight``; then the
    quantized layer (or, with ``scale_only``, the scaled float layer for a later quantization stage)."""
    layers, _ = split_calibrated(model, config)
    if not layers:
        return None
    for name, (lin, _) in layers.items():
        if input_scale_of(lin) is not None:
            raise ConfigError(f"'{name}' is already input-scaled; AWQ scales a layer once")
    batches, forward = calibration_batches(ctx.calibration_data, config.n_samples)

    def solve(measured: dict) -> None:
        for name, (lin, stats) in measured.items():
            acfg = layers[name][1]
            wcfg = acfg.weight
            s, _ = awq_search(lin.weight, stats.sample(), stats.absmean, wcfg, acfg.grid)
            if acfg.scale_only:
                replace_module(model, name, ScaledLinear.from_linear(lin, s, acfg))
                continue
            qt = quantize_weight(lin.weight.detach().float() * s, wcfg)
            replace_module(model, name, QuantLinear.from_qtensor(qt, wcfg.granularity, lin.bias, wcfg.kernel, acfg,
                                                                 input_scale=1.0 / s))

    return CalibrationPlan(config, "AWQ" + (" scaling" if config.scale_only else ""),
                           {n: m for n, (m, _) in layers.items()}, lambda _n, mod: ChannelStats(mod.in_features),
                           solve, batches, forward, (id(ctx.calibration_data), config.n_samples), config.sequential,
                           config.propagate_quantized, config.calibration_dtype, preserves_function=config.scale_only)


@register_handler(AWQConfig, uses=("calibration", "task"))
def _awq(model: nn.Module, config: AWQConfig, ctx: ApplyContext) -> nn.Module:
    from torchslim.quantization.qembedding import tie_packed_head_

    start_calibrated(model, config, "AWQ")
    execute(model, plan_awq(model, config, ctx), ctx)
    tie_packed_head_(model)
    return model
