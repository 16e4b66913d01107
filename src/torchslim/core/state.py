"""One state object per model: where it came from, what was done to it, and what an artifact must rebuild.

``state_of(model)`` returns the model's :class:`ModelState` (created on first use). It holds

* ``source``: JSON data saying how to rebuild the architecture (zoo entry, HF folder, ...);
* ``history``: the ordered :class:`HistoryEntry` of every applied config, training and
  evaluation stage, each with its config (stored once), what it touched, its time and metrics;
* ``layer_stage``: which history entry produced each compressed, resized or added layer;
* ``resized``: modules rebuilt at new shapes and plain attributes changed (structured pruning);
* ``added``: modules a technique added (adapters, exit heads, projections), by name;
* ``settings``: model-level settings re-applied on load (a KV-cache scheme), by config type;
* ``manifest``: the manifest the model was loaded from, if any.

It lives in the model's ``__dict__`` (not a submodule, not in ``state_dict``), survives
``copy.deepcopy`` and travels with the model when a technique returns a new root module.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from torch import nn

_ATTR = "_torchslim_state"


@dataclass
class HistoryEntry:
    """One stage applied to a model (JSON-serializable; ``config`` is a config dict or ``None``)."""

    index: int
    kind: str                               # "quantization", "pruning", "training", "evaluate", ...
    name: str                               # config class name, or the stage's name
    config: dict[str, Any] | None = None
    touched: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from torchslim.core.codec import jsonable

        return jsonable({"index": self.index, "kind": self.kind, "name": self.name, "config": self.config,
                         "touched": self.touched, "seconds": round(self.seconds, 3), "metrics": self.metrics,
                         "details": self.details})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistoryEntry:
        from torchslim.core.codec import decode_dataclass

        return decode_dataclass(cls, d, "history entry", lenient=True)


@dataclass
class ModelState:
    source: dict[str, Any] | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    layer_stage: dict[str, int] = field(default_factory=dict)
    resized: dict[str, dict[str, Any]] = field(default_factory=lambda: {"modules": {}, "attributes": {}})
    added: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    # -- names ---------------------------------------------------------------------------
    def forget(self, prefix: str) -> None:
        """Drop records of modules under ``prefix`` (a removed block)."""
        def keep(n: str) -> bool:
            return not (n == prefix or n.startswith(prefix + "."))

        for table in (self.resized["modules"], self.resized["attributes"], self.added, self.layer_stage):
            for n in [n for n in table if not keep(n)]:
                del table[n]

    def rename(self, old: str, new: str) -> None:
        """Move records from ``old.*`` to ``new.*`` (a block whose index changed)."""
        def moved(n: str) -> str:
            return new + n[len(old):] if n == old or n.startswith(old + ".") else n

        for table in (self.resized["modules"], self.resized["attributes"], self.added, self.layer_stage):
            items = list(table.items())
            table.clear()
            table.update((moved(n), v) for n, v in items)

    # -- history -------------------------------------------------------------------------
    def add_entry(self, kind: str, name: str, config: dict[str, Any] | None = None, **kw: Any) -> HistoryEntry:
        entry = HistoryEntry(len(self.history), kind, name, config, **kw)
        self.history.append(entry)
        return entry


def state_of(model: nn.Module) -> ModelState:
    """The :class:`ModelState` of ``model`` (an empty one is attached on first use)."""
    state = model.__dict__.get(_ATTR)
    if state is None:
        state = ModelState()
        model.__dict__[_ATTR] = state
    return state


def has_state(model: nn.Module) -> bool:
    return _ATTR in model.__dict__


def move_state(old: nn.Module, new: nn.Module) -> None:
    """Give ``new`` (a technique's returned root module) the state of ``old``."""
    if new is not old and _ATTR in old.__dict__:
        new.__dict__[_ATTR] = old.__dict__[_ATTR]


# -- what a stage touched ------------------------------------------------------------------------
def snapshot(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of every submodule (identity is what :func:`touched` compares)."""
    return dict(model.named_modules())


def touched(before: dict[str, nn.Module], model: nn.Module, params_before: int) -> tuple[dict[str, Any], list[str]]:
    """What changed between ``before`` and ``model``: layer counts by new module type, and the changed names.

    A layer is *changed* when the module under its name is a different object (replaced,
    resized or added) and is not a container; removed names are counted apart. The parts of a new
    replacement module (a low-rank pair's two factors) count as that one layer.
    """
    after = dict(model.named_modules())
    changed = [n for n, m in after.items() if n and before.get(n) is not m and _is_leafish(m)]
    new_formats = {n for n in changed if callable(getattr(after[n], "torchslim_layer_info", None))}
    changed = [n for n in changed if not any(n.startswith(f + ".") for f in new_formats)]
    removed = [n for n in before if n and n not in after]
    by_type: dict[str, int] = {}
    for n in changed:
        t = type(after[n]).__name__
        by_type[t] = by_type.get(t, 0) + 1
    params_after = count_params(model)
    out: dict[str, Any] = {"layers": len(changed), "by_type": by_type}
    if removed:
        out["removed_modules"] = len(removed)
    if params_after != params_before:
        out["params_before"], out["params_after"] = params_before, params_after
    return out, changed


def _is_leafish(m: nn.Module) -> bool:
    """A layer rather than a container: it holds parameters or buffers of its own, or reports layer info."""
    return (callable(getattr(m, "torchslim_layer_info", None)) or any(True for _ in m.parameters(recurse=False))
            or any(True for _ in m.buffers(recurse=False)))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0


def history_lines(history: list[dict[str, Any]]) -> Iterator[str]:
    """One readable line per history entry (for logs and ``torchslim info``)."""
    for h in history:
        touched_ = h.get("touched") if isinstance(h.get("touched"), dict) else {}
        by_type = touched_.get("by_type") if isinstance(touched_.get("by_type"), dict) else {}
        what = ", ".join(f"{v} {k}" for k, v in by_type.items()) or "no layer replaced"
        metrics = h.get("metrics") if isinstance(h.get("metrics"), dict) else {}
        shown_metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={str(v)[:40]}"
                                  for k, v in metrics.items())
        seconds = h.get("seconds") if isinstance(h.get("seconds"), (int, float)) else 0.0
        yield f"{h.get('index')}. {h.get('kind')}: {h.get('name')} ({what}; {seconds:.1f} s)" + \
            (f" {shown_metrics}" if shown_metrics else "")
