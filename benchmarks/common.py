"""Shared benchmark helpers: variants measured side by side in one process, interleaved, as ratios."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    name: str
    note: str = ""
    values: dict[str, Any] = field(default_factory=dict)


def machine_line() -> str:
    """CPU, ISA features (AVX2 / AVX512-VNNI / AMX decide the kernels), threads, torch, and the date."""
    from torchslim.runtime.machine import machine_line as line

    return f"{line()}, {time.strftime('%Y-%m-%d')}"


def artifact_bytes(model: torch.nn.Module, source: dict | None = None) -> int:
    import torchslim

    with tempfile.TemporaryDirectory() as d:
        path = torchslim.save(model, Path(d) / "a", source=source)
        return sum(p.stat().st_size for p in path.iterdir())


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int = 5, settle_s: float = 0.0,
                warm_calls: int = 0) -> dict[str, float]:
    """Median seconds per call of each function, calling them round-robin ``rounds`` times.

    ``settle_s``: an untimed pause before each call. ONNX Runtime's worker threads spin for a while after a
    run; without a pause the next variant (whichever it is) shares the cores with them. ``warm_calls``:
    untimed calls of the same variant right before each timed one, so each is timed in steady state (its
    weights in cache) rather than cold after the other variants evicted them."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            if settle_s:
                time.sleep(settle_s)
            for _ in range(warm_calls):
                fn()
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def write_table(path: Path, title: str, intro: str, columns: list[str], rows: list[Row], notes: list[str]) -> None:
    lines = [f"# {title}", "", intro, "", f"Machine: {machine_line()}", "",
             "| variant | " + " | ".join(columns) + " | notes |", "|" + "---|" * (len(columns) + 2)]
    for r in rows:
        cells = [_fmt(r.values.get(c)) for c in columns]
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {r.note} |")
    lines += [""] + [f"- {n}" for n in notes] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps([{"name": r.name, "note": r.note, **r.values} for r in rows], indent=1, default=str))


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def write_checks(path: Path, title: str, checks: list[tuple[str, str, bool | None, str]]) -> None:
    """A target-check table (target, measured, met, what was tried for a miss) with the machine line; printed too."""
    lines = [f"# {title}", "", f"Machine: {machine_line()}", "",
             "| target | measured | met | what was tried (for a miss) |", "|---|---|---|---|"]
    for target, got, ok, tried in checks:
        lines.append(f"| {target} | {got} | {'yes' if ok else 'NO'} | {'' if ok else tried} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


LOCK = "/tmp/torchslim-bench.lock"        # the machine's shared timing lock (``flock`` on the command line)


@contextlib.contextmanager
def timing_lock(queue: str | None = None) -> Iterator[str]:
    """Hold the shared benchmark lock (as ``flock /tmp/torchslim-bench.lock``) while timing; yields a note for the
    table. Only the timed loops hold it, so other benchmarks' timings wait for nothing else. ``queue`` names a
    second lock that benchmarks of one family take first, so they never overlap even without the shared one.
    ``TORCHSLIM_BENCH_LOCK_WAIT`` (seconds) bounds the wait: past it the loops run without the lock, and the note
    says so."""
    limit = float(os.environ.get("TORCHSLIM_BENCH_LOCK_WAIT", "inf"))
    t = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if queue is not None:
            own = stack.enter_context(open(f"{LOCK}.{queue}", "a"))
            fcntl.flock(own, fcntl.LOCK_EX)
        f = stack.enter_context(open(LOCK, "a"))
        held = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.perf_counter() - t > limit:
                    break
                time.sleep(1.0)
        waited = time.perf_counter() - t
        try:
            yield (f"timed holding {LOCK} (waited {waited:.0f} s for it)" if held else
                   f"timed WITHOUT {LOCK}: another benchmark held it for the {waited:.0f} s this run could wait, so "
                   "other timed work may have overlapped (the interleaved ratios are the robust figures)")
        finally:
            if held:
                fcntl.flock(f, fcntl.LOCK_UN)
