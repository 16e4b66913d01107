"""``torchslim sensitivity``: which layer (or block) each candidate action hurts most, as a table and a heat map."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from torchslim.cli.options import data_flags

ACTIONS_HELP = ("Comma-separated actions: int8, int4g128 (bits 2-8, optional group size), sparse50 (percent), "
                "2:4 (N:M), svd20 (percent of weights removed by plain SVD), or a config file (.yaml/.json).")


def sensitivity_cmd(
    model: str = typer.Argument(..., help="Zoo name, Hugging Face model folder, or torchslim artifact folder."),
    actions: str = typer.Option("int8,int4g128,sparse50", "--actions", "-a", help=ACTIONS_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for sensitivity.md, .json and .png."),
    granularity: str = typer.Option("layer", help="layer, or block (transformer blocks: fewer, faster trials)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Only these layers: a name, 're:REGEX' or "
                                                                "'type:Linear'."),
    measure: str = typer.Option("auto", help="kl (models with logits), mse (encoders), block (each block's output "
                                             "on cached inputs: fast), task (the task's metric: slow), or auto."),
    samples: Optional[int] = typer.Option(None, min=1, max=4096, help="Samples the outputs are compared on "
                                                                      "(default: 4, or 256 images or short texts)."),
    top: int = typer.Option(15, min=1, help="Rows printed (the files hold all)."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Data to measure on (text, JSONL, folder)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Evaluation data (for --measure task)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length of the task's windows."),
) -> None:
    """Apply each action to each layer (or block) alone and measure how far the model's outputs move: the layers
    that hurt most come first. Writes sensitivity.md, sensitivity.json and a heat map (sensitivity.png)."""
    from rich.console import Console
    from rich.markup import escape

    from torchslim.cli.status import status
    from torchslim.core.errors import ConfigError
    from torchslim.core.select import Selector
    from torchslim.models import load_model
    from torchslim.search import parse_actions, save, sensitivity, to_markdown
    from torchslim.search.sensitivity import check_options

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a folder")
    parsed = parse_actions(actions)
    check_options(granularity, measure)
    rule = Selector(include=(layers,)) if layers else None
    with status(f"loading {model}"):
        loaded = load_model(model, **data_flags(calib_data, eval_data, seq_len))
    result = sensitivity(loaded.model, loaded.task, parsed, layers=rule, granularity=granularity, measure=measure,
                         n_samples=samples)
    files = save(result, out)
    console = Console()
    console.print(escape(to_markdown(result, top=top)), soft_wrap=True)
    console.print("wrote " + ", ".join(escape(str(p)) for p in files.values()), soft_wrap=True)   # paths unbroken


def tune_cmd(
    model: str = typer.Argument(..., help="Zoo name, Hugging Face model folder, or torchslim artifact folder."),
    scan: Path = typer.Option(..., "--scan", help="sensitivity.json from `torchslim sensitivity` on this model."),
    budget: str = typer.Option(..., "--budget", "-b", help="Quality that may be lost: '1%' (relative) or '0.5' "
                                                          "(in the task metric's units)."),
    out: Path = typer.Option(..., "--out", "-o", help="Recipe file to write (.yaml or .json)."),
    max_evals: int = typer.Option(8, "--max-evals", min=1, max=64, help="End-to-end evaluations at most."),
    name: str = typer.Option("tuned", help="The recipe's name."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Calibration data (text, JSONL, folder)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Evaluation data the budget is checked on."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length of the task's windows."),
) -> None:
    """The most compressed per-layer mix of a scan's actions whose quality, measured end to end, stays within the
    budget; written as a recipe (`torchslim run RECIPE --model MODEL` reproduces it)."""
    from rich.console import Console
    from rich.markup import escape

    from torchslim.cli.status import status
    from torchslim.core.errors import ConfigError
    from torchslim.models import load_model
    from torchslim.search.report import load
    from torchslim.search.tune import Budget, tune

    if out.suffix not in (".yaml", ".yml", ".json") or out.is_dir():
        raise ConfigError(f"--out {out}: a recipe file ending in .yaml or .json")
    parsed_budget = Budget.parse(budget)
    result_scan = load(scan)
    with status(f"loading {model}"):
        loaded = load_model(model, **data_flags(calib_data, eval_data, seq_len))
    missing = [g for r in result_scan.rows for g in r.layers if g not in dict(loaded.model.named_modules())]
    if missing:
        raise ConfigError(f"{scan} was scanned on another model: {missing[0]!r} is not a layer of {model}")
    result = tune(loaded.model, loaded.task, result_scan, parsed_budget, max_evals=max_evals, name=name)
    console = Console()
    for t in result.trials:
        console.print(f"{len(t.assignment):4d} of {len(result_scan.rows)} groups changed: {t.bytes / 2**20:8.2f} MiB, "
                      f"{result.metric} {t.quality:.4g} ({'within' if t.within else 'over'} the budget)")
    if result.recipe is None:
        raise ConfigError(f"no mix of {', '.join(result_scan.actions)} kept {result.metric} within {budget} of "
                          f"{result.base_quality:.4g} in {len(result.trials)} evaluations; try milder actions")
    result.recipe.save(out)
    best = result.best
    console.print(f"{result.metric} {result.base_quality:.4g} -> {best.quality:.4g}, {result.base_bytes / 2**20:.2f} -> "
                  f"{best.bytes / 2**20:.2f} MiB ({best.bytes / result.base_bytes:.2f}x); wrote " + escape(str(out)))


def register(app: typer.Typer) -> None:
    app.command("sensitivity")(sensitivity_cmd)
    app.command("tune")(tune_cmd)
