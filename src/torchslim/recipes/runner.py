"""Run a recipe on a model into an output folder, resumably.

The output folder ends up holding the artifact (``manifest.json``, ``model.safetensors``...)
and ``report.json`` / ``report.md`` / ``report.html`` (the same, with the per-layer table, the history and a
size/quality plot, on one self-contained page). While the run is going it also holds ``.torchslim-run/``:
``run.json`` (the recipe, its fingerprint, the model, the last completed stage and the stage
rows so far) and ``stage-<i>/``, an artifact of the model after the last completed stage. A
run killed at any point (``kill -9`` included) is continued with ``resume=True``: the model is
reloaded from that checkpoint and the next stage starts. Stages are deterministic (training
reseeds from the step, calibration data is fixed), so the resumed run writes the same artifact
as an uninterrupted one. The run folder is removed when the run completes.
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from torch import nn

from torchslim.core.context import ApplyContext
from torchslim.core.errors import ArtifactError, TorchSlimError
from torchslim.core.io import RUN_DIR, atomic_file
from torchslim.core.paths import confined, folder_fields
from torchslim.core.state import Timer, state_of
from torchslim.recipes.recipe import Recipe
from torchslim.recipes.report import interleaved_speed, markdown, quick_eval, stage_row
from torchslim.recipes import runstate
from torchslim.recipes.runstate import RUN_FORMAT
from torchslim.recipes.stages import ApplyStage, RunContext, SaveStage, needs_teacher

log = logging.getLogger("torchslim")


@dataclass
class RunOptions:
    """How to run: resume an interrupted run; evaluate the uncompressed model and time it beside the final
    one (``report``); latency shapes, timed iterations and decode tokens for that comparison; ``max_steps``
    caps the steps of every training stage."""

    resume: bool = False
    report: bool = True
    speed: bool = True
    shapes: tuple[tuple[int, int | None], ...] | None = None
    warmup: int = 2
    iters: int = 5
    decode_tokens: int = 16
    data: dict[str, Any] = field(default_factory=dict)   # calib_data / eval_data / seq_len for load_model
    max_steps: int | None = None      # cap every training stage (a quick trial of a recipe); recorded in the history
    parallel: str | None = None       # ddp | fsdp | auto for every training stage under torchrun; None: the stages' own
    max_memory: str | int | None = None   # a model whose weights exceed it runs its post-training stages onloaded


@dataclass
class RunResult:
    out: Path
    model: nn.Module
    report: dict[str, Any]
    resumed_from: int | None = None
    task: Any = None               # the task the run evaluated on (its metric and direction)
    onloaded: bool = False         # run block by block (recipes.onloaded): ``model`` is a skeleton, blocks on meta


class _RunFolder:
    """``<out>/.torchslim-run``: the state file and the latest stage checkpoint (never through a link)."""

    def __init__(self, out: Path) -> None:
        self.root = out / RUN_DIR
        self.path = self.root / "run.json"

    def exists(self) -> bool:
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise TorchSlimError(f"{self.root} is not a folder torchslim wrote (a file or a link); remove it")
        return self.path.is_file() or self.path.is_symlink()

    def read(self, n_stages: int) -> dict[str, Any]:
        return runstate.check(runstate.read(self.path), self.path, n_stages)

    def write(self, st: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_file(confined(self.root.parent, f"{RUN_DIR}/run.json", "run state")) as f:
            f.write(json.dumps(st, indent=1))

    def checkpoint(self, model: nn.Module, i: int) -> str:
        from torchslim.artifact import save

        target = confined(self.root.parent, f"{RUN_DIR}/stage-{i}", "stage checkpoint")
        save(model, target)
        for old in self.root.glob("stage-*"):
            if old.name != f"stage-{i}":
                shutil.rmtree(old, ignore_errors=True)     # never follows a link
        return runstate.checkpoint_hash(target)

    def load(self, i: int, digest: Any) -> nn.Module:
        from torchslim.artifact import load

        target = confined(self.root.parent, f"{RUN_DIR}/stage-{i}", "stage checkpoint")
        if not (target / "manifest.json").is_file() or runstate.checkpoint_hash(target) != digest:
            raise ArtifactError(f"{target}: the stage checkpoint is missing or does not match the SHA-256 "
                                "the run state recorded")
        return load(target)

    def remove(self) -> None:
        if not self.root.is_symlink():
            shutil.rmtree(self.root, ignore_errors=True)


def _data_key(options: RunOptions) -> dict[str, Any]:
    """What besides the recipe and model decides a run's result (a resumed run must match it)."""
    key = {k: str(v) for k, v in options.data.items()}
    return {**key, "max_steps": options.max_steps} if options.max_steps is not None else key


