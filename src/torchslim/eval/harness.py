"""``evaluate(model, task)``: quality, size, speed, FLOPs, memory and energy in one typed report."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.core.progress import stage as progress_stage
from torchslim.core.bounds import check_activation_memory, check_seq_len, model_width
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.state import has_state, state_of
from torchslim.eval.energy import EnergyCounter, counter_note, open_energy_counter
from torchslim.eval.flops import measure_flops
from torchslim.eval.memory import RssSampler, cuda_peak, reset_cuda_peak
from torchslim.eval.report import (EnergyResult, QualityResult, Report, ShapeEnergy, SpeedResult,
                                   jsonable)
from torchslim.eval.size import Sizer, measure_size
from torchslim.eval.speed import (forward_fn, measure_decode, measure_latency, model_device,
                                  shape_speed, to_device)
from torchslim.tasks.base import Task
from torchslim.version import __version__


@dataclass
class EvalSpec:
    """What :func:`evaluate` measures and how.

    ``shapes``: ``(batch, seq_len)`` pairs for latency (default ``task.default_shapes``; FLOPs use
    the first). ``threads``: intra-op threads during the run (default: the current setting;
    restored afterwards). ``decode_tokens``: new tokens for generation speed (0 disables).
    ``artifact_dir``: measure this existing artifact's bytes instead of saving a temporary one.
    ``sizer``: measures bytes on disk (the artifact format's; without one they are not measured).
    ``powercap_root``: where RAPL counters live (default ``/sys/class/powercap``).
    Memory (RSS sampling) and energy are measured around the same timed loops as latency.
    """

    shapes: tuple[tuple[int, int | None], ...] | None = None
    warmup: int = 3
    iters: int = 10
    threads: int | None = None
    decode_tokens: int = 32
    measure_quality: bool = True
    measure_size: bool = True
    measure_speed: bool = True
    measure_flops: bool = True
    measure_memory: bool = True
    measure_energy: bool = True
    artifact_dir: str | os.PathLike | None = None
    powercap_root: str | os.PathLike | None = None
    rss_interval_s: float = 0.002
    flops_by_module: bool = True
    sizer: Sizer | None = None      # bytes on disk (torchslim.artifact.size.artifact_size; torchslim.evaluate's default)


MEASUREMENTS = ("quality", "size", "speed", "flops", "memory", "energy")


def measuring(spec: EvalSpec, what: str | Iterable[str]) -> EvalSpec:
    """``spec`` measuring only ``what``: ``"all"``, one name or several of :data:`MEASUREMENTS`.

    A measurement the spec itself turns off (``measure_speed=False``) stays off. ``"speed"``
    includes decode tokens/s; memory and energy are sampled around the same timed loops as latency.
    """
    names = (what,) if isinstance(what, str) else tuple(what)
    valid = ", ".join(MEASUREMENTS)
    if not names:
        raise ConfigError(f"what= is empty: choose from {valid}, or 'all'")
    for n in names:
        if not isinstance(n, str) or (n not in MEASUREMENTS and n != "all"):
            raise ConfigError(f"what=: unknown measurement {n!r}: choose from {valid}, or 'all'")
    chosen = set(MEASUREMENTS) if "all" in names else set(names)
    return dataclasses.replace(spec, **{f"measure_{m}": getattr(spec, f"measure_{m}") and m in chosen
                                        for m in MEASUREMENTS})


def _shapes(spec: EvalSpec, task: Task) -> list[tuple[int, int | None]]:
    raw = spec.shapes if spec.shapes is not None else task.default_shapes
    out = []
    for s in raw:
        if not isinstance(s, (tuple, list)) or len(s) != 2:
            raise ConfigError(f"each shape must be (batch, seq_len or None), got {s!r}")
        b, n = s
        if not isinstance(b, int) or b < 1 or (n is not None and (not isinstance(n, int) or n < 1)):
            raise ConfigError(f"shape {tuple(s)!r}: batch must be an int >= 1 and seq_len None or an int >= 1")
        out.append((b, n))
    if not out:
        raise ConfigError("EvalSpec.shapes is empty")
    return out


def _validate(spec: EvalSpec, threads: int) -> None:
    if spec.warmup < 0:
        raise ConfigError(f"EvalSpec.warmup must be >= 0, got {spec.warmup}")
    if spec.iters < 3:
        raise ConfigError(f"EvalSpec.iters must be >= 3 (for a median and p90), got {spec.iters}")
    if threads < 1:
        raise ConfigError(f"EvalSpec.threads must be >= 1, got {threads}")
    if spec.decode_tokens < 0:
        raise ConfigError(f"EvalSpec.decode_tokens must be >= 0, got {spec.decode_tokens}")


def _path_like(value: str) -> bool:
    return os.path.isabs(value) or value.startswith(("~", ".")) or os.path.exists(value)


def _base_label(model: nn.Module) -> str:
    source = state_of(model).source if has_state(model) else None
    if isinstance(source, dict):
        if source.get("kind") == "zoo" and isinstance(source.get("name"), str) and source["name"]:
            return source["name"]
        if source.get("kind") == "hf" and isinstance(source.get("path"), str) and source["path"]:
            return Path(source["path"]).name or source["path"]
    for obj in (model, getattr(model, "config", None)):
        for attr in ("name_or_path", "_name_or_path"):
            value = getattr(obj, attr, None)
            if isinstance(value, str) and value:
                # a local folder (the zoo's conversion cache, a download) is named by its folder, not its path
                return (Path(value).name or value) if _path_like(value) else value
    return type(model).__name__


def model_label(model: nn.Module) -> str:
    """A readable name: the zoo name or model folder it was loaded from (never a cache path), a Hugging
    Face hub id, else the class name; followed by the compression stages applied, if any
    (``"smollm2-135m + GPTQConfig"``)."""
    base = _base_label(model)
    stages = [e.name for e in state_of(model).history if e.kind != "evaluate"] if has_state(model) else []
    if not stages:
        return base
    shown = stages if len(stages) <= 3 else [*stages[:2], f"{len(stages) - 2} more"]
    return f"{base} + {' + '.join(shown)}"


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model name from ``/proc/cpuinfo`` (falling back to ``platform``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or device.type


def layer_info(model: nn.Module) -> list[dict[str, Any]]:
    """One entry per module defining ``torchslim_layer_info()``: name, type, format, kernel, then its other keys.

    ``format`` is the info's ``format`` when it is a string, else its ``storage`` (a readable
    description replacement modules give); a structured ``format`` is kept as ``format_config``.
    """
    layers = []
    for name, module in model.named_modules():
        fn = getattr(module, "torchslim_layer_info", None)
        if not callable(fn):
            continue
        info = dict(fn() or {})
        fmt = info.get("format")
        if not isinstance(fmt, str):
            if fmt is not None:
                info["format_config"] = fmt
            fmt = info.get("storage")
        entry = {"name": name, "type": type(module).__name__, "format": fmt, "kernel": info.get("kernel")}
        entry.update((k, v) for k, v in info.items() if k not in entry)
        layers.append(jsonable(entry))
    return layers


def _quality(model: nn.Module, task: Task) -> QualityResult:
    with torch.no_grad():
        metrics = task.evaluate(model)
    if task.metric not in metrics:
        raise TorchSlimError(f"task '{task.name}' evaluate() did not return its primary metric '{task.metric}'")
    try:
        values = {str(k): float(v) for k, v in metrics.items()}
    except (TypeError, ValueError):
        raise TorchSlimError(f"task '{task.name}' evaluate() returned a non-numeric metric") from None
    return QualityResult(metrics=values, primary=task.metric, higher_is_better=bool(task.higher_is_better))


def _energy(batch: int, seq_len: int | None, counter: EnergyCounter, start: list[int],
            end: list[int], seconds: float, forwards: int) -> ShapeEnergy:
    joules = counter.joules_between(start, end)
    return ShapeEnergy(batch=batch, seq_len=seq_len, forwards=forwards, seconds=seconds, joules=joules,
                       joules_per_forward=joules / forwards, average_watts=joules / seconds if seconds > 0 else 0.0)


def _tokens(batch: int, seq_len: int | None) -> int:
    return batch * (seq_len or 1)


def _timed_runs(model: nn.Module, task: Task, spec: EvalSpec, shapes: list[tuple[int, int | None]],
                device: torch.device, report: Report) -> None:
    """Warm up and time every shape, sampling RSS and reading the energy counter around the loops."""
    counter, reason = open_energy_counter(device, spec.powercap_root) if spec.measure_energy else (None, None)
    sync = functools.partial(torch.cuda.synchronize, device) if device.type == "cuda" else None
    sampler = RssSampler(spec.rss_interval_s) if spec.measure_memory else None
    speeds, energies = [], []
    reset_cuda_peak(device)
    from torchslim.core.progress import Progress, mode

    # lines on stderr between forwards, outside the timed calls (never a bar: its refresh thread would compete
    # with the timed forwards); counted in tokens so that the estimate weighs an 8x128 forward as 8 of 1x128
    total = sum(_tokens(b, n) for b, n in shapes) * (spec.warmup + spec.iters)
    with sampler if sampler is not None else contextlib.nullcontext(), \
            Progress("timing shapes", total, unit="tokens", show=mode() == "lines") as progress:
        for batch, seq_len in shapes:
            fn = forward_fn(model, task, to_device(task.example_inputs(batch, seq_len), device))
            step = functools.partial(progress.update, _tokens(batch, seq_len), f"{batch}x{seq_len}")
            for _ in range(spec.warmup):
                fn()
                step()
            if sync is not None:
                sync()
            start, t0 = (counter.read() if counter else None), time.perf_counter()
            stats = measure_latency(fn, 0, spec.iters, sync=sync, after_each=step)
            seconds = time.perf_counter() - t0
            if counter is not None:
                energies.append(_energy(batch, seq_len, counter, start, counter.read(), seconds, spec.iters))
            speeds.append(shape_speed(batch, seq_len, stats))
    if spec.measure_speed:
        report.speed = SpeedResult(shapes=speeds)
    if sampler is not None:
        report.memory = sampler.result(cuda_peak(device))
    if spec.measure_energy:
        report.energy = _energy_result(counter, reason, energies)


def _energy_result(counter: EnergyCounter | None, reason: str | None, energies: list[ShapeEnergy]) -> EnergyResult:
    if counter is None:
        return EnergyResult(available=False, reason=reason)
    note = counter_note(counter)
    if any(e.joules == 0 for e in energies):
        note += "; the counter did not advance during a loop (shorter than its update interval): raise iters"
    return EnergyResult(available=True, source=counter.source, domains=list(counter.domains),
                        shapes=energies, note=note)


def _decode(model: nn.Module, task: Task, spec: EvalSpec, report: Report) -> None:
    if report.speed is None:
        return
    if not task.supports_decode:
        report.speed.decode_note = f"task '{task.name}' does not generate text"
    elif spec.decode_tokens == 0:
        report.speed.decode_note = "disabled (decode_tokens=0)"
    else:
        report.speed.decode = measure_decode(model, task, spec.decode_tokens)


def _stage(console: Any, text: str, *, spinner: bool = True) -> Any:
    """A progress line on ``console`` while a stage runs (timed stages: no spinner thread)."""
    return progress_stage(console, text, spinner=spinner)


def _run(model: nn.Module, task: Task, spec: EvalSpec, shapes: list[tuple[int, int | None]],
         device: torch.device, report: Report, source: dict[str, Any] | None, console: Any,
         runner: nn.Module) -> None:
    """Size and FLOPs are facts of ``model``; speed, memory, energy, decode and quality are measured on ``runner``
    (the model itself, or an exported file run by another runtime)."""
    report.layers = layer_info(model) if runner is model else []
    if spec.measure_size:
        with _stage(console, "measuring size (saving a temporary artifact)"):
            report.size = measure_size(model, artifact_dir=spec.artifact_dir, source=source, sizer=spec.sizer)
    if spec.measure_flops:
        b, n = shapes[0]
        with _stage(console, "counting FLOPs"):
            inputs = to_device(task.example_inputs(b, n), device)
            report.compute = measure_flops(model, task, inputs, b, n, by_module=spec.flops_by_module)
    if spec.measure_speed or spec.measure_memory or spec.measure_energy:
        with _stage(console, f"timing {len(shapes)} shape(s): {spec.warmup} warm-up + {spec.iters} timed forwards each",
                    spinner=False):
            _timed_runs(runner, task, spec, shapes, device, report)
    if spec.measure_speed:               # a task that does not generate gets its note, not a stage line
        generates = task.supports_decode and spec.decode_tokens > 0 and report.speed is not None
        with _stage(console, f"measuring decode speed ({spec.decode_tokens} tokens)", spinner=False) if generates else \
                contextlib.nullcontext():
            _decode(runner, task, spec, report)
    if spec.measure_quality:
        with _stage(console, f"evaluating quality ({task.metric})"):
            report.quality = _quality(runner, task)


def evaluate(model: nn.Module, task: Task, spec: EvalSpec | None = None, *, what: str | Iterable[str] = "all",
             label: str | None = None, source: dict[str, Any] | None = None,
             artifact_dir: str | os.PathLike | None = None, console: Any = None,
             runner: nn.Module | None = None) -> Report:
    """Measure ``model`` on ``task`` (in eval mode, with ``spec.threads`` threads) and return a Report.

    ``what`` picks the measurements (see :func:`measuring`; here the full sweep by default);
    ``label`` names the model in the report (default: :func:`model_label`); ``source`` is passed to
    ``spec.sizer`` when the artifact size is measured; ``artifact_dir`` overrides
    ``spec.artifact_dir``; ``console`` (a ``rich.console.Console``) shows progress. ``runner`` (an exported file
    run by another runtime, :func:`torchslim.runtime.backends.open_file`) is what quality, latency, decode speed,
    memory and energy are measured on, by the same task and timing code; ``model`` still gives size and FLOPs, and
    ``spec.sizer`` the bytes on disk (of the file, for a runner). ``report.settings["runtime"]`` names the runtime.
    """
    spec = measuring(spec or EvalSpec(), what)
    if artifact_dir is not None:
        spec = dataclasses.replace(spec, artifact_dir=artifact_dir)
    shapes = _shapes(spec, task)
    for b, n in shapes:                      # bounds before allocating: a shape's activations and its context
        if n is not None and n > 1:
            check_seq_len(n, model, f"shape {b}x{n}: the sequence length")
        check_activation_memory(b, n or 1, model_width(model), f"shape {b}x{n}")
    threads = spec.threads if spec.threads is not None else torch.get_num_threads()
    _validate(spec, threads)
    device = model_device(model)
    report = Report(
        model=label or model_label(model), task=task.name, device=str(device), device_name=device_name(device),
        threads=threads, torch_version=torch.__version__, torchslim_version=__version__,
        timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        settings={"shapes": [[b, n] for b, n in shapes], "warmup": spec.warmup, "iters": spec.iters,
                  "decode_tokens": spec.decode_tokens,
                  "what": [m for m in MEASUREMENTS if getattr(spec, f"measure_{m}")],
                  "artifact_dir": None if spec.artifact_dir is None else str(spec.artifact_dir),
                  "runtime": getattr(runner, "runtime", "torch")},
    )
    runner = model if runner is None else runner
    if runner is not model:
        report.settings["file"] = str(getattr(runner, "path", ""))
    prev_threads, was_training = torch.get_num_threads(), model.training
    torch.set_num_threads(threads)
    model.eval()
    try:
        _run(model, task, spec, shapes, device, report, source, console, runner)
    finally:
        torch.set_num_threads(prev_threads)
        model.train(was_training)
    return report
