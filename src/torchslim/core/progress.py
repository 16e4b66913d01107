"""Progress bars for long work (rich), silent when output is not a terminal or when disabled."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    return os.environ.get("TORCHSLIM_PROGRESS", "auto") == "1" or (
        os.environ.get("TORCHSLIM_PROGRESS", "auto") == "auto" and sys.stderr.isatty()
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr (when it is a terminal)."""
    if not enabled():
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total if total is not None else _len(items))
        for item in items:
            progress.update(task, description=f"{description} {_label(item)}")
            yield item
            progress.advance(task)


def _len(items: Iterable) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def _label(item: object) -> str:
    if isinstance(item, tuple) and item and isinstance(item[0], str):
        return item[0]
    return ""
