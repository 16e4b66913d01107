"""A per-layer latency model measured on the machine at hand, for searching mixes by speed.

Each scanned action is applied to a copy of the whole model (as a recipe would), the input every scanned layer
receives at one example shape is captured, and every layer is timed as it is and after each action, the variants
interleaved call by call. A mix's end-to-end latency is predicted as the uncompressed model's measured latency plus,
for every layer the mix changes, the difference between that layer's compressed and original time. What the model
ignores (interactions between layers, caches, the framework's fixed cost) shows when predictions are checked
against end-to-end timings of mixes it was not built from (:func:`check`).

The model is cached on disk (``$TORCHSLIM_CACHE/latency/``) by model fingerprint, actions, shape, threads and CPU
features, so a second search on the same machine reuses it.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from torchslim.core.archs import has_submodule
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.progress import track
from torchslim.core.registry import apply_
from torchslim.runtime.timing import measure_interleaved
from torchslim.search.actions import Action
from torchslim.search.sensitivity import quiet_trial

KEEP = "keep"


@dataclass
class LatencyModel:
    """Measured milliseconds: ``base_ms`` end to end for the uncompressed model at ``shape``, and per layer the
    time as it is (``keep``) and after each action (absent where the action does not change the layer)."""

    shape: tuple[int, int | None]
    base_ms: float
    layer_ms: dict[str, dict[str, float]]
    machine: dict[str, Any] = field(default_factory=dict)

    def predict(self, layers_by_action: dict[str, Sequence[str]]) -> float:
        """Predicted end-to-end milliseconds when each action in ``layers_by_action`` is applied to its layers."""
        ms = self.base_ms
        for action, layers in layers_by_action.items():
            for n in layers:
                t = self.layer_ms.get(n, {})
                if action in t:
                    ms += t[action] - t[KEEP]
        return max(ms, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyModel:
        return cls(tuple(d["shape"]), float(d["base_ms"]), {k: dict(v) for k, v in d["layer_ms"].items()},
                   dict(d.get("machine") or {}))


def machine_facts() -> dict[str, Any]:
    """CPU model, ISA features, cores, threads and torch: what a latency figure depends on."""
    from torchslim.runtime.machine import machine_info

    return machine_info()


def _capture_inputs(model: nn.Module, names: Sequence[str], run: Any) -> dict[str, tuple]:
    """The positional inputs each named module receives in one forward (its first call)."""
    seen: dict[str, tuple] = {}
    hooks = []
    for n in names:
        def hook(mod: nn.Module, args: tuple, n: str = n) -> None:
            seen.setdefault(n, tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args))
        hooks.append(model.get_submodule(n).register_forward_pre_hook(hook))
    try:
        run(model)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _call(module: nn.Module, args: tuple) -> Any:
    def f() -> Any:
        with torch.inference_mode():
            return module(*args)
    return f


def end_to_end(models: dict[str, nn.Module], task: Any, shape: tuple[int, int | None], iters: int) -> dict[str, float]:
    """Median milliseconds of one forward of each model at ``shape``, the models timed interleaved."""
    from torchslim.eval.speed import forward_fn

    inputs = task.example_inputs(shape[0], shape[1])
    stats = measure_interleaved({k: forward_fn(m, task, inputs) for k, m in models.items()}, 3, iters)
    return {k: s.median_ms for k, s in stats.items()}


def fit(model: nn.Module, task: Any, actions: Sequence[Action], layers: Sequence[str], *,
        shape: tuple[int, int | None] = (1, 128), iters: int = 15, calibrated: bool = True) -> LatencyModel:
    """Measure the latency model (module docstring). ``calibrated=False`` applies each action without
    calibration data where its config allows (the packed format, hence the time, is the same)."""
    if not layers:
        raise ConfigError("a latency model needs at least one layer to time")
    model.eval()
    ctx = ApplyContext(task=task, calibration=task if calibrated else None)
    variants: dict[str, nn.Module] = {KEEP: model}
    for a in track(list(actions), "latency model: applying each action", total=len(actions)):
        trial = copy.deepcopy(model)
        with quiet_trial():
            trial = apply_(trial, a.config, ctx, record=False)
        variants[a.name] = trial.eval()
    inputs = task.example_inputs(shape[0], shape[1])
    capture = _capture_inputs(model, layers, lambda m: task.forward(m, inputs))
    layer_ms: dict[str, dict[str, float]] = {}
    for n in track(list(layers), "latency model: timing layers", total=len(layers)):
        if n not in capture:
            continue                                   # not reached by this forward: it costs nothing here
        original = model.get_submodule(n)
        fns = {KEEP: _call(original, capture[n])}
        for k, m in variants.items():                  # an action that left this layer as it was is not timed
            if k != KEEP and has_submodule(m, n) and not _same(m.get_submodule(n), original):
                fns[k] = _call(m.get_submodule(n), capture[n])
        stats = measure_interleaved(fns, 2, iters)
        layer_ms[n] = {k: s.median_ms for k, s in stats.items()}
    base = end_to_end({KEEP: model}, task, shape, iters)[KEEP]
    return LatencyModel(tuple(shape), base, layer_ms, machine_facts())


def _same(a: nn.Module, b: nn.Module) -> bool:
    if type(a) is not type(b):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def cache_key(model: nn.Module, actions: Sequence[Action], shape: tuple[int, int | None]) -> str:
    """Model fingerprint (names and shapes of its state), actions, shape, threads and CPU features."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype};".encode())
    h.update(json.dumps([[a.name, a.config.to_dict()] for a in actions], sort_keys=True, default=str).encode())
    h.update(json.dumps([list(shape), machine_facts()], sort_keys=True).encode())
    return h.hexdigest()[:24]


