"""Which layer hurts: the quality cost of each candidate action on each layer (or block), alone.

For every group of layers (one layer, or one transformer block) and every action, the action is applied to that
group only, the model's outputs on a few batches are compared with the original's, and the group is put back
exactly as it was. The cost is the mean KL divergence of the next-token (or class) distribution from the
original's (``kl``, for models with logits), the output's squared error relative to its mean square (``mse``,
for encoders and feature extractors), or the loss in the task's own metric on its evaluation split (``task``:
end to end, slower). Bytes are the group's stored tensors before and after.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from torchslim.core.archs import arch_of, find_blocks
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.modules import is_tied_input_embedding
from torchslim.core.progress import muted, track
from torchslim.core.registry import apply_
from torchslim.core.select import Selector
from torchslim.core.state import snapshot, state_of
from torchslim.core.surgery import replace_module
from torchslim.search.actions import Action
from torchslim.search.block_proxy import scan_blocks
from torchslim.search.measure import divergence, output_tensor, reference

MEASURES = ("auto", "kl", "mse", "task", "block")
MIN_POSITIONS = 256            # compared output positions (tokens, images) by default
GRANULARITIES = ("layer", "block")


@dataclass
class Cell:
    """One action on one group: its quality ``cost`` (see the module docstring; 0 = unchanged), the group's
    ``bytes`` after it, a ``note`` (the kernel table's word on speed, or why the action did not apply) and the
    first ``warning`` the action logged."""

    cost: float | None
    bytes: int | None = None
    note: str = ""
    warning: str = ""


@dataclass
class Row:
    group: str
    layers: list[str]
    params: int
    bytes: int
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Sensitivity:
    """The result of :func:`sensitivity`: one row per group, one cell per action."""

    measure: str
    granularity: str
    actions: list[str]
    rows: list[Row]
    seconds: float
    positions: int
    configs: dict[str, dict] = field(default_factory=dict)     # each action's config (``to_dict``), to rebuild it

    def worst(self, action: str, n: int = 10) -> list[Row]:
        """The ``n`` groups the action hurts most."""
        rows = [r for r in self.rows if r.cells.get(action) and r.cells[action].cost is not None]
        return sorted(rows, key=lambda r: -r.cells[action].cost)[:n]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sensitivity:
        rows = [Row(r["group"], list(r["layers"]), r["params"], r["bytes"],
                    {k: Cell(**c) for k, c in r["cells"].items()}) for r in d["rows"]]
        return cls(d["measure"], d["granularity"], list(d["actions"]), rows, d["seconds"], d["positions"],
                   dict(d.get("configs") or {}))

    def action_list(self) -> list[Action]:
        """The scanned actions, rebuilt from their recorded configs."""
        from torchslim.core.config import config_from_dict

        missing = [a for a in self.actions if a not in self.configs]
        if missing:
            raise ConfigError(f"this scan does not record the config of action {missing[0]!r}")
        return [Action(a, config_from_dict(self.configs[a])) for a in self.actions]


def stored_bytes(modules: Sequence[nn.Module]) -> int:
    seen, total = set(), 0
    for m in modules:
        for t in m.state_dict().values():
            if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def _groups(model: nn.Module, names: list[str], granularity: str) -> list[tuple[str, list[str]]]:
    if granularity == "layer":
        return [(n, [n]) for n in names]
    if arch_of(model) is None:
        raise ConfigError(f"granularity 'block' needs transformer blocks; {type(model).__name__} has none a table "
                          "row knows: use granularity 'layer'")
    groups: dict[str, list[str]] = {}
    blocks = [b for b, _ in find_blocks(model)]
    for n in names:
        owner = next((b for b in blocks if n.startswith(b + ".")), n)
        groups.setdefault(owner, []).append(n)
    return list(groups.items())


class _Scorer:
    """The original model's outputs on a few batches, and a changed model's cost against them."""

    def __init__(self, model: nn.Module, task: Any, measure: str, n_samples: int | None, batch_size: int) -> None:
        self.model, self.task = model, task
        if measure == "task":
            self.kind, self.batches, self.refs = "task", [], []
            self.base = float(task.evaluate(model)[task.metric])
            return
        self.batches = task.calibration_batches(n_samples or 4, batch_size)
        if not self.batches:
            raise ConfigError("the task gave no batches to measure on")
        outs = self._outputs()
        per_sample = max(1, sum(output_tensor(o).numel() // output_tensor(o).shape[-1] for o in outs)
                         // (len(self.batches) * batch_size))
        if n_samples is None and per_sample * len(self.batches) * batch_size < MIN_POSITIONS:
            more = min(-(-MIN_POSITIONS // per_sample), 1024)       # images, short texts: enough of them
            self.batches = task.calibration_batches(more, batch_size)
            outs = self._outputs()
        logits = _has_logits(outs[0]) or getattr(task, "outputs_logits", False)
        self.kind = measure if measure != "auto" else ("kl" if logits else "mse")
        self.refs = [reference(output_tensor(o), self.kind) for o in outs]
        self.positions = sum(r.numel() // r.shape[-1] for r in self.refs)

    @torch.no_grad()
    def _outputs(self) -> list[Any]:
        return [self.task.forward(self.model, b) for b in self.batches]

    def cost(self) -> float:
        if self.kind == "task":
            value = float(self.task.evaluate(self.model)[self.task.metric])
            return (self.base - value) if getattr(self.task, "higher_is_better", True) else (value - self.base)
        total, count = 0.0, 0
        for ref, out in zip(self.refs, self._outputs()):
            s, c = divergence(ref, output_tensor(out), self.kind)
            total, count = total + s, count + c
        return total / max(count, 1)


def _has_logits(out: Any) -> bool:
    return isinstance(getattr(out, "logits", None), torch.Tensor) or (isinstance(out, dict) and "logits" in out)


def _versions(model: nn.Module) -> dict[int, tuple[torch.Tensor, int]]:
    return {id(t): (t, t._version) for t in [*model.parameters(), *model.buffers()]}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def quiet_trial():
    """A trial's own progress and warnings are not shown; its warnings are collected for the cell's note."""
    logger, capture = logging.getLogger("torchslim"), _Capture()
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [capture], False
    try:
        with muted():
            yield capture
    finally:
        logger.handlers, logger.propagate = handlers, propagate


def _trial(model: nn.Module, action: Action, names: list[str], ctx: ApplyContext, scorer: Any) -> Cell:
    """Apply ``action`` to ``names`` only, score the model, and put everything back as it was (every module
    replaced, a tied embedding included; the state's settings and history)."""
    before = snapshot(model)
    saved = {n: {k: v.clone() for k, v in before[n].state_dict().items()} for n in names}
    versions = _versions(model)
    st = state_of(model)
    settings, history = dict(st.settings), len(st.history)
    config = dataclasses.replace(action.config, selector=Selector(include=tuple(names)))
    try:
        with quiet_trial() as capture:
            try:
                out = apply_(model, config, ctx, record=False)
            except ConfigError as e:
                return Cell(None, None, f"not applied: {str(e)[:160]}")
        if out is not model:
            raise TorchSlimError(f"action {action.name!r} returned a new model; a sensitivity scan needs actions "
                                 "that change layers in place")
        now = [model.get_submodule(n) for n in names]
        info = [m.torchslim_layer_info() for m in now if callable(getattr(m, "torchslim_layer_info", None))]
        notes = sorted({str(i.get("measured_speed")) for i in info if i.get("measured_speed")})
        return Cell(scorer.cost(), stored_bytes(now), "; ".join(notes), capture.messages[0][:300] if capture.messages else "")
    finally:
        _restore(model, before)
        for n in names:
            before[n].load_state_dict(saved[n])
        st.settings.clear()
        st.settings.update(settings)
        del st.history[history:]
        mine = {id(t) for n in names for t in [*before[n].parameters(), *before[n].buffers()]}
        moved = [i for i, (t, v) in versions.items() if i not in mine and t._version != v]
        if moved:
            raise TorchSlimError(f"action {action.name!r} changed weights outside the layers it was given "
                                 f"({len(moved)} tensors): it cannot be scanned layer by layer")


def _restore(model: nn.Module, before: dict[str, nn.Module]) -> None:
    """Put back every module that a trial replaced (parents first: restoring one restores its children)."""
    for name, module in before.items():
        if not name:
            continue
        try:
            current = model.get_submodule(name)
        except AttributeError:
            current = None
        if current is not module:
            replace_module(model, name, module)


def check_options(granularity: str, measure: str) -> None:
    """ConfigError for a granularity or measure :func:`sensitivity` does not know (before any model is loaded)."""
    if measure not in MEASURES:
        raise ConfigError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")


def sensitivity(model: nn.Module, task: Any, actions: Sequence[Action], *, layers: Selector | None = None,
                granularity: str = "layer", measure: str = "auto", n_samples: int | None = None,
                batch_size: int = 1) -> Sensitivity:
    """The quality cost of each action on each layer (``granularity="layer"``) or transformer block (``"block"``)
    alone, on ``n_samples`` of the task's calibration samples (default: 4, or as many as give
    :data:`MIN_POSITIONS` compared outputs: 256 images, 4 windows of text; ``measure="task"``: its evaluation
    metric instead).

    ``layers`` narrows the scanned layers (default: every layer some action selects by its own default). The model
    is changed only while a trial runs and is left exactly as given."""
    check_options(granularity, measure)
    if not actions:
        raise ConfigError("no actions to scan")
    t0 = time.perf_counter()
    model.eval()
    picks = {a.name: {n for n, m in a.config.selector.select(model) if not is_tied_input_embedding(model, m)}
             for a in actions}             # a tied input embedding follows its head's action (one table)
    allowed = {n for n, _ in layers.select(model)} if layers is not None else None
    names = [n for n, _ in model.named_modules() if any(n in p for p in picks.values())
             and (allowed is None or n in allowed)]
    if not names:
        raise ConfigError("no layer to scan: " + ("the layer rule picks no layer that an action selects" if layers
                                                  else "no action selects any layer of this model"))
    scorer = _Scorer(model, task, "mse" if measure == "block" else measure, n_samples, batch_size)
    ctx = ApplyContext(task=task, calibration=task)
    rows = []
    for group, members in _groups(model, names, granularity):
        mods = [model.get_submodule(n) for n in members]
        rows.append(Row(group, members, sum(p.numel() for m in mods for p in m.parameters()), stored_bytes(mods)))
    def run(row: Row, score: Any) -> None:
        for action in actions:
            mine = [n for n in row.layers if n in picks[action.name]]
            row.cells[action.name] = _trial(model, action, mine, ctx, score) if mine else Cell(None, None,
                                                                                             "not selected")

    done: set[str] = set()
    if measure == "block":
        by_group = {r.group: r for r in rows}
        done = scan_blocks(model, task, {r.group: r.layers for r in rows}, lambda g, sc: run(by_group[g], sc),
                           n_samples or 4, batch_size)
    rest = [r for r in rows if r.group not in done]
    for _, row in track([(r.group, r) for r in rest], "sensitivity", total=len(rest)) if rest else ():
        run(row, scorer)
    return Sensitivity(measure if measure == "block" else scorer.kind, granularity, [a.name for a in actions], rows,
                       time.perf_counter() - t0, getattr(scorer, "positions", 0),
                       {a.name: a.config.to_dict() for a in actions})
