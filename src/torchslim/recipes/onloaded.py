"""A recipe on a model larger than ``--max-memory``: its post-training stages with layer-wise onloading.

The recipe's apply stages (block-by-block calibrated methods) run in order through
:func:`torchslim.scale.onload.compress_onloaded`; the evaluations after the last of them are the final artifact's
perplexity by block streaming. What needs the whole model in memory (training stages, evaluating the source
model, saving in between) is refused or skipped with a line saying so. Such a run does not resume: it starts over.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rich.markup import escape

from torchslim.core.errors import TorchSlimError
from torchslim.core.io import atomic_file
from torchslim.recipes.recipe import Recipe
from torchslim.recipes.stages import ApplyStage, CheckpointStage, EvaluateStage, SaveStage, TrainStage

log = logging.getLogger("torchslim")


def needs_onloading(spec: str, max_memory: str | int | None) -> tuple[bool, str]:
    """Whether ``spec``'s weights (float32) exceed ``max_memory``, and the line saying so."""
    if max_memory is None:
        return False, ""
    from torchslim.scale.files import human, parse_bytes
    from torchslim.scale.onload import model_bytes

    cap = parse_bytes(max_memory)
    try:
        need = model_bytes(spec)
    except TorchSlimError as e:
        return False, f"{spec}: cannot onload ({e}); loading it whole"
    if need <= cap:
        return False, f"{spec}: {human(need)} of weights fit --max-memory {human(cap)}: loaded whole"
    return True, (f"{spec}: {human(need)} of weights exceed --max-memory {human(cap)}: layer-wise onloading "
                  "(one block in memory at a time)")


def _plan(recipe: Recipe) -> tuple[list[ApplyStage], list[str], bool]:
    """The apply stages to onload, the notes on what is skipped, and whether the final artifact is evaluated; a
    stage that cannot run is an error."""
    from torchslim.train.transform import TrainingConfig

    applies: list[ApplyStage] = []
    notes: list[str] = []
    evaluate = False
    for i, stage in enumerate(recipe.stages, start=1):
        later = recipe.stages[i:]
        if isinstance(stage, TrainStage) or (isinstance(stage, ApplyStage) and isinstance(stage.config,
                                                                                          TrainingConfig)):
            raise TorchSlimError(f"stage {i} ({stage.describe()}) trains the whole model, which needs it in memory: "
                                 "layer-wise onloading runs post-training stages only")
        if isinstance(stage, ApplyStage):
            applies.append(stage)
        elif isinstance(stage, SaveStage) and stage.path is not None:
            raise TorchSlimError(f"stage {i} (save {stage.path}) saves an intermediate model; with layer-wise "
                                 "onloading only the final artifact is written")
        elif isinstance(stage, EvaluateStage) and not applies:
            notes.append(f"stage {i} ({stage.describe()}) skipped: block streaming evaluates artifacts, and the "
                         "source model is not one (run `torchslim eval` on an artifact of it)")
        elif isinstance(stage, EvaluateStage) and any(isinstance(s, ApplyStage) for s in later):
            notes.append(f"stage {i} ({stage.describe()}) skipped: only the final artifact is evaluated")
        elif isinstance(stage, EvaluateStage):
            evaluate = True
        elif not isinstance(stage, (EvaluateStage, SaveStage, CheckpointStage)):
            raise TorchSlimError(f"stage {i} ({stage.describe()}) cannot run with layer-wise onloading")
    if not applies:
        raise TorchSlimError(f"recipe {recipe.name!r} has no post-training stage to onload")
    return applies, notes, evaluate


def run_onloaded(recipe: Recipe, spec: str, out: Path, options: Any, console: Any) -> tuple[Any, dict[str, Any]]:
    """Run ``recipe``'s post-training stages on ``spec`` with layer-wise onloading into ``out``: ``(the
    LoadedModel, its skeleton holding the history, and the report)``."""
    from torchslim.runtime.machine import machine_info, machine_line
    from torchslim.scale.onload import compress_onloaded
    from torchslim.scale.stream_eval import stream_perplexity

    applies, notes, evaluate = _plan(recipe)
    say = (lambda text: console.print(escape(text))) if console is not None else log.info
    for note in notes:
        say(note)
    configs = [s.config for s in applies]
    loaded, stats = compress_onloaded(spec, configs, out, max_memory=options.max_memory, data=options.data)
    say(stats.line())
    report: dict[str, Any] = {"recipe": recipe.name, "model": spec, "onloading": vars(stats),
                              "machine": machine_line(machine_info()), "skipped": notes}
    if evaluate and loaded.task is not None and hasattr(loaded.task, "eval_batches"):
        metrics, sstats = stream_perplexity(out, loaded.task)
        say(f"final {loaded.task.metric}: {metrics[loaded.task.metric]:.4g}; {sstats.line()}")
        report.update(final=metrics, streaming=vars(sstats))
    if options.report:
        with atomic_file(out / "report.json") as f:
            f.write(json.dumps(report, indent=1, default=str))
    return loaded, report
