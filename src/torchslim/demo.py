"""The main job on an embedded default: evaluate, compress, save, reload, evaluate again, compare."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torchslim.core.config import BaseConfig


def default_config() -> BaseConfig:
    import torch

    from torchslim.quantization import CastConfig

    return CastConfig(dtype=torch.bfloat16)


def run_demo(model: str = "smollm2-135m", out: Path = Path("out/demo"), config: BaseConfig | None = None,
             spec: Any = None, console: Any = None) -> list[Any]:
    """Evaluate ``model``, compress it with ``config``, save and reload the artifact, and evaluate that.

    Returns the two reports (original, compressed-and-reloaded) and prints them side by side.
    """
    from rich.console import Console

    from torchslim.api import quantize_
    from torchslim.artifact import load, save
    from torchslim.eval import evaluate, render_table
    from torchslim.models import load_model

    console = console or Console()
    config = config or default_config()
    with console.status(f"loading {model}"):
        loaded = load_model(model)
    base = evaluate(loaded.model, loaded.task, spec, label=f"{model} (original)", console=console)
    with console.status(f"compressing with {type(config).__name__}"):
        quantize_(loaded.model, config, calibration=loaded.task)
        save(loaded.model, out, source=loaded.source)
    del loaded.model
    reloaded = load(out)
    slim = evaluate(reloaded, loaded.task, spec, label=f"{model} ({_describe(config)}, from {out})",
                    artifact_dir=out, console=console)
    console.print(render_table([base, slim]))
    console.print(f"artifact: {out}   (load it with torchslim.load('{out}'))")
    return [base, slim]


def _describe(config: BaseConfig) -> str:
    dtype = getattr(config, "dtype", None)
    return f"{type(config).__name__} {str(dtype).removeprefix('torch.')}" if dtype is not None else type(config).__name__
