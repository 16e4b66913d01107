"""``torchslim run``, ``torchslim recipes list|show`` and ``torchslim demo`` (a shipped recipe)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from torchslim.cli.options import MAX_MEMORY_HELP, PARALLEL_HELP

recipes_app = typer.Typer(help="Shipped recipes: starting templates for `torchslim run`.", no_args_is_help=True)


def _console():
    from rich.console import Console

    return Console()


def _options(resume: bool, report: bool, speed: bool, iters: int, decode_tokens: int, shapes: list[str],
             data: dict | None = None, max_steps: int | None = None, parallel: str | None = None,
             max_memory: str | None = None):
    from torchslim.cli.options import parse_shape
    from torchslim.recipes import RunOptions

    return RunOptions(resume=resume, report=report, speed=speed, iters=iters, decode_tokens=decode_tokens,
                      shapes=tuple(parse_shape(s) for s in shapes) or None, data=data or {}, max_steps=max_steps,
                      parallel=parallel, max_memory=max_memory)


def run_cmd(
    recipe: str = typer.Argument(..., help="A recipe file (YAML or JSON) or the name of a shipped recipe."),
    model: str = typer.Option(..., "--model", "-m", help="Zoo name, Hugging Face model folder, or artifact folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: the artifact and report.md / .json / .html."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out from its last stage."),
    report: bool = typer.Option(True, "--report/--no-report",
                                help="Evaluate the uncompressed model and compare it with the final one."),
    speed: bool = typer.Option(True, "--speed/--no-speed", help="Time both models (interleaved) in the report."),
    iters: int = typer.Option(5, min=3, help="Timed iterations per shape (>= 3)."),
    decode_tokens: int = typer.Option(16, min=0, help="Tokens generated to time decoding (causal LMs)."),
    shape: list[str] = typer.Option([], "--shape", help="Latency shape BATCHxSEQ (repeatable)."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Calibration/training data: a text "
                                              "file, a JSONL file (\"text\", \"label\") or a folder."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Evaluation data (same formats)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length of the task's windows."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1,
                                            help="Cap every training stage at this many steps (a quick trial run)."),
    parallel: Optional[str] = typer.Option(None, "--parallel", help=PARALLEL_HELP),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
) -> None:
    """Run a recipe (ordered stages) on a model; resumable; writes the artifact and a report of every stage.
    Under `torchrun --nproc-per-node N` every process runs every stage and the training stages share the
    work (DDP or FSDP); only rank 0 writes --out (the others keep their run state in a hidden sibling folder,
    removed when they finish) and reports."""
    from torchslim.cli.options import data_flags
    from torchslim.recipes import load_recipe, run_recipe
    from torchslim.train.distributed import env_rank

    rank = env_rank()
    if rank != 0:
        out, report, speed = out.parent / f".{out.name}.rank{rank}", False, False
    rec = load_recipe(recipe)
    console = _console()
    if rank == 0:
        console.print(f"recipe [bold]{escape(rec.name)}[/bold] ({len(rec.stages)} stages) on {escape(model)} -> "
                      f"{escape(str(out))}")
    data = data_flags(calib_data, eval_data, seq_len)
    options = _options(resume, report, speed, iters, decode_tokens, shape, data, max_steps, parallel,
                       max_memory)
    if rank != 0:
        import shutil

        if not resume:
            shutil.rmtree(out, ignore_errors=True)      # a crashed run's leftovers would refuse the fresh run here only
        run_recipe(rec, model, out, options, None)
        shutil.rmtree(out, ignore_errors=True)
        return
    run_recipe(rec, model, out, options, console)
    console.print(escape(f"artifact: {out}   report: {out / 'report.md'}, {out / 'report.html'}" if report
                         else f"artifact: {out}"), soft_wrap=True)   # paths whole in an 80-column log


@recipes_app.command("list")
def recipes_list() -> None:
    """List the shipped recipes."""
    from rich.table import Table

    from torchslim.recipes import load_recipe, preset_names

    table = Table(title="shipped recipes (torchslim recipes show NAME prints one)")
    for col in ("name", "stages", "description"):
        table.add_column(col, overflow="fold")   # a long path in a description wraps, never ends in '…' (80 columns)
    for name in preset_names():
        r = load_recipe(name)
        table.add_row(name, " -> ".join(s.describe() for s in r.stages), r.description)
    _console().print(table)


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(..., help="A shipped recipe's name.")) -> None:
    """Print a shipped recipe as YAML (save it, edit it, run it)."""
    from torchslim.recipes import preset_path

    print(preset_path(name).read_text(), end="")


def demo_cmd(
    model: str = typer.Option("smollm2-135m", help="Model to run the main job on."),
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Artifact folder to write."),
    iters: int = typer.Option(5, min=3, help="Timed iterations per shape (>= 3)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted demo."),
) -> None:
    """Main job: the int4-gptq recipe: evaluate, compress, save, and compare side by side (timed interleaved)."""
    from torchslim.demo import run_demo

    run_demo(model=model, out=out, iters=iters, resume=resume, console=_console())


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("demo")(demo_cmd)
    app.add_typer(recipes_app, name="recipes")

