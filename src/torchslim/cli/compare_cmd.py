"""``torchslim compare A B ...``: evaluation results side by side, with ratios against the first."""
from __future__ import annotations

from pathlib import Path

import typer


def _reports(path: Path) -> list:
    """The reports a path holds: an evaluation JSON (``torchslim eval --json``) gives one; a run folder (its
    ``report.json``) gives its final model, labelled by the folder, and its baseline."""
    from torchslim.report.inputs import evaluations

    return [c.report for c in evaluations(path)]


def compare_cmd(
    results: list[Path] = typer.Argument(..., help="Evaluation JSON files (`torchslim eval --json`) or run "
                                                   "folders (`torchslim run`), two or more."),
) -> None:
    """Print evaluation results side by side, with ratios against the first (a run folder brings its baseline
    first). Timings from different machines or thread counts are flagged: they are not comparable."""
    from rich.console import Console

    from torchslim.core.errors import TorchSlimError
    from torchslim.eval import render_table

    reports = []
    timed_in = set()                # the arguments whose results carry timings: each was timed in its own process
    for p in results:
        for r in _reports(p):
            if not any(r.to_dict() == o.to_dict() for o in reports):     # two runs of one model share a baseline
                reports.append(r)
                if r.speed is not None:
                    timed_in.add(p)
    if len(reports) < 2:
        raise TorchSlimError("compare needs two or more results")
    console = Console()
    console.print(render_table(reports))
    machines = {(r.device_name, r.threads) for r in reports if r.speed is not None}
    if len(machines) > 1:
        console.print("note: these results were timed on different machines or thread counts ("
                      + "; ".join(f"{d}, {t} threads" for d, t in sorted(machines)) + "): compare their speed only "
                      "within one machine")
    elif len(timed_in) > 1:         # one model's fp32 timings read 386 ms in one eval and 1,025 ms in a run
        console.print("note: the speed figures come from separate runs, each timed under the machine's load of the "
                      "moment: ratios across runs are rough; a run folder's own table times its two models "
                      "interleaved", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
