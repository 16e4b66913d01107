"""A line saying what the command is doing while it works: a spinner on a terminal, a plain line otherwise.

rich's ``console.status`` prints nothing when its console is not a terminal, so a command run from a script or
with its output in a log file sat silent through a model load or a compile; there it prints the line instead.
"""
from __future__ import annotations

import contextlib
from typing import Any

from rich.markup import escape


def status(console: Any, text: str) -> Any:
    """A context manager: ``console.status(text)`` on a terminal, else ``text`` printed once (dim) on entry.
    ``text`` is shown as written (never read as markup)."""
    if console.is_terminal:
        return console.status(escape(text))
    console.print(f"[dim]{escape(text)}[/dim]")
    return contextlib.nullcontext()