def _start(recipe: Recipe, spec: str, out: Path, folder: _RunFolder, resume: bool, console: Any,
           options: RunOptions, owned: tuple[str, ...]) -> dict[str, Any] | None:
    """The saved state to resume from, or ``None`` for a fresh run (after checking the output folder). A run
    state that fails validation is reported in one warning line and the run starts from the first stage."""
    from torchslim.artifact.checks import check_target

    for name in ("report.md", "report.json", "report.html"):        # written last: refuse now what would fail then
        if (out / name).is_symlink() or (out / name).exists() and not (out / name).is_file():
            raise TorchSlimError(f"{out / name} is a folder or a link; the run writes its report there")
    if folder.exists():
        if not resume:
            raise TorchSlimError(f"{out} holds an interrupted run; pass --resume to continue it (or remove {folder.root})")
        try:
            st = folder.read(len(recipe.stages))
        except ArtifactError as e:
            log.warning("%s; starting over from the first stage", e)
            folder.remove()
        else:
            if st["fingerprint"] != recipe.fingerprint() or st["model"] != spec or st.get("data", {}) != _data_key(options):
                raise TorchSlimError(f"{out}: the interrupted run used another recipe or model "
                                     f"({st['recipe_name']!r} on {st['model']!r}); remove {folder.root} to start over")
            return st
    elif resume and console is not None:
        console.print(escape(f"nothing to resume in {out}: starting from the first stage"))
    check_target(out, owned)
    return None


def _recipe_folders(recipe: Recipe, out: Path) -> tuple[str, ...]:
    """The folders the recipe's configs name (``checkpoint_dir``, ``teacher_cache``), checked to lie inside
    ``out`` before any stage runs; returns their top-level names (the run's own, beside the artifact)."""
    from torchslim.core.paths import check_entry_name
    from torchslim.recipes.stages import reserved_names

    taken = reserved_names() | {s.path for s in recipe.stages if isinstance(s, SaveStage) and s.path}
    names = []
    for i, stage in enumerate(recipe.stages):
        if isinstance(stage, SaveStage) and stage.path:
            confined(out, stage.path, f"stage {i + 1} (save): save.path")      # not a link, before any stage
        for name, rel in folder_fields(stage.config) if isinstance(stage, ApplyStage) else []:
            what = f"stage {i + 1} ({stage.kind}): {name}"
            top = confined(out, rel, what).relative_to(out).parts[0]
            check_entry_name(top, what, taken)      # not the artifact's files, a save stage's folder, hidden
            names.append(top)
    return tuple(dict.fromkeys(names))


def run_recipe(recipe: Recipe, model: str, out: str | Path, options: RunOptions | None = None,
               console: Any = None) -> RunResult:
    """Run ``recipe`` on ``model`` (zoo name, HF folder or artifact folder) and write the artifact to ``out``.
    Only one run writes ``out`` at a time (a lock inside it); nothing is written outside it."""
    from torchslim.core.lock import out_lock

    from torchslim.recipes.onloaded import needs_onloading, run_onloaded

    options = options or RunOptions()
    owned = _recipe_folders(recipe, Path(out))
    onload, line = needs_onloading(model, options.max_memory)
    if line:
        (console.print(escape(line)) if console is not None else log.info(line))
    with out_lock(out) as folder:
        if onload:
            from torchslim.artifact.checks import check_target

            check_target(folder, owned)
            loaded, report = run_onloaded(recipe, model, folder, options, console)
            return RunResult(folder, loaded.model, report, None, loaded.task, onloaded=True)
        return _run(recipe, model, folder, options, console, owned)


