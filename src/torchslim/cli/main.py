"""The ``torchslim`` command line. Strings are parsed here, once, into typed values."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from rich.markup import escape

from torchslim.cli.options import MAX_MEMORY_HELP, PARALLEL_HELP, data_flags as _data, parse_shape
from torchslim.cli.status import progress_console, status
from torchslim.core.errors import TorchSlimError

app = typer.Typer(
    help="torchslim: make trained models smaller and faster, with measured results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
zoo_app = typer.Typer(help="The embedded model zoo.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        from torchslim.version import __version__

        typer.echo(f"torchslim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print torchslim's version and exit.")) -> None:
    """torchslim: make trained models smaller and faster, with measured results."""
app.add_typer(zoo_app, name="zoo")


def _register_commands() -> None:
    from torchslim.cli import (compare_cmd, config_cmd, export_cmd, generate_cmd, kernels_cmd, nas_cmd, recipes_cmd,
                               report_cmd, search_cmd, sensitivity_cmd)

    recipes_cmd.register(app)
    config_cmd.register(app)
    export_cmd.register(app)
    kernels_cmd.register(app)
    generate_cmd.register(app)
    sensitivity_cmd.register(app)
    search_cmd.register(app)
    nas_cmd.register(app)
    compare_cmd.register(app)
    report_cmd.register(app)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


@zoo_app.command("list")
def zoo_list(all_: bool = typer.Option(False, "--all", help="Also list tiny random test models.")) -> None:
    """List the models of the zoo."""
    from rich.table import Table

    from torchslim.zoo import list_entries

    table = Table(title="torchslim zoo")
    for col in ("name", "task", "description"):
        table.add_column(col, overflow="fold")
    for e in list_entries(include_test=all_):
        table.add_row(e.name, e.kind, e.summary + (" [test]" if e.test_only else ""))
    _console().print(table)


def _eval_spec(shapes: list[str], iters: int, warmup: int, threads: Optional[int], decode_tokens: int,
               no_speed: bool):
    from torchslim.eval import EvalSpec

    kwargs = dict(iters=iters, warmup=warmup, decode_tokens=0 if no_speed else decode_tokens)
    if shapes:
        kwargs["shapes"] = tuple(parse_shape(s) for s in shapes)
    if threads is not None:
        if threads < 1:
            raise TorchSlimError(f"--threads must be at least 1, got {threads}")
        kwargs["threads"] = threads
    if no_speed:      # the memory and energy figures come from the timed loops: skipped with them
        kwargs.update(measure_speed=False, measure_memory=False, measure_energy=False)
    return EvalSpec(**kwargs)


CALIB_HELP = "Calibration/training data: a text file, a JSONL file (\"text\", \"label\") or a folder."
EVAL_HELP = "Evaluation data: a text file, a JSONL file (\"text\", \"label\") or a folder (images per class)."
SEQ_HELP = "Sequence length of the task's windows (capped at the model's context)."
RUNTIME_HELP = ("Runtime that runs the model: torch, onnxruntime, openvino (both run the ONNX export) or llamacpp (the GGUF "
                "export); quality and timing come from the same task code.")
FILE_HELP = ("Exported file for --runtime (.onnx, an ONNX decoder folder, or .gguf); default: MODEL exported to a "
             "temporary file (GGUF in F32).")
EVAL_FLAG_HELP = "Evaluate the task's quality before and after and print both (two evaluations; --no-eval skips them)."


def _load_with_task(model: str, task: Optional[str], data: dict | None = None):
    from torchslim.models import load_model

    loaded = load_model(model, **(data or {}))
    if task is not None and (loaded.task is None or loaded.task.name != task):
        raise TorchSlimError(
            f"{model}: task '{task}' is not available for this model"
            + (f" (its task is '{loaded.task.name}')" if loaded.task is not None else "")
        )
    if loaded.task is None:
        raise TorchSlimError(f"{model}: no task is known for this model; evaluate it from Python with a Task")
    return loaded


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="Zoo name, Hugging Face model folder, or torchslim artifact folder."),
    task: Optional[str] = typer.Option(None, help="Task name to check against the model's task."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
    shape: list[str] = typer.Option([], "--shape", help="Latency shape BATCHxSEQ (repeatable)."),
    iters: int = typer.Option(10, min=3, help="Timed iterations per shape (>= 3 for a median and p90)."),
    warmup: int = typer.Option(3, min=0, help="Warm-up iterations per shape."),
    threads: Optional[int] = typer.Option(None, help="Torch intra-op threads (default: all cores)."),
    decode_tokens: int = typer.Option(32, min=0, help="Tokens to generate for decode speed (causal LMs)."),
    no_speed: bool = typer.Option(False, "--no-speed", help="Skip latency and decode measurements."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help=CALIB_HELP),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help=EVAL_HELP),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help=SEQ_HELP),
    runtime: str = typer.Option("torch", "--runtime", help=RUNTIME_HELP),
    file: Optional[Path] = typer.Option(None, "--file", help=FILE_HELP),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
) -> None:
    """Evaluate a model: quality, size, latency, FLOPs, memory and energy (in torch, or exported to another
    runtime with the same task and timing)."""
    from torchslim.api import evaluate
    from torchslim.eval import render_table
    from torchslim.runtime.backends import require

    if runtime != "torch":
        require(runtime)                      # unknown or not installed: one line before loading anything
    elif file is not None:
        raise TorchSlimError("--file is an exported file for --runtime onnxruntime, openvino or llamacpp")
    spec = _eval_spec(shape, iters, warmup, threads, decode_tokens, no_speed)
    if json_out is not None and (json_out.is_dir() or (json_out.parent.exists() and not json_out.parent.is_dir())):
        raise TorchSlimError(f"--json {json_out}: not a file path (it is a folder, or inside a file)")
    console = _console()
    if max_memory is not None and _streamed_eval(console, model, max_memory, json_out,
                                                 _data(calib_data, eval_data, seq_len)):
        return
    with status(f"loading {model}"):
        loaded = _load_with_task(model, task, _data(calib_data, eval_data, seq_len))
    report = evaluate(loaded.model, loaded.task, spec, what="all", label=loaded.name, console=progress_console(),
                      runtime=runtime, file=file)
    console.print(render_table([report]))
    if report.layers:
        console.print(_layers_table(console, report.layers))
    if json_out is not None:
        from torchslim.core.io import atomic_file

        with atomic_file(json_out) as f:
            f.write(report.to_json())
        console.print(f"report written to {escape(str(json_out))}")


def _streamed_eval(console, model: str, max_memory: str, json_out: Optional[Path], data: dict) -> bool:
    """Perplexity by block streaming when ``model`` is an artifact whose weights exceed ``max_memory`` (then True)."""
    import json

    from torchslim.artifact.format import is_artifact, read_manifest
    from torchslim.scale.files import human, parse_bytes

    cap = parse_bytes(max_memory)
    if not (Path(model).is_dir() and is_artifact(model)):
        console.print(escape(f"{model}: not an artifact; --max-memory streams artifacts only: loading it whole"))
        return False
    size = int(read_manifest(model)["weights"]["bytes"])
    if size <= cap:
        console.print(escape(f"{model}: {human(size)} of weights fit --max-memory {human(cap)}: loaded whole"))
        return False
    from torchslim.scale.stream_eval import stream_perplexity

    task = None
    if data:
        from torchslim.artifact.format import load_structure
        from torchslim.scale.source import artifact_task
        from torchslim.tasks.user_data import task_with_user_data
        from torchslim.zoo.registry import LoadedModel

        skeleton, manifest, _ = load_structure(model, defer=lambda _name: True)
        task = artifact_task(Path(model), manifest, skeleton)
        task = task_with_user_data(LoadedModel(Path(model).name, skeleton, task, manifest["source"],
                                               getattr(task, "tokenizer", None)),
                                   data.get("calib_data"), data.get("eval_data"), data.get("seq_len"))
    console.print(escape(f"{model}: {human(size)} of weights exceed --max-memory {human(cap)}: perplexity by block "
                         "streaming (size, speed, FLOPs, memory and energy are not measured)"))
    metrics, stats = stream_perplexity(model, task)
    console.print(escape(", ".join(f"{k} {v:.4g}" for k, v in metrics.items())))
    console.print(escape(stats.line()))
    if json_out is not None:
        from torchslim.core.io import atomic_file

        with atomic_file(json_out) as f:
            f.write(json.dumps({"quality": metrics, "streaming": vars(stats)}, indent=1))
    return True


def _print_plan(console, model) -> None:
    """Per-layer format and kernel of the compressed model, flagging layers slower than fp32."""
    from torchslim.core.modules import layer_infos

    infos = layer_infos(model)
    slow = [n for n, i in infos.items() if i.get("slower_than_fp32")]
    console.print(_layers_table(console, [{"name": n, **i} for n, i in infos.items()]))
    if slow:
        console.print(f"[yellow]warning:[/yellow] {len(slow)} of {len(infos)} layers have no fast kernel on this "
                      f"machine and will run slower than fp32 (e.g. {slow[0]})")


def _layers_table(console, layers: list[dict]):
    from torchslim.cli.layers_table import layers_table

    return layers_table(layers, console.width)


@app.command("quantize")
def quantize_cmd(
    model: str = typer.Argument(..., help="Zoo name, Hugging Face model folder, or torchslim artifact folder."),
    config: Path = typer.Option(..., "--config", "-c", help="Quantization config (YAML or JSON)."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact folder to write."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help=CALIB_HELP),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help=EVAL_HELP),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help=SEQ_HELP),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help=EVAL_FLAG_HELP),
    force: bool = typer.Option(False, "--force", help="Replace an artifact already at --out."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
) -> None:
    """Quantize a model with a config file, print its quality before and after, and save the artifact."""
    from torchslim.api import quantize_
    from torchslim.artifact import save
    from torchslim.core.config import BaseConfig
    from torchslim.core.context import ApplyContext
    from torchslim.core.targets import check_new_artifact
    from torchslim.models import load_model

    check_new_artifact(out, model, force)
    cfg = BaseConfig.load(config)
    console = _console()
    if _onloaded(console, model, cfg, out, max_memory, _data(calib_data, eval_data, seq_len), evaluate):
        return
    with status(f"loading {model}"):
        loaded = load_model(model, **_data(calib_data, eval_data, seq_len))
    before = _quality(loaded, evaluate, "before")
    console.print(f"quantizing with {type(cfg).__name__} (progress per layer)")
    quantize_(loaded.model, cfg, ApplyContext(task=loaded.task))
    after = _quality(loaded, evaluate, "after")
    save(loaded.model, out, source=loaded.source)
    console.print(f"saved {escape(str(out))}")
    _print_quality(console, loaded.task, before, after)
    _print_plan(console, loaded.model)


@app.command("prune")
def prune_cmd(
    model: str = typer.Argument(..., help="Zoo name, Hugging Face model folder, or torchslim artifact folder."),
    config: Path = typer.Option(..., "--config", "-c", help="Pruning config (YAML or JSON)."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact folder to write."),
    recover_steps: int = typer.Option(0, min=0, help="Recovery fine-tuning steps on the model's task after pruning."),
    lr: float = typer.Option(1e-4, help="Peak learning rate of recovery fine-tuning."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help=CALIB_HELP),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help=EVAL_HELP),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help=SEQ_HELP),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help=EVAL_FLAG_HELP),
    force: bool = typer.Option(False, "--force", help="Replace an artifact already at --out."),
    resume: bool = typer.Option(False, "--resume", help="Continue a prune run that was killed (from its last "
                                                        "completed stage)."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
) -> None:
    """Prune a model with a config file (optionally fine-tune to recover), print its quality before and after, and
    save the artifact.
    The same as `torchslim run` of a recipe (prune, then train), without the report."""
    from torchslim.core.config import BaseConfig
    from torchslim.core.state import state_of
    from torchslim.core.targets import check_new_artifact
    from torchslim.recipes import ApplyStage, Recipe, RunOptions, TrainStage, run_recipe
    from torchslim.recipes.stages import EvaluateStage
    from torchslim.train import FinetuneConfig, TrainConfig

    check_new_artifact(out, model, force)
    cfg = BaseConfig.load(config)
    stages = [ApplyStage(cfg, "prune")]
    if recover_steps:
        stages.append(TrainStage(FinetuneConfig(train=TrainConfig(steps=recover_steps, lr=lr)), "finetune"))
    if evaluate:
        stages = [EvaluateStage(label="before"), *stages, EvaluateStage(label="after")]
    console = _console()
    console.print(f"pruning with {type(cfg).__name__} (progress per layer)"
                  + (f", then recovery fine-tuning: {recover_steps} steps" if recover_steps else ""))
    options = RunOptions(resume=resume, report=False, data=_data(calib_data, eval_data, seq_len),
                         max_memory=max_memory)
    result = run_recipe(Recipe(f"prune {config.name}", "", stages), model, out, options, console)
    if result.onloaded:
        final = result.report.get("final")
        console.print(escape(f"saved {out}" + (f"; {result.task.metric} {final[result.task.metric]:.4g}"
                                               if final and result.task is not None else "")))
        return
    history = state_of(result.model).history
    touched = next(h for h in history if h.kind != "evaluate").touched
    before, after = touched.get("params_before"), touched.get("params_after")
    if before is not None:
        console.print(f"saved {escape(str(out))}: {before:,} -> {after:,} parameters ({after / max(before, 1):.2f}x)")
    else:
        console.print(f"saved {escape(str(out))}: parameters unchanged (weights zeroed, stored sparse)")
    evals = [h.metrics for h in history if h.kind == "evaluate" and h.metrics]
    if evaluate and len(evals) >= 2:
        _print_quality(console, result.task, evals[0], evals[-1])
    _print_sparse_notes(console, result.model)


def _onloaded(console, model: str, cfg, out: Path, max_memory: Optional[str], data: dict, evaluate: bool) -> bool:
    """Compress ``model`` block by block when its weights exceed ``max_memory`` (then True), printing what ran."""
    from torchslim.recipes.onloaded import needs_onloading

    onload, line = needs_onloading(model, max_memory)
    if line:
        console.print(escape(line))
    if not onload:
        return False
    from torchslim.scale.onload import compress_onloaded
    from torchslim.scale.stream_eval import stream_perplexity

    loaded, stats = compress_onloaded(model, cfg, out, max_memory=max_memory, data=data)
    console.print(escape(f"saved {out}; {stats.line()}"))
    if evaluate and loaded.task is not None:
        console.print("quality before: not measured (block streaming evaluates artifacts; the source is not one)")
        metrics, sstats = stream_perplexity(out, loaded.task)
        console.print(escape(f"quality after: {loaded.task.metric} {metrics[loaded.task.metric]:.4g}; {sstats.line()}"))
    return True


def _quality(loaded, evaluate: bool, label: str) -> dict | None:
    """The task's metrics of ``loaded.model`` now (recorded in its history), or None when not asked or no task."""
    if not evaluate or loaded.task is None:
        return None
    from torchslim.recipes.report import quick_eval

    return quick_eval(loaded.model, loaded.task, label)


