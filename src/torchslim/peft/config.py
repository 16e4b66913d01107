"""What every parameter-efficient method shares: pick layers with the one Selector, freeze the base, add
branches, say what was added, and on ``convert`` merge the adapter or keep it.

A method's config subclasses :class:`AdapterConfig` and implements :meth:`AdapterConfig.make_branch` (a
branch for one selected layer) or, for methods that adapt the model rather than layers (prompt and prefix
tuning), overrides :meth:`AdapterConfig.add_branches`. Training is the one ``Trainer``
(``torchslim.finetune_(model, LoraConfig(...), task=..., train=TrainConfig(...))``, or a ``finetune:``
recipe stage).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.resize import add_module
from torchslim.core.select import Selector
from torchslim.core.surgery import model_device
from torchslim.peft.branch import Branch, branches, check_adapter_name
from torchslim.peft.merge import merge_
from torchslim.peft.weights import is_adaptable
from torchslim.train.transform import Prepared, TrainingConfig

log = logging.getLogger("torchslim.peft")


def output_head_names(model: nn.Module) -> set[str]:
    """Names of the model's output projection (a language model's head), which adapters leave alone by default."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return {n for n, m in model.named_modules() if head is not None and m is head}


@dataclass
class AdapterConfig(TrainingConfig):
    """Base of adapter methods. ``adapter`` names the adapter (several may sit on one base);
    ``merge`` folds the trained adapter into the base when training ends (float layers exactly, packed
    layers re-quantized to their own format); otherwise it stays a branch, saved with the artifact or alone
    (:func:`torchslim.peft.save_adapter`). ``selector`` None: the method's default layers."""

    family: ClassVar[str] = "training"
    method: ClassVar[str] = ""
    adapter: str = "default"
    merge: bool = False
    selector: Selector | None = None

    def validate(self) -> None:
        check_adapter_name(self.adapter)

    # -- what a method defines ----------------------------------------------------------------------
    def default_selector(self, model: nn.Module) -> Selector:
        """Every adaptable layer but the output head."""
        return Selector(include=(is_adaptable,), exclude=tuple(sorted(output_head_names(model))))

    def plan(self, model: nn.Module, picked: list[str]) -> Any:
        """Whatever :meth:`make_branch` needs to know about the whole selection (IA3: which layers scale their
        input); None by default."""
        return None

    def make_branch(self, name: str, layer: nn.Module, plan: Any = None) -> Branch | None:
        """The branch for one selected layer (None: the method does not adapt this kind of layer)."""
        raise NotImplementedError

    def child_name(self) -> str:
        return f"{self.method}_{self.adapter}"

    def add_branches(self, model: nn.Module) -> list[str]:
        """Add this adapter's branches; returns their names. Errors when nothing matched; warns about
        selected layers it had to skip."""
        selector = self.selector if self.selector is not None else self.default_selector(model)
        picked = selector.select(model)
        picked = [(n, m) for n, m in picked if not isinstance(m, Branch)]
        made, skipped = [], []
        plan = self.plan(model, [n for n, _ in picked])
        for name, layer in picked:
            branch = self.make_branch(name, layer, plan) if is_adaptable(name, layer) else None
            if branch is None:
                skipped.append(name)
                continue
            added = f"{name}.{self.child_name()}"
            add_module(model, added, branch.to(model_device(layer) if any(True for _ in layer.parameters())
                                               or any(True for _ in layer.buffers()) else "cpu"))
            made.append(added)
        if not made:
            raise ConfigError(f"{type(self).__name__} matched no layer it can adapt"
                              + (f" (selected {len(picked)}, e.g. '{skipped[0]}', which it cannot adapt)" if skipped
                                 else ": check the selector's names against model.named_modules()"))
        if skipped:
            log.warning("%s skipped %d selected module(s) it cannot adapt, e.g. '%s'", type(self).__name__,
                        len(skipped), skipped[0])
        return made

    # -- prepare -> fit -> convert --------------------------------------------------------------------
    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        if any(b.adapter == self.adapter for _, b in branches(model)):
            raise ConfigError(f"the model already has an adapter '{self.adapter}': name this one differently "
                              "(adapter=...) or merge/remove the old one first")
        grads = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            names = self.add_branches(model)
        except Exception:
            for n, p in model.named_parameters():
                p.requires_grad_(grads.get(n, p.requires_grad))
            raise
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        record = {"adapter": self.adapter, "method": self.method, "layers": len(names), "trainable_params": trainable,
                  "total_params": total, "trainable_percent": round(100.0 * trainable / max(total, 1), 4)}
        log.info("%s '%s' on %d layer(s): %s trainable parameters (%.3g%% of %s)", self.method, self.adapter,
                 len(names), f"{trainable:,}", record["trainable_percent"], f"{total:,}")
        return Prepared(state={"grads": grads, "names": names}, records=[record])

    def convert(self, model: nn.Module, prepared: Prepared) -> nn.Module:
        grads = prepared.state.get("grads", {})
        for n, p in model.named_parameters():
            if n in grads:
                p.requires_grad_(grads[n])
        if self.merge:
            prepared.records.append({"merge": merge_(model, self.adapter)})
        return model
