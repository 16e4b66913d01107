"""``torchslim search``: a multi-objective study (quality x bytes x measured latency) over per-layer mixes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from torchslim.cli.options import data_flags, parse_shape


def search_cmd(
    model: str = typer.Argument(..., help="Zoo name, Hugging Face model folder, or torchslim artifact folder."),
    scan: Path = typer.Option(..., "--scan", help="sensitivity.json from `torchslim sensitivity` on this model "
                                                  "(the actions searched and the warm start)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for front.md/.json/.png and recipes/."),
    trials: int = typer.Option(20, "--trials", "-n", min=1, max=10000, help="Trials this process adds."),
    storage: Optional[str] = typer.Option(None, "--storage", help="optuna storage URL (default: sqlite file "
                                          "OUT/study.db); several processes on one URL share the study."),
    study: str = typer.Option("torchslim", "--study", help="Study name inside the storage."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Add measured latency as an objective."),
    shape: str = typer.Option("1x128", "--shape", help="Input shape the latency model is measured at."),
    max_loss: Optional[str] = typer.Option(None, "--max-loss", help="Quality loss beyond which a mix is hopeless "
                                           "('5%' or metric units): similar mixes are pruned before applying."),
    seed: int = typer.Option(0, help="Sampler seed."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Calibration data (text, JSONL, folder)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Evaluation data quality is measured on."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length of the task's windows."),
) -> None:
    """Search per-layer mixes of a scan's actions with optuna (NSGA-II, warm-started from the scan): each trial is
    applied and measured end to end; latency comes from per-layer timings on this machine. Writes the Pareto
    front, each point a recipe that `torchslim run` reproduces."""
    from rich.console import Console
    from rich.markup import escape

    from torchslim.cli.status import status
    from torchslim.core.errors import ConfigError, TorchSlimError
    from torchslim.models import load_model
    from torchslim.search.front import save, to_markdown
    from torchslim.search.joint import search
    from torchslim.search.latency import cached_fit
    from torchslim.search.report import load
    from torchslim.search.tune import Budget

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a folder")
    budget = Budget.parse(max_loss) if max_loss is not None else None
    try:
        at = parse_shape(shape)
    except TorchSlimError as e:
        raise ConfigError(f"--shape: {e}") from None
    result_scan = load(scan)
    with status(f"loading {model}"):
        loaded = load_model(model, **data_flags(calib_data, eval_data, seq_len))
    names = dict(loaded.model.named_modules())
    missing = [n for r in result_scan.rows for n in r.layers if n not in names]
    if missing:
        raise ConfigError(f"{scan} was scanned on another model: {missing[0]!r} is not a layer of {model}")
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    lm = None
    if latency:
        layers = [n for r in result_scan.rows for n in r.layers]
        lm = cached_fit(loaded.model, loaded.task, result_scan.action_list(), layers, shape=at)
    result = search(loaded.model, loaded.task, result_scan, n_trials=trials, latency=lm, storage=url,
                    study_name=study, max_loss=budget, seed=seed)
    files = save(result, out)
    console = Console()
    console.print(escape(to_markdown(result)), soft_wrap=True)
    console.print("wrote " + ", ".join(escape(str(p)) for k, p in files.items() if not k.startswith("trial-"))
                  + f" and {sum(k.startswith('trial-') for k in files)} recipe(s) in " + escape(str(out / "recipes")),
                  soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("search")(search_cmd)
