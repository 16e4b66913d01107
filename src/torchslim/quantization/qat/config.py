"""Quantization-aware training as a training technique (prepare -> fit -> convert).

``torchslim.quantize_(model, QATConfig(...), task=task, train=TrainConfig(...))``, or a ``quantize:`` recipe
stage. ``prepare`` swaps the layers for QAT layers: layers a post-training stage already quantized
(RTN, GPTQ, AWQ, W8A8, SmoothQuant) start from exactly that result, keeping their format; float layers
start from round-to-nearest in ``format`` / ``granularity``. The Trainer then trains the latent weights
with the straight-through estimator together with the learned step sizes (LSQ / LSQ+) and activation
ranges (LSQ or PACT), on the task's loss or, with ``distill``, on a distillation loss from the teacher
(the uncompressed model in a recipe). ``distill`` is any training config whose ``prepare`` adds loss hooks,
normally ``torchslim.distill.DistillConfig``: the caller passes it in, so this family does not import another. ``convert`` packs every layer into the very modules post-training
quantization produces, so the result runs on the same real kernels; no fake-quantized layer remains.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from torchslim.core.config import BaseConfig, between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.linear import LinearLike, canonical_linear_
from torchslim.core.progress import track
from torchslim.core.registry import register_handler
from torchslim.core.select import Selector
from torchslim.core.surgery import replace_module
from torchslim.quantization.formats import Format, Granularity, IntFormat, PerChannel, PerGroup
from torchslim.quantization.kernels import Kernel
from torchslim.quantization.qat.convert import PACKED, from_float, from_packed, to_packed
from torchslim.quantization.qat.modules import ActFake, is_qat
from torchslim.train.config import ParamGroup
from torchslim.train.transform import FROM_CONTEXT, TRAINING_USES, Prepared, TrainingConfig, run_transform

log = logging.getLogger("torchslim.quantization")
QUANTIZER_PARAMS = r"(.*\.)?(wq\.(scale_log|offset_steps)|aq\.(a|b))"


@dataclass
class ActQuant(BaseConfig):
    """Quantized layer inputs: ``mode`` ``static`` (a learned range, run by the static int8 kernels) or
    ``dynamic`` (per-token ranges at run time, linear layers, 8 bits); ``method`` ``lsq`` (learned step and
    zero point) or ``pact`` (learned clipping range) for static; ``bits`` below 8 run on the same int8
    kernels with narrower codes (W4A4)."""

    bits: int = between(8, 2, 8)
    mode: str = "static"
    method: str = "lsq"

    def validate(self) -> None:
        if self.mode not in ("static", "dynamic"):
            raise ConfigError(f"ActQuant.mode must be static or dynamic, got {self.mode!r}")
        if self.method not in ("lsq", "pact"):
            raise ConfigError(f"ActQuant.method must be lsq or pact, got {self.method!r}")
        if self.mode == "dynamic" and self.bits != 8:
            raise ConfigError("dynamic activations are 8-bit (the dynamic int8 kernel); use mode=static for fewer bits")


@dataclass
class QATConfig(TrainingConfig):
    """Train through fake quantization, then convert to real quantized layers.

    ``selector`` None: the layers already quantized by post-training stages if the model has any, else the
    linear layers and convolutions. ``format`` / ``granularity`` / ``activations`` apply to float layers
    (quantized layers keep their own). ``scale_lr_scale`` multiplies the learning rate of step sizes,
    offsets and activation ranges; ``learn_scales=False`` freezes them (plain STE)."""

    family: ClassVar[str] = "quantization"
    technique: ClassVar[str] = "qat"
    format: Format = IntFormat(4, symmetric=False)
    granularity: Granularity = PerGroup(128)
    activations: ActQuant | None = None
    learn_scales: bool = True
    scale_lr_scale: float = between(1.0, 0.0, 1e6)
    n_samples: int = between(32, 1, 1 << 16)      # calibration samples that set float layers' activation ranges
    distill: TrainingConfig | None = None         # a loss from the teacher (a DistillConfig), trained alongside
    kernel: Kernel = Kernel.AUTO
    selector: Selector | None = None

    def validate(self) -> None:
        if self.distill is not None and not self.distill.needs_teacher():
            raise ConfigError(f"QATConfig.distill trains against a teacher (a DistillConfig), got "
                              f"{type(self.distill).__name__}")
        if self.activations is not None and not (isinstance(self.format, IntFormat) and self.format.symmetric
                                                 and isinstance(self.granularity, PerChannel)):
            raise ConfigError("QATConfig with activations: weights must be symmetric integers per channel (the int8 "
                              "kernels), e.g. format=IntFormat(8, symmetric=True), granularity=PerChannel()")

    def needs_teacher(self) -> bool:
        return self.distill is not None

    # -- prepare / convert ---------------------------------------------------------------------------
    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        layers = self._layers(model)
        if self.activations is not None and self.activations.mode == "static":
            layers = self._fold_bn(model, layers)
        fresh = []
        for name, layer in track(layers, "QAT prepare"):
            qat = from_packed(layer, self.activations, self.learn_scales) if isinstance(layer, PACKED) else \
                from_float(layer, self.format, self.granularity, self.activations, self.learn_scales)
            replace_module(model, name, qat)
            if qat.aq is not None and qat.aq.method != "dynamic" and not bool(qat.aq.ready):
                fresh.append(qat.aq)
        if fresh:
            _observe_ranges(model, fresh, ctx, self.n_samples)
        hooks, state, teacher = [], {"layers": [n for n, _ in layers]}, FROM_CONTEXT
        if self.distill is not None:
            dp = self.distill.prepare(model, ctx)
            hooks, state["distill"], teacher = dp.hooks, dp, dp.teacher
        groups = (ParamGroup(params=QUANTIZER_PARAMS, lr_scale=self.scale_lr_scale, weight_decay=0.0),)
        return Prepared(hooks=hooks, param_groups=groups, state=state, teacher=teacher)

    def convert(self, model: nn.Module, prepared: Prepared) -> nn.Module:
        if "distill" in prepared.state:
            self.distill.convert(model, prepared.state["distill"])
        for name in prepared.state["layers"]:
            module = model.get_submodule(name)
            if is_qat(module):
                replace_module(model, name, to_packed(module, self, self.kernel))
        return model

    def _layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        if self.selector is not None:
            picked = [(n, m) for n, m, _ in self.selector.resolve(model, self)
                      if isinstance(m, (*PACKED, LinearLike, nn.Conv2d))]
        else:
            from torchslim.quantization.qembedding import head_is_shared

            picked = [(n, m) for n, m in model.named_modules() if isinstance(m, PACKED)]
            shared = [n for n, m in picked if head_is_shared(model, m)]
            if shared:
                log.info("QAT: %s also serves as the input embedding (tied): kept as it is", shared[0])
            picked = [(n, m) for n, m in picked if n not in shared]
            if not picked:
                picked = Selector(include=(LinearLike, nn.Conv2d)).select(model)
        out = []
        for name, m in picked:
            if not isinstance(m, PACKED):
                m = canonical_linear_(model, name)
                if self.activations is not None and self.activations.mode == "dynamic" and isinstance(m, nn.Conv2d):
                    log.warning("QAT: '%s' is a Conv2d; dynamic activations are per token (linear layers): left float",
                                name)
                    continue
            out.append((name, m))
        if not out:
            raise ConfigError("QATConfig: the selector matched no linear, conv or quantized layer")
        return out

    def _fold_bn(self, model: nn.Module, layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
        """Static activations quantize a conv's input, and BatchNorm must be folded into the conv first."""
        if not any(isinstance(m, nn.Conv2d) for _, m in layers):
            return layers
        from torchslim.transforms.fold_bn import fold_bn_for

        if not fold_bn_for(model, "QAT"):
            return layers
        return [(n, model.get_submodule(n)) for n, _ in layers]


@torch.no_grad()
def _observe_ranges(model: nn.Module, quantizers: list[ActFake], ctx: ApplyContext, n_samples: int) -> None:
    """Start activation ranges of float layers at the min-max of their inputs on calibration data."""
    from torchslim.calibration.pipeline import calibration_batches

    data = ctx.calibration_data
    if data is None:
        raise ConfigError("QAT of activations needs calibration data to start their ranges: pass calibration= or task=")
    batches, forward = calibration_batches(data, n_samples)
    for q in quantizers:
        q.observing = True
    was = model.training
    model.eval()
    try:
        for b in batches:
            forward(model, b)
    finally:
        model.train(was)
        for q in quantizers:
            q.finish_observing()


@register_handler(QATConfig, uses=(*TRAINING_USES,), modifies="layers")
def _qat(model: nn.Module, config: QATConfig, ctx: ApplyContext) -> nn.Module:
    return run_transform(model, config, ctx)
