"""Exit heads as a training-time technique: ``torchslim.early_exit_(model, EarlyExitConfig(...), task=task,
train=TrainConfig(...))``.

``prepare`` picks the blocks (the one Selector, or by default every transformer block of the architecture table
but the last; for other models the longest chain of blocks, e.g. a CNN's stages), measures their outputs on one
batch, adds one :class:`~torchslim.early_exit.module.ExitHead` per block with
:func:`torchslim.core.resize.add_module`, and freezes the model. The Trainer then trains only the heads by
distillation from the model's own final prediction (KL of softened logits, DeeBERT/PABEE-style), optionally plus
the task's labels, and trains each gate to predict whether its exit agrees with the final layer. ``convert`` gives
the model back with its heads (its own forward unchanged); :class:`~torchslim.early_exit.runtime.ExitRuntime`
runs it with an exit policy.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from torchslim.core.archs import arch_of, chain_blocks
from torchslim.core.config import between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.resize import add_module
from torchslim.core.select import Selector
from torchslim.core.surgery import model_device
from torchslim.early_exit.math import features, gate_loss, kd_loss, pool_for
from torchslim.early_exit.module import HEADS, ExitHead, exit_heads
from torchslim.early_exit.runtime import logits_of
from torchslim.train.hooks import TrainHook
from torchslim.core.registry import register_handler
from torchslim.train.transform import TRAINING_USES, Prepared, TrainingConfig, run_transform, training_task

log = logging.getLogger("torchslim.early_exit")


def block_chain(model: nn.Module) -> list[str]:
    """The blocks one forward runs in sequence: the architecture table's, else the longest ``nn.Sequential`` /
    ``nn.ModuleList`` whose children are blocks (modules with children of their own: a CNN's stages)."""
    if arch_of(model) is not None:
        return [n for n, _ in chain_blocks(model)]
    best: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Sequential, nn.ModuleList)) and name != HEADS and len(m) > len(best) \
                and all(any(True for _ in c.children()) for c in m):
            best = [f"{name}.{i}" if name else str(i) for i in range(len(m))]
    return best


def pick_blocks(model: nn.Module, selector: Selector | None) -> list[str]:
    if selector is not None:
        picked = [n for n, _ in selector.select(model) if not n.startswith(f"{HEADS}.") and n != HEADS]
        if not picked:
            raise ConfigError("EarlyExitConfig.blocks matched no module: check its names against model.named_modules()")
        return picked
    chain = block_chain(model)
    if len(chain) < 2:
        raise ConfigError(f"cannot find a chain of blocks in {type(model).__name__} to put exits after: "
                          "pass EarlyExitConfig(blocks=Selector(include=...))")
    return chain[:-1]


@dataclass
class EarlyExitConfig(TrainingConfig):
    """``blocks``: the blocks that get an exit after them (None: every block but the last); ``hidden``: width of a
    tanh layer in each head (0: a linear head); the loss is ``kd_weight * T^2 KL(final/T || exit/T)``
    ``+ label_weight * CE(exit, labels)`` (labels where the task's batches have them) ``+ gate_weight * BCE(gate)``,
    summed over exits."""

    family: ClassVar[str] = "early_exit"
    technique: ClassVar[str] = "early_exit"
    blocks: Selector | None = None
    hidden: int = between(0, 0, 1 << 16)
    temperature: float = 2.0
    kd_weight: float = 1.0
    label_weight: float = 0.5
    gate_weight: float = 1.0

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"EarlyExitConfig.temperature must be positive, got {self.temperature}")
        if min(self.kd_weight, self.label_weight, self.gate_weight) < 0 or self.kd_weight + self.label_weight == 0:
            raise ConfigError("EarlyExitConfig: weights must be >= 0, and kd_weight or label_weight positive")

    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        if exit_heads(model):
            raise ConfigError("the model already has exit heads: load the model without them to add new ones")
        task = training_task(self, ctx)
        names = pick_blocks(model, self.blocks)
        shapes, classes = _probe(model, task, names)
        heads = [ExitHead(n, features(shapes[n]), classes, pool_for(len(shapes[n])), self.hidden) for n in names]
        grads = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        add_module(model, HEADS, nn.ModuleList(heads).to(model_device(model)))
        trainable = sum(p.numel() for h in heads for p in h.parameters())
        total = sum(p.numel() for p in model.parameters())
        log.info("early exit: %d exit head(s) after %s; %s trainable parameters (%.3g%% of %s)", len(heads),
                 ", ".join(names), f"{trainable:,}", 100.0 * trainable / total, f"{total:,}")
        record = {"exits": len(heads), "blocks": names, "classes": classes, "trainable_params": trainable}
        return Prepared(hooks=[ExitDistillHook(self, names)], state={"grads": grads}, records=[record])

    def convert(self, model: nn.Module, prepared: Prepared) -> nn.Module:
        grads = prepared.state.get("grads", {})
        for n, p in model.named_parameters():
            if n in grads:
                p.requires_grad_(grads[n])
        return model


def _probe(model: nn.Module, task: Any, names: list[str]) -> tuple[dict[str, tuple[int, ...]], int]:
    """Output shapes of the named blocks and the number of classes, from one training batch."""
    shapes: dict[str, tuple[int, ...]] = {}

    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            shapes.setdefault(name, tuple((out[0] if isinstance(out, (tuple, list)) else out).shape))
        return hook

    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    batch = next(iter(task.train_batches(2)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = logits_of(task.forward(model, batch))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ConfigError(f"early exit: block '{missing[0]}' did not run in the model's forward")
    if logits.dim() != 2:
        raise ConfigError(f"early exit needs class logits [batch, classes], the model returns {tuple(logits.shape)}")
    return shapes, logits.shape[-1]


class ExitDistillHook(TrainHook):
    """Captures the blocks' outputs in the model's forward and replaces the task loss (the model is frozen) by the
    exits' distillation, label and gate losses."""

    def __init__(self, config: EarlyExitConfig, names: list[str]) -> None:
        self.config, self.names = config, names
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []

    @property
    def name(self) -> str:
        return "exit"

    def on_start(self, trainer: Any) -> None:
        model = trainer.model
        self.handles = [model.get_submodule(n).register_forward_hook(self._keep(n)) for n in self.names]

    def _keep(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            self.outputs[name] = (out[0] if isinstance(out, (tuple, list)) else out).detach()
        return hook

    def update_losses(self, trainer: Any, batch: Any, terms: dict[str, torch.Tensor]) -> None:
        c = self.config
        final = logits_of(trainer.last_output).detach()
        labels = batch.get("labels", batch.get("y")) if isinstance(batch, dict) else None
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        kd = ce = gate = torch.zeros((), device=final.device)
        for head in exit_heads(trainer.model):
            logits, g = head(self.outputs[head.block], mask)
            kd = kd + kd_loss(logits, final, c.temperature)
            if labels is not None:
                ce = ce + torch.nn.functional.cross_entropy(logits.float(), labels.to(logits.device))
            gate = gate + gate_loss(g, logits.detach(), final)
        terms.pop("task", None)
        terms["exit_kd"] = kd * c.kd_weight
        if labels is not None and c.label_weight:
            terms["exit_ce"] = ce * c.label_weight
        terms["exit_gate"] = gate * c.gate_weight
        self.outputs.clear()

    def on_end(self, trainer: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


@register_handler(EarlyExitConfig, uses=TRAINING_USES, modifies="weights")
def _early_exit(model: nn.Module, config: EarlyExitConfig, ctx: ApplyContext) -> nn.Module:
    return run_transform(model, config, ctx)