def _resume_model(st: dict[str, Any] | None, folder: _RunFolder, out: Path, owned: tuple[str, ...]) -> Any:
    """The checkpointed model to resume from (``None``: the loaded one); a checkpoint that fails its checks
    empties ``st`` (a warning line, then the first stage)."""
    from torchslim.artifact.checks import check_target

    if st is None or st.get("checkpoint") is None:
        return None
    try:
        return folder.load(st["checkpoint"], st.get("checkpoint_sha256"))
    except ArtifactError as e:
        log.warning("%s; starting over from the first stage", e)
        folder.remove()
        check_target(out, owned)
        st.clear()
        return None


def _run(recipe: Recipe, model: str, out: Path, options: RunOptions, console: Any,
         owned: tuple[str, ...]) -> RunResult:
    from torchslim.models import load_model

    folder = _RunFolder(out)
    st = _start(recipe, model, out, folder, options.resume, console, options, owned)
    loaded = load_model(model, **options.data)
    if loaded.task is None:
        raise TorchSlimError(f"{model}: no task is known for this model; run recipes from Python with a Task")
    current = _resume_model(st, folder, out, owned)
    st = st or None
    first = st["completed"] + 1 if st is not None else 0
    current = current if current is not None else loaded.model
    reference = None           # the uncompressed model: measured beside the final one, teacher of distillation
    teach = any(isinstance(s, ApplyStage) and needs_teacher(s.config) for s in recipe.stages[first:])
    if options.report or teach:
        reference = copy.deepcopy(loaded.model) if current is loaded.model else loaded.model
    if st is None:
        st = {"format": RUN_FORMAT, "recipe_name": recipe.name, "fingerprint": recipe.fingerprint(), "model": model,
              "data": _data_key(options), "completed": -1, "checkpoint": None, "rows": []}
        if options.report:
            _baseline(current, loaded.task, st, console)
        folder.write(st)
    run = RunContext(current, ApplyContext(task=loaded.task), out, console, teacher=reference if teach else None,
                     max_steps=options.max_steps, owned=owned, parallel=options.parallel)
    if owned:
        run.say(escape(f"folders the recipe names are written inside {out}: {', '.join(owned)}"))
    unit_end, pending = -1, []
    for i in range(first, len(recipe.stages)):
        if i > unit_end:
            unit_end = _share_calibration(recipe, i, run)
        pending.append(_run_stage(recipe, i, run, folder, st))
        if i >= unit_end:          # a resume point: not inside stages that share one calibration pass
            run.ctx.shared = None
            _commit(recipe, i, run, folder, st, pending)
            pending = []
    final_saved = any(isinstance(s, SaveStage) and s.path is None for s in recipe.stages)
    report = _finish(recipe, model, run, loaded.task, reference, st, options, final_saved)
    folder.remove()
    return RunResult(out, run.model, report, first if first > 0 else None, loaded.task)


def _baseline(model: nn.Module, task: Any, st: dict[str, Any], console: Any) -> None:
    if console is not None:
        console.print("evaluating the uncompressed model")
    with Timer() as t:
        quick_eval(model, task, "baseline (uncompressed)")
    st["rows"].append(stage_row(0, "uncompressed model", t.seconds, model, 0).to_dict())


def _share_calibration(recipe: Recipe, i: int, run: RunContext) -> int:
    """If stage ``i`` and the next apply stages can share one calibration pass, arrange it; return the last
    stage of that unit (``i`` when nothing is shared)."""
    from torchslim.calibration.plan import SharedCalibration, sharing_group

    configs = []
    for stage in recipe.stages[i:]:
        if not isinstance(stage, ApplyStage):
            break
        configs.append(stage.config)
    group = sharing_group(run.model, configs, run.ctx) if len(configs) > 1 else []
    if len(group) < 2:
        return i
    run.ctx.shared = SharedCalibration(lookahead=group[1:])
    run.say(f"stages {i + 1}-{i + len(group)} share one calibration pass ({' + '.join(p.label for p in group)})")
    return i + len(group) - 1


