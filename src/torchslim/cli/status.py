"""A line saying what the command is doing while it works (see :func:`torchslim.core.progress.stage`): on
stderr, so that a command's results on stdout (generated text, a table, JSON) stay clean for a pipe."""
from __future__ import annotations

from typing import Any

from rich.console import Console

from torchslim.core.progress import stage


def progress_console() -> Console:
    """The console for what a command is doing (stderr)."""
    return Console(stderr=True)


def status(text: str) -> Any:
    """A spinner on a terminal, else ``text`` once on stderr."""
    return stage(progress_console(), text)
