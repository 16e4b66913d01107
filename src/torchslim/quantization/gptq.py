"""GPTQ post-training quantization: model flow around :mod:`torchslim.quantization.gptq_math`."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchslim.calibration.pipeline import calibration_batches
from torchslim.calibration.plan import CalibrationPlan, execute, register_planner
from torchslim.core.config import BaseConfig, between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.registry import register_handler
from torchslim.core.surgery import replace_module
from torchslim.quantization.gptq_math import HessianAccumulator, gptq_quantize
from torchslim.quantization.qlinear import QuantLinear
from torchslim.quantization.scaled import input_scale_of
from torchslim.quantization.weight_only import WeightOnlyConfig, check_calibration_dtype, split_calibrated, start_calibrated


@dataclass
class GPTQConfig(BaseConfig):
    """GPTQ on top of a weight-only scheme (``weight`` gives format, groups, observer, kernel, selector)."""

    family = "quantization"
    technique = "gptq"
    weight: WeightOnlyConfig = field(default_factory=WeightOnlyConfig)
    act_order: bool = True
    block_size: int = between(128, 1, 1 << 16)
    damp: float = 0.01
    n_samples: int = between(128, 1, 1 << 16)
    sequential: bool = True
    # True: each block is re-run after quantizing so the next block sees quantized outputs (2 passes per block).
    # Default False (1 pass): on SmolLM2-135M int4 g128 it measured 27.21 ppl in 175 s vs 27.30 in 310 s.
    propagate_quantized: bool = False
    calibration_dtype: torch.dtype | None = None   # e.g. torch.bfloat16: autocast calibration forwards

    def validate(self) -> None:
        if not 0 < self.damp < 1:
            raise ConfigError(f"GPTQConfig.damp must be in (0, 1), got {self.damp}")
        check_calibration_dtype(self)

    @property
    def selector(self):
        return self.weight.selector


@register_planner(GPTQConfig)
def plan_gptq(model: nn.Module, config: GPTQConfig, ctx: ApplyContext) -> CalibrationPlan | None:
    """GPTQ for layers whose (per-layer) config is a GPTQConfig: Hessians of their inputs, then the solver.
    An equivalence-scaled layer (AWQ ``scale_only``) is solved on its scaled inputs and keeps its input scale."""
    layers, _ = split_calibrated(model, config)
    if not layers:
        return None
    batches, forward = calibration_batches(ctx.calibration_data, config.n_samples)

    def solve(measured: dict) -> None:
        for name, (lin, acc) in measured.items():
            gcfg = layers[name][1]
            wcfg = gcfg.weight
            scale = input_scale_of(lin)
            H = acc.scaled(scale).H if scale is not None else acc.H
            qt = gptq_quantize(lin.weight, H, wcfg.format, wcfg.granularity, wcfg.observer,
                               gcfg.block_size, gcfg.damp, gcfg.act_order)
            replace_module(model, name, QuantLinear.from_qtensor(qt, wcfg.granularity, lin.bias, wcfg.kernel, gcfg,
                                                                 input_scale=scale))

    return CalibrationPlan(config, "GPTQ", {n: m for n, (m, _) in layers.items()},
                           lambda _n, mod: HessianAccumulator(mod.in_features), solve, batches, forward,
                           (id(ctx.calibration_data), config.n_samples), config.sequential,
                           config.propagate_quantized, config.calibration_dtype)


@register_handler(GPTQConfig, uses=("calibration", "task"))
def _gptq(model: nn.Module, config: GPTQConfig, ctx: ApplyContext) -> nn.Module:
    """GPTQ for layers whose (per-layer) config is a GPTQConfig; layers overridden with a plain
    WeightOnlyConfig are quantized by round-to-nearest, as that config says."""
    from torchslim.quantization.qembedding import tie_packed_head_

    start_calibrated(model, config, "GPTQ")
    execute(model, plan_gptq(model, config, ctx), ctx)
    tie_packed_head_(model)
    return model
