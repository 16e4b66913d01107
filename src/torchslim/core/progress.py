"""Progress for long work, in every context: a bar on a terminal, periodic lines in scripts and logs.

One mechanism for the whole package (calibration, quantization, pruning, training, evaluation), switched by one
environment variable:

``TORCHSLIM_PROGRESS``
    ``auto`` (default): a rich bar when stderr is a terminal, else progress lines on stderr;
    ``bar`` (or ``1``): always a bar; ``lines``: always lines; ``off`` (or ``0``): nothing.
``TORCHSLIM_PROGRESS_EVERY``
    seconds between two progress lines (default 10; the first and the last step are always printed).

A line reads ``[torchslim] GPTQ 3/30 model.layers.2.mlp: 12 s elapsed, about 98 s left``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
MODES = ("auto", "bar", "lines", "off")
_ALIASES = {"1": "bar", "0": "off", "true": "bar", "false": "off", "": "auto"}


def mode() -> str:
    """``bar``, ``lines`` or ``off`` for this process (``auto`` resolved against stderr)."""
    raw = os.environ.get("TORCHSLIM_PROGRESS", "auto").strip().lower()
    m = _ALIASES.get(raw, raw)
    if m not in MODES:
        m = "auto"
    if m == "auto":
        return "bar" if sys.stderr.isatty() else "lines"
    return m


_MUTED = [0]


def enabled() -> bool:
    return mode() != "off" and not _MUTED[0]


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """No progress from the work inside (a scan's hundred one-layer trials under its own bar)."""
    _MUTED[0] += 1
    try:
        yield
    finally:
        _MUTED[0] -= 1


def _interval() -> float:
    try:
        return max(float(os.environ.get("TORCHSLIM_PROGRESS_EVERY", "10")), 0.0)
    except ValueError:
        return 10.0


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class Progress:
    """A count towards ``total`` (``None``: unknown) shown as a bar or as lines; use as a context manager."""

    def __init__(self, description: str, total: int | None = None, *, unit: str = "", initial: int = 0,
                 show: bool = True) -> None:
        self.description, self.total, self.unit, self.done = description, total, unit, initial
        self.mode = mode() if show and not _MUTED[0] else "off"
        self.note = ""
        self._start = self._last = time.perf_counter()
        self._initial = initial
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}", markup=False))
            self._bar = RichProgress(*columns, console=Console(stderr=True), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.done, note="")
        elif self.mode == "lines":
            self._line(force=True)
        return self

    def update(self, n: int = 1, note: str | None = None) -> None:
        """``n`` more done; ``note`` (a layer name, a loss) is shown beside the count."""
        self.done += n
        if note is not None:
            self.note = note
        if self._bar is not None:
            self._bar.update(self._task, advance=n, note=self.note)
        elif self.mode == "lines":
            self._line(force=self.total is not None and self.done >= self.total)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self.mode == "lines" and exc[0] is None and (self.total is None or self.done < self.total):
            self._line(force=True)

    def _line(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < _interval():
            return
        self._last = now
        elapsed = now - self._start
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        unit = f" {self.unit}" if self.unit else ""
        text = f"[torchslim] {self.description} {count}{unit}"
        if self.note:
            text += f" {self.note}"
        text += f": {_seconds(elapsed)} elapsed"
        moved = self.done - self._initial
        if self.total is not None and 0 < moved and self.done < self.total:
            text += f", about {_seconds(elapsed / moved * (self.total - self.done))} left"
        print(text, file=sys.stderr, flush=True)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with progress on stderr (a bar on a terminal, lines otherwise)."""
    if not enabled():
        yield from items
        return
    with Progress(description, total if total is not None else _len(items)) as progress:
        for item in items:
            progress.note = _label(item)
            yield item
            progress.update(1)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def announce(text: str) -> None:
    """``[torchslim] text`` on stderr (when progress is on): names the step whose own progress lines follow, so
    two runs of the same work (the model, then its exported file) read apart in a log."""
    if enabled():
        _stderr(f"[torchslim] {text}")


@contextlib.contextmanager
def heartbeat(description: str, emit: Callable[[str], None] = _stderr) -> Iterator[None]:
    """Progress for one long call that reports no steps of its own (a trace, an export, one evaluation): on a
    terminal a spinner with the elapsed time; off a terminal ``[torchslim] description`` on entry, then
    ``[torchslim] description: 40 s elapsed`` every ``TORCHSLIM_PROGRESS_EVERY`` seconds from a background thread,
    and the total on exit, so a log never sits silent through it. ``emit`` writes one line (default: stderr)."""
    if not enabled():
        yield
        return
    if mode() == "bar":
        with Progress(description, None):
            yield
        return
    start = time.perf_counter()
    stop = threading.Event()
    emit(f"[torchslim] {description}")

    def beat() -> None:
        while not stop.wait(max(_interval(), 0.05)):
            emit(f"[torchslim] {description}: {_seconds(time.perf_counter() - start)} elapsed")

    thread = threading.Thread(target=beat, name="torchslim-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    emit(f"[torchslim] {description}: done in {_seconds(time.perf_counter() - start)}")


def _len(items: Iterable) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def _label(item: object) -> str:
    if isinstance(item, tuple) and item and isinstance(item[0], str):
        return item[0]
    return ""


def stage(console: Any, text: str, *, spinner: bool = True) -> Any:
    """A context manager saying what is being done while it runs, on ``console`` (a ``rich.console.Console``;
    commands give one on stderr, so stdout keeps only their results): a spinner on a terminal, else a
    :func:`heartbeat` (``[torchslim] text`` on entry, every ``TORCHSLIM_PROGRESS_EVERY`` seconds while it runs, and
    its time on success: rich's spinner prints nothing off a terminal, so a log sat silent through a model load or a
    compile). Timed stages pass ``spinner=False`` (the line is printed once, no thread competes with what is timed),
    as does everything when progress is off. ``text`` is shown as written (never read as markup); ``console`` None shows nothing."""
    if console is None:
        return contextlib.nullcontext()
    from rich.markup import escape

    if spinner and console.is_terminal:
        return console.status(escape(text))

    def say(line: str) -> None:                 # as progress lines
        console.print(escape(line), soft_wrap=True, style="dim", highlight=False)

    if spinner and enabled():                   # a long load or compile keeps saying it is alive in a log
        return heartbeat(text, say)
    say("[torchslim] " + text)
    return contextlib.nullcontext()
