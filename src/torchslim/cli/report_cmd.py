"""``torchslim report INPUT... -o report.html``: runs, artifacts, evaluations, sensitivity scans and size/quality
fronts on one static HTML page."""
from __future__ import annotations

from pathlib import Path

import typer


def report_cmd(
    inputs: list[Path] = typer.Argument(..., help="Run folders (`torchslim run`), artifact folders, `eval --json` "
                                                  "files, sensitivity.json (or its folder), front JSON files."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML file to write."),
    title: str = typer.Option("torchslim report", help="The page's title."),
) -> None:
    """Write one self-contained HTML page (figures embedded, readable without a server): the before/after table,
    each artifact's per-layer kernel and format table, sensitivity heat maps, size/quality Pareto plots with the
    uncompressed model and the recipes on them, and the history of stages. Sections with no input are named."""
    from rich.console import Console
    from rich.markup import escape

    from torchslim.report import write

    path = write(inputs, out, title)
    Console().print("wrote " + escape(str(path)), soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
