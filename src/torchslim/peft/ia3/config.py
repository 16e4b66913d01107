"""IA3 (Liu et al. 2022) as a training technique.

``torchslim.finetune_(model, IA3Config(), task=task, train=TrainConfig(...))`` adds an
:class:`~torchslim.peft.ia3.branch.IA3Branch` to each selected layer: by default the layers peft's IA3 picks
for the model type (``k_proj``, ``v_proj``, ``down_proj`` for Llama; ``key``, ``value``, ``output.dense`` for
BERT: :mod:`torchslim.peft.ia3.targets`), so the trainable-parameter count is peft's. Layers that
``feedforward`` matches scale their input, the others their output. Float, packed, sparse and pruned layers
alike; ``merge=True`` folds the vectors into the weights (re-quantizing a packed base).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.select import Selector
from torchslim.peft.branch import Branch
from torchslim.peft.config import AdapterConfig
from torchslim.peft.ia3.branch import IA3Branch
from torchslim.peft.ia3.targets import default_rules
from torchslim.peft.weights import geometry
from torchslim.train.transform import Prepared


@dataclass
class IA3Config(AdapterConfig):
    """``selector`` None: peft's IA3 targets for the model type (else the architecture's key, value and
    feed-forward output projections). ``feedforward``: which of the selected layers scale their input, a
    :class:`~torchslim.core.select.Selector` or one selector rule (``"re:.*\\.down_proj"``); None: the default
    feed-forward layers for the model type (peft's ``feedforward_modules``), the others scale their output."""

    technique: ClassVar[str] = "ia3"
    method: ClassVar[str] = "ia3"
    feedforward: Selector | str | None = None

    def validate(self) -> None:
        super().validate()
        if isinstance(self.feedforward, str):
            Selector(include=(self.feedforward,))           # a bad rule fails here, in one line
        elif not (self.feedforward is None or isinstance(self.feedforward, Selector)):
            raise ConfigError("IA3Config.feedforward must be a Selector, a selector rule or None, got "
                              f"{type(self.feedforward).__name__}")

    def _defaults(self, model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
        rules = default_rules(model)
        if rules is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            raise ConfigError(f"IA3Config has no default layers for a {type(model).__name__}"
                              + (f" (model type {model_type!r})" if model_type else "")
                              + ": pass selector= (and feedforward= for the layers that scale their input)")
        return rules

    def default_selector(self, model: nn.Module) -> Selector:
        return Selector(include=self._defaults(model)[0])

    def feedforward_selector(self, model: nn.Module) -> Selector:
        if isinstance(self.feedforward, Selector):
            return self.feedforward
        if isinstance(self.feedforward, str):
            return Selector(include=(self.feedforward,))
        rules = default_rules(model)
        return Selector(include=rules[1] if rules else ())

    def plan(self, model: nn.Module, picked: list[str]) -> set[str]:
        """The selected layers that scale their input (feed-forward layers)."""
        scaled_in = {n for n, _ in self.feedforward_selector(model).select(model)} & set(picked)
        if self.feedforward is not None and picked and not scaled_in:
            raise ConfigError(f"IA3Config.feedforward matched none of the {len(picked)} selected layers "
                              f"(e.g. '{sorted(picked)[0]}'): it must pick some of them, or be None")
        return scaled_in

    def make_branch(self, name: str, layer: nn.Module, plan: Any = None) -> Branch | None:
        g = geometry(layer)
        if g is None:
            return None
        feedforward = name in (plan or ())
        return IA3Branch(g.in_features if feedforward else g.out_features, feedforward=feedforward,
                         conv=g.conv is not None, adapter=self.adapter)

    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        prepared = super().prepare(model, ctx)
        made = set(prepared.state["names"])
        record: dict[str, Any] = prepared.records[0]
        record["input_scaled"] = sum(1 for n, m in model.named_modules() if n in made and m.feedforward)
        return prepared
