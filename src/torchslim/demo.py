"""The main job on an embedded default: evaluate, compress, save, reload, evaluate again, compare."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torchslim.core.config import BaseConfig


def default_config() -> list[BaseConfig]:
    """int4 (asymmetric, groups of 128) GPTQ for every linear, lm_head at int8 per channel, then the input
    embedding (no longer tied to lm_head) stored in bf16. Configs compose: applied in order."""
    import torch
    from torch import nn

    from torchslim.core.select import Selector
    from torchslim.quantization import CastConfig, GPTQConfig, IntFormat, PerChannel, PerGroup, WeightOnlyConfig

    head = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel())
    weight = WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(128),
                              selector=Selector(overrides={"lm_head": head}))
    return [GPTQConfig(weight=weight), CastConfig(dtype=torch.bfloat16, selector=Selector(include=(nn.Embedding,)))]


def run_demo(model: str = "smollm2-135m", out: Path = Path("out/demo"),
             config: BaseConfig | list[BaseConfig] | None = None, spec: Any = None, console: Any = None) -> list[Any]:
    """Evaluate ``model``, compress it with ``config``, save and reload the artifact, and evaluate that.

    Returns the two reports (original, compressed-and-reloaded) and prints them side by side.
    """
    from rich.console import Console

    from torchslim.api import quantize_
    from torchslim.artifact import load, save
    from torchslim.eval import evaluate, render_table
    from torchslim.models import load_model

    console = console or Console()
    configs = config if isinstance(config, list) else [config] if config is not None else default_config()
    with console.status(f"loading {model}"):
        loaded = load_model(model)
    base = evaluate(loaded.model, loaded.task, spec, label=f"{model} (original)", console=console)
    for cfg in configs:
        console.print(f"compressing with {_describe(cfg)}")
        quantize_(loaded.model, cfg, calibration=loaded.task)
    save(loaded.model, out, source=loaded.source)
    del loaded.model
    reloaded = load(out)
    slim = evaluate(reloaded, loaded.task, spec, label=f"{model} ({_describe(configs[0])}, from {out})",
                    artifact_dir=out, console=console)
    console.print(render_table([base, slim]))
    console.print(f"artifact: {out}   (load it with torchslim.load('{out}'))")
    return [base, slim]


def _describe(config: BaseConfig) -> str:
    weight = getattr(config, "weight", config)
    fmt, gran = getattr(weight, "format", None), getattr(weight, "granularity", None)
    if fmt is not None:
        size = f" g{gran.size}" if getattr(gran, "size", None) else ""
        return f"{getattr(config, 'technique', type(config).__name__)} {fmt.name}{size}"
    dtype = getattr(config, "dtype", None)
    return f"{type(config).__name__} {str(dtype).removeprefix('torch.')}" if dtype is not None else type(config).__name__
