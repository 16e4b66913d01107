"""Model-level verbs, one per technique family; each changes the model in place (torch style).

Every verb takes the model, one config, and either keyword arguments naming the data it
needs (``calibration=``, ``task=``, ``train=``, ``teacher=``, ``example_inputs=``, ``device=``,
``hooks=``, ``train_data=``; see :class:`torchslim.core.context.ApplyContext`) or one
``ctx=ApplyContext(...)``. An unknown keyword is an error.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from torch import nn

from torchslim.artifact import load as load_artifact
from torchslim.core.config import BaseConfig
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.registry import apply_, get_entry, warn_unused

Configs = BaseConfig | list[BaseConfig] | tuple[BaseConfig, ...]


def _load_teacher(ctx: ApplyContext | None, kwargs: dict) -> ApplyContext | None:
    """A teacher given as an artifact folder is loaded here, at the edge (techniques take a model or a callable)."""
    if isinstance(kwargs.get("teacher"), (str, Path)):
        kwargs["teacher"] = load_artifact(kwargs["teacher"])
    if ctx is not None and isinstance(ctx.teacher, (str, Path)):
        ctx = dataclasses.replace(ctx, teacher=load_artifact(ctx.teacher))
    return ctx


def _apply(model: nn.Module, config: Configs, ctx: ApplyContext | None, family: str, kwargs: dict) -> nn.Module:
    ctx = _load_teacher(ctx, kwargs)
    if not isinstance(config, (list, tuple)):
        return apply_(model, config, ctx, family=family, **kwargs)
    from torchslim.calibration.plan import apply_sequence_

    if not config or not all(isinstance(c, BaseConfig) for c in config):
        raise ConfigError("expected a torchslim config or a non-empty list of them")
    if ctx is None:
        ctx = ApplyContext.from_kwargs(**kwargs)
        used = set().union(*(get_entry(c).uses for c in config))
        warn_unused(" + ".join(type(c).__name__ for c in config), used, ctx.given())
    elif kwargs:
        raise ConfigError(f"pass the context as ctx= or as keyword arguments, not both (got {sorted(kwargs)[0]})")
    return apply_sequence_(model, list(config), ctx, family=family)


def quantize_(model: nn.Module, config: Configs, ctx: ApplyContext | None = None, **kwargs: Any) -> nn.Module:
    """Quantize ``model`` in place with ``config``; ``calibration`` is a Task or a list of batches.

    A list of configs is applied in order; consecutive calibrated ones share one calibration pass where
    the math allows (``[AWQConfig(scale_only=True), GPTQConfig()]``)."""
    return _apply(model, config, ctx, "quantization", kwargs)


def prune_(model: nn.Module, config: Configs, ctx: ApplyContext | None = None, **kwargs: Any) -> nn.Module:
    """Prune ``model`` in place with ``config`` (schedules train it: pass ``task=`` and ``train=``)."""
    return _apply(model, config, ctx, "pruning", kwargs)


def finetune_(model: nn.Module, config: Configs, ctx: ApplyContext | None = None, **kwargs: Any) -> nn.Module:
    """Train ``model`` in place on its task (``task=``) with a training config (recovery fine-tuning)."""
    return _apply(model, config, ctx, "training", kwargs)


def distill_(model: nn.Module, config: Configs, ctx: ApplyContext | None = None, **kwargs: Any) -> nn.Module:
    """Train ``model`` (the student) in place to imitate ``teacher=`` (a model, an artifact folder or a callable;
    for :class:`~torchslim.distill.BlackBoxDistillConfig` a function from prompts to texts) on ``task=``."""
    return _apply(model, config, ctx, "distillation", kwargs)


def factorize_(model: nn.Module, config: Configs, ctx: ApplyContext | None = None, **kwargs: Any) -> nn.Module:
    """Replace ``model``'s linear layers in place by two-factor low-rank layers (:class:`~torchslim.LowRankConfig`:
    plain, activation-aware or whitened SVD); the calibrated methods read ``calibration=`` (a Task or batches)."""
    return _apply(model, config, ctx, "lowrank", kwargs)


def convert_attention_(model: nn.Module, config: Configs, ctx: ApplyContext | None = None, **kwargs: Any) -> nn.Module:
    """Replace the softmax attention of ``model``'s attention modules in place by an efficient approximation
    (:class:`~torchslim.AttentionConfig`: sliding window / block-sparse, Linformer or Performer); recover with
    :func:`distill_` from the original model."""
    return _apply(model, config, ctx, "attention", kwargs)


def early_exit_(model: nn.Module, config: Configs, ctx: ApplyContext | None = None, **kwargs: Any) -> nn.Module:
    """Add exit heads to ``model``'s intermediate blocks and train them by distillation from its final layer
    (:class:`~torchslim.EarlyExitConfig`; pass ``task=`` and ``train=``); run it with
    :class:`torchslim.early_exit.ExitRuntime` and an exit policy."""
    return _apply(model, config, ctx, "early_exit", kwargs)


def evaluate(model: nn.Module, task: Any, spec: Any = None, *, what: str | Sequence[str] = ("quality",),
             runtime: str = "torch", file: str | os.PathLike | None = None,
             runtime_options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Evaluate ``model`` on ``task`` and return a :class:`torchslim.eval.Report`.

    ``what`` picks the measurements: by default only the task's quality metrics
    (``report.quality.metrics["perplexity"]``); ``what="all"`` is the full sweep that ``torchslim eval``
    runs, or name some of ``"quality"``, ``"size"``, ``"speed"`` (latency per shape and decode tokens/s),
    ``"flops"``, ``"memory"``, ``"energy"``. ``spec`` (a :class:`torchslim.eval.EvalSpec`) sets how they are
    measured (shapes, iterations, threads); its ``measure_*`` flags can only turn one off. Other keywords
    (``label=``, ``artifact_dir=``, ``console=``) go to :func:`torchslim.eval.evaluate`; the artifact format
    measures bytes on disk (``spec.sizer``).

    ``runtime`` (``torch``, ``onnxruntime``, ``openvino`` or ``llamacpp``) runs the exported ``file`` (ONNX for the
    first two, GGUF for llama.cpp; by default ``model`` is exported to a temporary one) in that runtime, with the
    same task, metric and timing code and the same thread count; ``runtime_options`` go to its adapter
    (:func:`torchslim.runtime.backends.open_file`). Size on disk is then the file's; FLOPs are ``model``'s.
    """
    from torchslim.artifact.size import artifact_size
    from torchslim.eval import EvalSpec, evaluate as _evaluate

    spec = spec or EvalSpec()
    if runtime != "torch":
        return _evaluate_file(model, task, spec, what, runtime, file, runtime_options or {}, kwargs)
    if file is not None or runtime_options:
        raise ConfigError("file= and runtime_options= need a runtime other than torch (runtime='onnxruntime', ...)")
    if spec.sizer is None:
        spec = dataclasses.replace(spec, sizer=artifact_size)
    return _evaluate(model, task, spec, what=what, **kwargs)


def _evaluate_file(model: nn.Module, task: Any, spec: Any, what: Any, runtime: str, file: Any,
                   options: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    import tempfile

    import torch

    from torchslim.eval import evaluate as _evaluate, model_label
    from torchslim.exports import export_for_runtime
    from torchslim.runtime.backends import open_file, require

    require(runtime)                                  # one line before any export when it is not installed
    threads = spec.threads if spec.threads is not None else torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix=f"torchslim-{runtime}-") as tmp:
        path = Path(file) if file is not None else export_for_runtime(model, runtime, tmp, task=task)
        runner = open_file(runtime, path, threads=threads, **options)
        size = runner.file_bytes()

        def sizer(*_: Any) -> tuple[int, str]:
            return size, f"bytes of the file {runtime} runs ({path.name})"

        spec = dataclasses.replace(spec, sizer=sizer, threads=threads)
        label = kwargs.pop("label", None) or model_label(model)
        report = _evaluate(model, task, spec, what=what, label=f"{label} @ {runtime}", runner=runner, **kwargs)
    report.settings["file_exported"] = file is None          # a temporary export, removed after the evaluation
    return report