def _print_quality(console, task, before: dict | None, after: dict | None) -> None:
    """``perplexity (lower is better): 12.3 -> 12.6 (+2.4%)`` for the task's primary metric."""
    if task is None or not before or not after or task.metric not in before or task.metric not in after:
        return
    b, a = before[task.metric], after[task.metric]
    change = f" ({100 * (a - b) / abs(b):+.1f}%)" if b else ""
    better = "higher" if task.higher_is_better else "lower"
    console.print(f"quality: {escape(task.metric)} ({better} is better) {b:.4g} -> {a:.4g}{change}")


def _print_sparse_notes(console, model) -> None:
    """Per-layer storage and kernel of sparse layers, saying plainly where sparsity gives no speed."""
    from torchslim.core.modules import layer_infos

    infos = layer_infos(model)
    if not infos:
        return
    console.print(_layers_table(console, [{"name": n, **i} for n, i in infos.items()]))
    dense = [n for n, i in infos.items() if i.get("kernel") == "dense"]
    if dense:
        console.print(f"note: {len(dense)} of {len(infos)} sparse layers run the dense kernel: smaller on disk, "
                      "no speed gain from sparsity on this machine")


@app.command("finetune")
def finetune_cmd(
    model: str = typer.Argument(..., help="Zoo name, Hugging Face model folder, or torchslim artifact folder."),
    steps: int = typer.Option(100, min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(64, min=1, help="Global batch size (split across torchrun processes)."),
    lr: float = typer.Option(1e-3, help="Peak learning rate."),
    optimizer: str = typer.Option("adamw", help="adamw, sgd or lion."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A TrainConfig file (overrides the options)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Save the fine-tuned model as an artifact here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write final metrics and losses as JSON here."),
    force: bool = typer.Option(False, "--force", help="Replace an artifact already at --out."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help=CALIB_HELP),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help=EVAL_HELP),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help=SEQ_HELP),
    parallel: Optional[str] = typer.Option(None, "--parallel", help=PARALLEL_HELP),
) -> None:
    """Fine-tune a model on its task with the training engine. Runs unchanged under
    `torchrun --nproc-per-node N`, which splits the global batch across processes (DDP, or FSDP with
    --parallel fsdp)."""
    import json

    from torchslim.api import finetune_
    from torchslim.artifact import save
    from torchslim.core.config import BaseConfig
    from torchslim.core.context import ApplyContext
    from torchslim.core.io import atomic_file
    from torchslim.core.state import state_of
    from torchslim.core.targets import check_new_artifact
    from torchslim.train import FinetuneConfig, TrainConfig
    from torchslim.train.distributed import env_rank

    check_new_artifact(out, model, force)
    cfg = BaseConfig.load(config) if config else TrainConfig(steps=steps, batch_size=batch_size, lr=lr,
                                                             optimizer=optimizer)
    if not isinstance(cfg, TrainConfig):
        raise TorchSlimError(f"{config}: expected a TrainConfig, got {type(cfg).__name__}")
    if parallel is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, parallel=parallel)
    loaded = _load_with_task(model, None, _data(calib_data, eval_data, seq_len))
    finetune_(loaded.model, FinetuneConfig(train=cfg), ApplyContext(task=loaded.task))
    if env_rank() != 0:
        return
    entry = state_of(loaded.model).history[-1]
    d = entry.details
    summary = {"world_size": d["world_size"], "parallel": d.get("parallel"), "steps": d["steps"], "final_loss": d["final_loss"],
               "metrics": entry.metrics, "wall_s": d["wall_s"]}
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary["metrics"].items())
    console = _console()
    how = f" ({d['parallel']})" if d.get("parallel") not in (None, "none") else ""
    console.print(escape(f"fine-tuned {model} on {d['world_size']} process(es){how}: {shown or 'no metrics'}"))
    if out is not None:
        save(loaded.model, out, source=loaded.source)
        console.print(f"saved {escape(str(out))}")
    if json_out is not None:
        with atomic_file(json_out) as f:
            f.write(json.dumps(summary, indent=2))


