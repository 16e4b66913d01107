"""``torchslim nas``: search a compact sub-network of a model under a latency constraint measured on this machine
and/or a parameter budget."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from torchslim.cli.options import data_flags, parse_shape


def nas_cmd(
    model: str = typer.Argument(..., help="Zoo name, Hugging Face model folder, or torchslim artifact folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for trials.md/.json and the chosen model (model/)."),
    max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Constraint: median ms at --shape."),
    min_speedup: Optional[float] = typer.Option(None, "--min-speedup", help="Constraint: speed-up over the model, "
                                                "timed interleaved with it."),
    max_params: Optional[int] = typer.Option(None, "--max-params", help="Constraint: most parameters a candidate "
                                             "may keep."),
    max_params_ratio: Optional[float] = typer.Option(None, "--max-params-ratio", help="Constraint: most parameters, "
                                                     "as a fraction of the model's (e.g. 0.75)."),
    shape: str = typer.Option("1x128", "--shape", help="Input shape the latency is measured at (BATCHxSEQ)."),
    candidates: int = typer.Option(24, "--candidates", "-n", help="Candidates built, timed and proxy-scored."),
    recover: int = typer.Option(4, "--recover", help="Feasible candidates best by proxy that are recovered."),
    validate: int = typer.Option(0, "--validate", help="Other feasible candidates recovered (proxy check)."),
    steps: int = typer.Option(50, "--steps", help="Distillation steps per recovered candidate (0: proxy only)."),
    min_depth: float = typer.Option(0.5, "--min-depth", help="Fewest blocks kept, as a fraction (1: depth fixed)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Calibration data (text, JSONL, folder)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Evaluation data quality is measured on."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length of the task's windows."),
) -> None:
    """Search kept blocks, heads and neurons per block (channels for convnets) of MODEL under a latency constraint
    and/or a parameter budget (give at least one): candidates are built by structured pruning, timed on this
    machine (with a latency constraint), scored by an output-divergence proxy, and the best few recovered by
    distillation from MODEL with one fixed budget. Writes every trial and the chosen model (an artifact)."""
    import dataclasses

    from rich.console import Console
    from rich.markup import escape

    from torchslim.artifact import save
    from torchslim.cli.status import status
    from torchslim.core.errors import ConfigError, TorchSlimError
    from torchslim.models import load_model
    from torchslim.search.nas import NASConfig, default_recovery, nas
    from torchslim.search.nas_report import save as save_trials, to_markdown

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a folder")
    if max_latency_ms is None and min_speedup is None and max_params is None and max_params_ratio is None:
        raise ConfigError("give a constraint: --max-latency-ms, --min-speedup, --max-params and/or "
                          "--max-params-ratio")
    if max_params is not None and max_params <= 0:
        raise ConfigError(f"--max-params must be a positive number of parameters, got {max_params}")
    if max_params_ratio is not None and not 0 < max_params_ratio <= 1:
        raise ConfigError(f"--max-params-ratio must be a fraction of the model's parameters in (0, 1], "
                          f"got {max_params_ratio}")
    try:
        at = parse_shape(shape)
    except TorchSlimError as e:
        raise ConfigError(f"--shape: {e}") from None
    base = default_recovery()
    rec = dataclasses.replace(base, train=dataclasses.replace(base.train, steps=steps, warmup_steps=steps // 10)) \
        if steps > 0 else None
    config = NASConfig(max_latency_ms=max_latency_ms, min_speedup=min_speedup, max_params=max_params,
                       max_param_ratio=max_params_ratio, shape=at, n_candidates=candidates,
                       n_recover=recover, n_validate=validate, recover=rec, min_depth=min_depth, seed=seed)
    with status(f"loading {model}"):
        loaded = load_model(model, **data_flags(calib_data, eval_data, seq_len))
    result = nas(loaded.model, loaded.task, config)
    out.mkdir(parents=True, exist_ok=True)
    trials = save_trials(result, out / "trials.md")
    console = Console()
    console.print(escape(to_markdown(result)), soft_wrap=True)
    if result.model is None:
        raise TorchSlimError(f"no candidate met the constraint (trials in {trials}); loosen it or add --candidates")
    save(result.model, out / "model", source=loaded.source)
    console.print(f"chosen: {escape(result.shape.label())}; wrote {escape(str(trials))} and {escape(str(out / 'model'))}")


def register(app: typer.Typer) -> None:
    app.command("nas")(nas_cmd)
