"""The report of a recipe run: one row per stage (what changed, size, quality, time) and the uncompressed
model beside the final one, with speed measured interleaved on this machine (never at different moments).
"""
from __future__ import annotations

import functools
import logging
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim.core.state import state_of
from torchslim.eval.size import count_parameters, memory_bytes

log = logging.getLogger("torchslim.recipes")


def quick_eval(model: nn.Module, task: Any, label: str) -> dict[str, Any]:
    """Quality metrics and in-memory size of ``model``, appended to its history as an ``evaluate`` entry."""
    from torchslim.core.state import Timer

    if task is None:
        return {}
    was = model.training
    model.eval()
    with Timer() as t, torch.no_grad():
        metrics = {k: float(v) for k, v in task.evaluate(model).items()}
    model.train(was)
    state = state_of(model)
    _warn_collapse(state.history, metrics, task, label)
    state.add_entry("evaluate", label, None, seconds=t.seconds, metrics=metrics,
                    touched={"params": count_parameters(model, nonzero=False)[0], "memory_bytes": memory_bytes(model)})
    return metrics


def _warn_collapse(history: list[Any], metrics: dict[str, float], task: Any, label: str) -> None:
    """Warn, naming the stages since the last evaluation, when they made quality collapse (perplexity up more
    than tenfold, accuracy near chance)."""
    from torchslim.eval.collapse import collapse_warning

    last = next((i for i in range(len(history) - 1, -1, -1) if history[i].kind == "evaluate" and history[i].metrics),
                None)
    if last is None:
        return
    stages = [h.name for h in history[last + 1:] if h.kind != "evaluate"]
    msg = collapse_warning(history[last].metrics, metrics, task.metric, bool(task.higher_is_better),
                           " + ".join(stages) or label, getattr(task, "chance", None),
                           hint="a lower ratio or sparsity, a calibrated importance (Taylor, Wanda), more "
                                "calibration samples, or a recovery stage after it")
    if msg:
        log.warning("%s", msg)


@dataclass
class StageRow:
    index: int
    stage: str
    seconds: float
    changed: str = ""
    params: int | None = None
    memory_bytes: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def stage_row(index: int, stage: str, seconds: float, model: nn.Module, since: int) -> StageRow:
    """The row of one stage: what its history entries (from index ``since``) say it changed and measured;
    parameters are logical (packed weights counted unpacked)."""
    entries = state_of(model).history[since:]
    changed = ", ".join(f"{n} {k}" for e in entries for k, n in (e.touched.get("by_type") or {}).items())
    metrics: dict[str, float] = {}
    for e in entries:
        metrics.update({k: v for k, v in e.metrics.items() if isinstance(v, (int, float))})
    return StageRow(index, stage, seconds, changed, count_parameters(model, nonzero=False)[0], memory_bytes(model), metrics)


def interleaved_speed(models: dict[str, nn.Module], task: Any, shapes: list[tuple[int, int | None]], warmup: int,
                      iters: int, decode_tokens: int) -> dict[str, Any]:
    """Latency per shape and decode tokens/s of several models, timed round-robin in one process. Progress
    lines on stderr between calls where progress shows as lines (never a bar: it would compete with the timing)."""
    from torchslim.core.progress import Progress, mode
    from torchslim.eval.report import SpeedResult
    from torchslim.eval.speed import forward_fn, measure_decode, measure_interleaved, shape_speed

    out: dict[str, Any] = {name: SpeedResult(shapes=[]) for name in models}
    for m in models.values():
        m.eval()
    lines = mode() == "lines"
    total = sum(b * (s or 1) for b, s in shapes) * (warmup + iters) * len(models)      # weighed by tokens
    with Progress(f"timing {len(models)} models interleaved", total, unit="tokens", show=lines) as progress:
        for batch, seq in shapes:
            inputs = task.example_inputs(batch, seq)
            step = functools.partial(progress.update, batch * (seq or 1), f"{batch}x{seq}")
            stats = measure_interleaved({n: forward_fn(m, task, inputs) for n, m in models.items()}, warmup, iters,
                                        after_each=step)
            for n, st in stats.items():
                out[n].shapes.append(shape_speed(batch, seq, st))
    if decode_tokens and getattr(task, "supports_decode", False):
        runs: dict[str, list[Any]] = {n: [] for n in models}
        with Progress(f"timing decode ({decode_tokens} tokens)", 3 * len(models), unit="runs", show=lines) as progress:
            for _ in range(3):
                for n, m in models.items():
                    runs[n].append(measure_decode(m, task, decode_tokens))
                    progress.update(1, n)
        for n, rs in runs.items():
            best = sorted(rs, key=lambda r: r.decode_tokens_per_s)[len(rs) // 2]
            best.decode_tokens_per_s = statistics.median(r.decode_tokens_per_s for r in rs)
            best.prefill_ms = statistics.median(r.prefill_ms for r in rs)
            out[n].decode = best
    return out


def markdown(report: dict[str, Any], table: str) -> str:
    """The run report as Markdown: the stage table, then the before/after table."""
    lines = [f"# {report['recipe']} on {report['model']}", "", report.get("description", ""), "",
             f"Machine: {report['machine']}", "",
             f"| # | stage | changed | parameters | in memory | {report['metric']} | time |", "|---|---|---|---|---|---|---|"]
    for r in report["stages"]:
        v = r["metrics"].get(report["metric"])
        q = f"{v:.4g}" if isinstance(v, (int, float)) else ""
        params = f"{r['params'] / 1e6:.2f} M" if r.get("params") is not None else ""
        mem = f"{r['memory_bytes'] / 2**20:.1f} MiB" if r.get("memory_bytes") is not None else ""
        lines.append(f"| {r['index']} | {r['stage']} | {r['changed']} | {params} | {mem} | {q} | {r['seconds']:.1f} s |")
    lines += ["", "Uncompressed and final model side by side (speed timed interleaved, medians):", "", table, ""]
    return "\n".join(lines)