@app.command("info")
def info_cmd(artifact: Path = typer.Argument(..., help="torchslim artifact folder.")) -> None:
    """Show an artifact's manifest: source, format, the ordered history of stages, and each compressed layer."""
    from torchslim.artifact import read_manifest

    manifest = read_manifest(artifact)
    console = _console()
    w = manifest["weights"]
    console.print(f"[bold]{escape(str(artifact))}[/bold]  format v{manifest['format_version']}  "
                  f"torchslim {escape(str(manifest['torchslim_version']))}")
    console.print(escape(f"source: {manifest['source']}   architecture: {manifest['architecture']}"))
    console.print(escape(f"weights: {w['file']}  {w['bytes'] / 1e6:.2f} MB  sha256 {w['sha256'][:16]}..."))
    history = manifest.get("history") or []
    if history:
        from torchslim.core.state import history_lines

        console.print(f"history ({len(history)} stages):")
        for line in history_lines(history):
            console.print(f"  {line}", highlight=False)
    elif manifest["format_version"] < 2:
        console.print(f"history: none recorded (format v{manifest['format_version']} artifact)")
    layers = [{"name": n, **info} for n, info in manifest["layers"].items()]
    console.print(_layers_table(console, layers) if layers else "no compressed layers")


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors, usage errors included, print one ``error:`` line and exit 2, never a traceback."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _log_warnings()
    _quiet_peers()
    try:
        rc = app(args=argv, prog_name="torchslim", standalone_mode=False)
    except TorchSlimError as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - click's usage errors (typer vendors its own click): one line
        kinds = {c.__name__ for c in type(e).__mro__}
        ctx = getattr(e, "ctx", None)
        if "NoArgsIsHelpError" in kinds:
            print(ctx.get_help() if ctx is not None else str(e))
            sys.exit(0)
        if "Abort" in kinds:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        if "UsageError" not in kinds:
            raise
        cmd = ctx.command_path if ctx is not None else "torchslim"
        print(f"error: {_one_line(e.format_message())} (see `{cmd} --help`)", file=sys.stderr)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


