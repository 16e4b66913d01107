"""``torchslim export``: an artifact in another ecosystem's format."""
from __future__ import annotations

from pathlib import Path

import typer

export_app = typer.Typer(help="Export an artifact to another format.", no_args_is_help=True)


@export_app.command("hf")
def export_hf_cmd(
    artifact: Path = typer.Argument(..., help="torchslim artifact folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Hugging Face folder to write (save_pretrained layout)."),
    dense: bool = typer.Option(False, "--dense", help="Write packed, sparse and scaled layers back in float."),
) -> None:
    """Write an artifact as an ordinary Hugging Face folder (from_pretrained loads it)."""
    from rich.console import Console

    from torchslim.artifact.export_hf import export_hf

    done = export_hf(artifact, out, dense=dense)
    Console().print(f"wrote {out}" + (f" ({done['densified_layers']} layers dequantized to float)" if dense else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