def _run_stage(recipe: Recipe, i: int, run: RunContext, folder: _RunFolder, st: dict[str, Any]) -> dict[str, Any]:
    stage = recipe.stages[i]
    st["running"] = i
    folder.write(st)
    run.say(f"[bold]stage {i + 1}/{len(recipe.stages)}[/bold]: {escape(stage.describe())}")
    since = len(state_of(run.model).history)
    with Timer() as t:
        stage.run(run)
    row = stage_row(i + 1, stage.describe(), t.seconds, run.model, since)
    metric = run.ctx.task.metric
    run.say(f"  done in {t.seconds:.1f} s" + (f": {row.changed}" if row.changed else "")
            + (f", {metric} {row.metrics[metric]:.4g}" if metric in row.metrics else ""))
    return row.to_dict()


def _commit(recipe: Recipe, i: int, run: RunContext, folder: _RunFolder, st: dict[str, Any],
            rows: list[dict[str, Any]]) -> None:
    """Stages up to ``i`` are done: keep the model as the resume point (unless the stage only saved)."""
    if not isinstance(recipe.stages[i], SaveStage):
        st["checkpoint_sha256"] = folder.checkpoint(run.model, i)
        st["checkpoint"] = i
    st["rows"].extend(rows)
    st["completed"] = i
    st.pop("running", None)
    folder.write(st)


def _finish(recipe: Recipe, spec: str, run: RunContext, task: Any, reference: nn.Module | None,
            st: dict[str, Any], options: RunOptions, final_saved: bool) -> dict[str, Any]:
    from torchslim.artifact import save
    from torchslim.runtime.machine import machine_info, machine_line

    model = run.model
    history = state_of(model).history
    report: dict[str, Any] = {"recipe": recipe.name, "description": recipe.description, "model": spec,
                              "metric": task.metric, "machine": machine_line(machine_info()), "stages": st["rows"]}
    if options.report and not (history and history[-1].kind == "evaluate"):
        quick_eval(model, task, "final")
    if run.owned:
        report["folders"] = [str(run.out / name) for name in run.owned]
    if not final_saved:
        save(model, run.out, keep=run.owned)
    if options.report:
        base_report, final_report = _side_by_side(reference, model, task, run.out, history, options)
        report.update(baseline=base_report.to_dict(), final=final_report.to_dict())
        from torchslim.eval.render import format_table, render_table

        table = format_table([base_report, final_report], markdown=True)
        for name, text in (("report.md", markdown(report, table)), ("report.json", json.dumps(report, indent=1))):
            with atomic_file(run.out / name) as f:
                f.write(text)
        from torchslim.report import write as write_html

        write_html([run.out], run.out / "report.html", f"torchslim run: {recipe.name} on {spec}")
        if run.console is not None:
            run.console.print(render_table([base_report, final_report]))
    return report


def _side_by_side(reference: nn.Module, model: nn.Module, task: Any, out: Path, history: list[Any],
                  options: RunOptions) -> tuple[Any, Any]:
    """Reports of the uncompressed and the final model: quality from the history's first and last
    evaluations, size and FLOPs measured, speed timed interleaved."""
    from torchslim.artifact.size import artifact_size
    from torchslim.eval import EvalSpec, evaluate
    from torchslim.eval.report import QualityResult

    evals = [h for h in history if h.kind == "evaluate"]
    spec = EvalSpec(shapes=options.shapes, measure_quality=False, measure_speed=False, measure_memory=False,
                    measure_energy=False, sizer=artifact_size)
    base = evaluate(reference, task, spec, label="uncompressed")
    final = evaluate(model, task, spec, label="compressed", artifact_dir=out)
    for r, entry in ((base, evals[0] if evals else None), (final, evals[-1] if evals else None)):
        if entry is not None:
            r.quality = QualityResult(metrics=dict(entry.metrics), primary=task.metric,
                                      higher_is_better=bool(task.higher_is_better))
    if options.speed:
        shapes = list(options.shapes or task.default_shapes)
        speeds = interleaved_speed({"base": reference, "final": model}, task, shapes, options.warmup, options.iters,
                                   options.decode_tokens)
        base.speed, final.speed = speeds["base"], speeds["final"]
    return base, final