class _StderrHandler(logging.StreamHandler):
    """A logging handler writing to whatever ``sys.stderr`` is when a record comes (a handler bound to the stream
    of the first in-process command wrote into a closed capture once that command was done)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_warnings() -> None:
    """torchslim's warnings go to stderr as ``warning: ...`` lines (errors are ``error: ...`` lines)."""
    import logging

    logger = logging.getLogger("torchslim")
    if not any(getattr(h, "_torchslim_cli", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        handler.setLevel(logging.WARNING)
        handler._torchslim_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def _quiet_peers() -> None:
    """Benchmark-only peers (torchao, installed by `make install-bench`) print failed native-library loads and
    deprecation warnings when transformers imports them, and peers draw their own tqdm bars: not the user's
    concern in torchslim's own commands."""
    import logging
    import warnings

    for name in ("torchao", "torchao.kernel", "torchao.quantization"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # torchao's import registers its enums with torch's pytree, which logs a deprecation line per enum
    pytree = logging.getLogger("torch.utils._pytree")
    if not any(getattr(f, "_torchslim_cli", False) for f in pytree.filters):
        enums = logging.Filter()
        enums.filter = lambda record: "register_constant" not in record.getMessage()  # type: ignore[method-assign]
        enums._torchslim_cli = True  # type: ignore[attr-defined]
        pytree.addFilter(enums)
    for module in (r"torchao(\..*)?", r"torch\.ao(\..*)?"):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    warnings.filterwarnings("ignore", message=r".*torchao.*", category=DeprecationWarning)
    # peers' tqdm bars (transformers' "Loading weights", compressed-tensors' "Decompressing model") wrote
    # carriage-return frames into logs: torchslim's progress is the one shown. tqdm read TQDM_DISABLE when it was
    # imported, before main() ran, so its default is changed here; a TQDM_DISABLE the user set (an empty one keeps
    # the bars: tqdm reads any other value, "0" included, as true) is left to tqdm. The original is kept, so a
    # second call (commands run in one process) decides afresh rather than wrapping the wrapper.
    # Off even where a peer passes disable= itself: compressed-tensors calls tqdm(..., disable=not show_progress)
    # with show_progress on, and its "Applying quantization config" / "Dispatching model" bars reached the log.
    import tqdm.std

    original = tqdm.std.tqdm.__dict__.get("_torchslim_init", tqdm.std.tqdm.__init__)
    tqdm.std.tqdm._torchslim_init = original                                      # type: ignore[attr-defined]

    def quiet_init(self, *args, **kwargs):
        if len(args) > 10:              # disable is tqdm's 11th positional parameter
            args = (*args[:10], True, *args[11:])
        else:
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = original if "TQDM_DISABLE" in os.environ else quiet_init  # type: ignore[method-assign]


def _one_line(text: str, limit: int = 600) -> str:
    """A message on one line, cut to ``limit`` characters (a value quoted in it may be huge)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


if __name__ == "__main__":
    main()