def cached_fit(model: nn.Module, task: Any, actions: Sequence[Action], layers: Sequence[str], *,
               shape: tuple[int, int | None] = (1, 128), cache_dir: Path | None = None, **kw: Any) -> LatencyModel:
    """:func:`fit`, read from or written to the on-disk cache."""
    from torchslim.core.io import atomic_file

    root = Path(os.environ.get("TORCHSLIM_CACHE") or Path.home() / ".cache" / "torchslim").expanduser()
    folder = Path(cache_dir) if cache_dir is not None else root / "latency"
    path = folder / f"{cache_key(model, actions, shape)}.json"
    if path.is_file():
        d = json.loads(path.read_text())
        if set(layers) <= set(d["layer_ms"]) | set(d.get("unreached", [])):
            return LatencyModel.from_dict(d)
    lm = fit(model, task, actions, layers, shape=shape, **kw)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        json.dump({**lm.to_dict(), "unreached": [n for n in layers if n not in lm.layer_ms]}, f)
    return lm


@dataclass
class Check:
    """Predicted against measured end-to-end milliseconds for mixes the model was not built from."""

    predicted_ms: list[float]
    measured_ms: list[float]

    @property
    def errors(self) -> list[float]:
        return [abs(p - m) / m for p, m in zip(self.predicted_ms, self.measured_ms)]

    @property
    def median_error(self) -> float:
        return statistics.median(self.errors) if self.errors else float("nan")

    @property
    def max_error(self) -> float:
        return max(self.errors) if self.errors else float("nan")


def check(lm: LatencyModel, model: nn.Module, task: Any, mixes: Sequence[tuple[nn.Module, dict[str, Sequence[str]]]],
          *, iters: int = 15) -> Check:
    """Time each compressed model of ``mixes`` (a model and the layers per action it was built with) end to end,
    interleaved with the uncompressed one, and compare with the model's prediction scaled to this session's
    measured baseline (so drift of the machine between fitting and checking is not counted as model error)."""
    models = {"base": model, **{f"mix{i}": m for i, (m, _) in enumerate(mixes)}}
    measured = end_to_end(models, task, lm.shape, iters)
    scale = measured["base"] / lm.base_ms
    return Check([lm.predict(layers) * scale for _, layers in mixes],
                 [measured[f"mix{i}"] for i in range(len(mixes))])
