"""Comparing reports: ratio dicts, a rich table, and plain-text / Markdown tables.

Ratios are ``other / base`` (0.52x latency = 48 % faster; 0.25x size = 4x smaller). Quality is
compared by difference instead (``delta = other - base``, ``relative = delta / |base|``).
"""
from __future__ import annotations

from typing import Any, Callable

from torchslim.core.errors import TorchSlimError
from torchslim.eval.fmt import fmt_bytes, fmt_count, fmt_metric, fmt_num, shape_key
from torchslim.eval.report import Report

Row = tuple[str, list[str]]


def ratio(base: float | None, other: float | None) -> float | None:
    """``other / base``; ``None`` when either is missing or ``base`` is 0."""
    if base is None or other is None or base == 0:
        return None
    return other / base


def _by_shape(report: Report, get: Callable[[Any], float | None], which: str) -> dict[str, float | None]:
    section = getattr(report, which)
    items = [] if section is None else section.shapes
    return {shape_key(s.batch, s.seq_len): get(s) for s in items}


def _shape_ratios(base: Report, other: Report, which: str, get: Callable[[Any], float | None]) -> dict[str, float | None]:
    b, o = _by_shape(base, get, which), _by_shape(other, get, which)
    return {k: ratio(b[k], o[k]) for k in b if k in o}


def _field_ratios(base: Any, other: Any, names: list[str]) -> dict[str, float | None]:
    if base is None or other is None:
        return {}
    return {n: ratio(getattr(base, n), getattr(other, n)) for n in names}


def _quality_deltas(base: Report, other: Report) -> dict[str, dict[str, float | None]]:
    if base.quality is None or other.quality is None:
        return {}
    out = {}
    for name, b in base.quality.metrics.items():
        if name in other.quality.metrics:
            o = other.quality.metrics[name]
            out[name] = {"base": b, "other": o, "delta": o - b, "relative": (o - b) / abs(b) if b else None}
    return out


def compare(base: Report, other: Report) -> dict[str, Any]:
    """Ratios ``other / base`` per section (per shape for speed and energy), quality deltas."""
    bs, os_ = base.speed, other.speed
    bd, od = (bs.decode if bs else None), (os_.decode if os_ else None)
    speed: dict[str, Any] = {
        "latency_median_ms": _shape_ratios(base, other, "speed", lambda s: s.latency.median_ms),
        "latency_p90_ms": _shape_ratios(base, other, "speed", lambda s: s.latency.p90_ms),
        "samples_per_s": _shape_ratios(base, other, "speed", lambda s: s.samples_per_s),
        "tokens_per_s": _shape_ratios(base, other, "speed", lambda s: s.tokens_per_s),
    }
    speed.update(_field_ratios(bd, od, ["decode_tokens_per_s", "prefill_ms"]))
    return {
        "base": base.model,
        "other": other.model,
        "quality": _quality_deltas(base, other),
        "size": _field_ratios(base.size, other.size, ["artifact_bytes", "parameters", "nonzero_parameters",
                                                      "bits_per_weight", "weight_bytes", "memory_bytes"]),
        "speed": speed,
        "compute": _field_ratios(base.compute, other.compute, ["flops", "macs"]),
        "memory": _field_ratios(base.memory, other.memory, ["peak_rss_bytes", "peak_rss_delta_bytes",
                                                            "cuda_max_allocated_bytes"]),
        "energy": _shape_ratios(base, other, "energy", lambda s: s.joules_per_forward)
        if base.energy and other.energy and base.energy.available and other.energy.available else {},
    }


# ---------------------------------------------------------------------------------------- formatting

def _shape_label(key: str) -> str:
    b, _, s = key.partition("x")
    return f"batch {b}" + (f", {s} tokens" if s else "")


def _metric_rows(reports: list[Report], base: int, label: str, get: Callable[[Report], float | None],
                 fmt: Callable[[float], str], delta: bool = False) -> Row | None:
    values = [get(r) for r in reports]
    if all(v is None for v in values):
        return None
    cells = []
    for i, v in enumerate(values):
        cell = "-" if v is None else fmt(v)
        bv = values[base]
        if i != base and v is not None and bv is not None:
            if delta:
                cell += f" ({v - bv:+.4g})"
            elif (r := ratio(bv, v)) is not None:
                cell += f" ({r:.2f}x)"
        cells.append(cell)
    return label, cells


def _attr(report: Report, path: str) -> Any:
    obj: Any = report
    for part in path.split("."):
        obj = None if obj is None else getattr(obj, part, None)
    return obj


def _shape_item(report: Report, which: str, key: str) -> Any:
    section = getattr(report, which)
    if section is None or not getattr(section, "shapes", None):
        return None
    return next((s for s in section.shapes if shape_key(s.batch, s.seq_len) == key), None)


def _shape_keys(reports: list[Report], which: str) -> list[str]:
    keys: list[str] = []
    for r in reports:
        section = getattr(r, which)
        for s in (section.shapes if section is not None else []):
            if (k := shape_key(s.batch, s.seq_len)) not in keys:
                keys.append(k)
    return keys


def _quality_rows(reports: list[Report], base: int) -> list[Row | None]:
    names: list[str] = []
    for r in reports:
        if r.quality is not None:
            for n in [r.quality.primary, *r.quality.metrics]:
                if n not in names:
                    names.append(n)
    rows = []
    for n in names:
        q = next(r.quality for r in reports if r.quality is not None and n in r.quality.metrics)
        label = f"{n} ({'higher' if q.higher_is_better else 'lower'} is better)" if n == q.primary else n
        rows.append(_metric_rows(reports, base, label, lambda r, n=n: (r.quality.metrics.get(n) if r.quality else None),
                                 fmt_metric, delta=True))
    return rows


def _field_row(reports: list[Report], base: int, label: str, path: str, fmt: Callable[[float], str]) -> Row | None:
    return _metric_rows(reports, base, label, lambda r: _attr(r, path), fmt)


def _shape_rows(reports: list[Report], base: int, which: str,
                specs: list[tuple[str, str, Callable[[float], str]]]) -> list[Row | None]:
    rows = []
    for key in _shape_keys(reports, which):
        for label, path, fmt in specs:
            get = lambda r, key=key, path=path: _attr(_shape_item(r, which, key), path)  # noqa: E731
            rows.append(_metric_rows(reports, base, f"{label} @ {_shape_label(key)}", get, fmt))
    return rows


def _energy_source(report: Report) -> str:
    e = report.energy
    if e is None:
        return "-"
    if not e.available:
        return "n/a (see notes)"
    return f"{e.source} ({', '.join(e.domains)})" if e.domains else str(e.source)


def table_rows(reports: list[Report], baseline_index: int = 0) -> tuple[list[str], list[Row], list[str]]:
    """``(column headers, rows, footnotes)`` shared by the rich and the plain-text tables."""
    if not reports:
        raise TorchSlimError("no reports to tabulate")
    if not 0 <= baseline_index < len(reports):
        raise TorchSlimError(f"baseline_index {baseline_index} is out of range for {len(reports)} reports")
    b = baseline_index
    ms = lambda v: f"{fmt_num(v)} ms"  # noqa: E731
    rows: list[Row | None] = [("Task / device", [f"{r.task} / {r.device}, {r.threads} threads" for r in reports])]
    if any(r.settings.get("runtime", "torch") != "torch" for r in reports):
        rows.append(("Runtime", [r.settings.get("runtime", "torch") for r in reports]))
    rows += _quality_rows(reports, b)
    rows += [
        _field_row(reports, b, "Artifact size on disk", "size.artifact_bytes", fmt_bytes),
        _field_row(reports, b, "Parameters", "size.parameters", fmt_count),
        _field_row(reports, b, "Non-zero parameters", "size.nonzero_parameters", fmt_count),
        _field_row(reports, b, "Bits per weight", "size.bits_per_weight", fmt_num),
        _field_row(reports, b, "Params + buffers in memory", "size.memory_bytes", fmt_bytes),
    ]
    rows += _shape_rows(reports, b, "speed", [
        ("Latency median", "latency.median_ms", ms), ("Latency p90", "latency.p90_ms", ms),
        ("Throughput (samples/s)", "samples_per_s", lambda v: f"{fmt_num(v)} samples/s"),
        ("Throughput (tokens/s)", "tokens_per_s", lambda v: f"{fmt_num(v)} tokens/s")])
    rows += [
        _field_row(reports, b, "Decode speed", "speed.decode.decode_tokens_per_s", lambda v: f"{fmt_num(v)} tokens/s"),
        _field_row(reports, b, "Prefill + first token", "speed.decode.prefill_ms", ms),
        _field_row(reports, b, "FLOPs per forward", "compute.flops", lambda v: fmt_count(v, "FLOP")),
        _field_row(reports, b, "MACs per forward", "compute.macs", lambda v: fmt_count(v, "MAC")),
        _field_row(reports, b, "Peak RSS (process)", "memory.peak_rss_bytes", fmt_bytes),
        _field_row(reports, b, "RSS increase during run", "memory.peak_rss_delta_bytes", fmt_bytes),
        _field_row(reports, b, "CUDA peak allocated", "memory.cuda_max_allocated_bytes", fmt_bytes),
    ]
    if any(r.energy is not None for r in reports):
        rows.append(("Energy counter", [_energy_source(r) for r in reports]))
    rows += _shape_rows(reports, b, "energy", [
        ("Energy per forward", "joules_per_forward", lambda v: f"{fmt_num(v)} J"),
        ("Average power", "average_watts", lambda v: f"{fmt_num(v)} W")])
    notes = ["Ratios in parentheses are this column / baseline; quality shows the difference."] if len(reports) > 1 else []
    reasons = {r.energy.reason: None for r in reports if r.energy is not None and not r.energy.available}
    notes += [f"Energy unavailable: {reason}" for reason in reasons]
    notes += noisy_notes(reports)
    headers = [f"{r.model} (baseline)" if i == b and len(reports) > 1 else r.model for i, r in enumerate(reports)]
    return headers, [r for r in rows if r is not None], notes


def render_table(reports: list[Report], baseline_index: int = 0) -> Any:
    """A ``rich.table.Table`` with one column per report and ratios vs the baseline in the cells."""
    from rich.markup import escape
    from rich.table import Table

    headers, rows, notes = table_rows(reports, baseline_index)
    headers = [escape(h) for h in headers]              # model labels are user text, never markup
    table = Table(title="torchslim evaluation", caption="\n".join(notes), caption_justify="left")
    table.add_column("Metric", style="bold", overflow="fold")
    for h in headers:           # fold, never '…': five columns at 80 cut every header to 'smollm2-1…'
        table.add_column(h, justify="right", overflow="fold")
    for label, cells in rows:
        table.add_row(escape(label), *map(escape, cells))
    return table


def format_table(reports: list[Report], baseline_index: int = 0, *, markdown: bool = False) -> str:
    """The same table as plain aligned text (for logs) or as a Markdown table."""
    headers, rows, notes = table_rows(reports, baseline_index)
    grid = [["Metric", *headers], *[[label, *cells] for label, cells in rows]]
    if markdown:
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(esc(c) for c in grid[0]) + " |",
                 "|---|" + "---:|" * len(headers)]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in grid[1:]]
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]
    fmt_row = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                    for i, (c, w) in enumerate(zip(row, widths)))
    lines = [fmt_row(grid[0]), "  ".join("-" * w for w in widths), *[fmt_row(r) for r in grid[1:]]]
    return "\n".join(lines + [""] + notes) + "\n"


def to_markdown(reports: list[Report], baseline_index: int = 0) -> str:
    """:func:`format_table` as Markdown."""
    return format_table(reports, baseline_index, markdown=True)


NOISY_SPREAD = 0.25   # (p90 - median) / median above which a latency is flagged as too noisy to compare


def noisy_notes(reports: list[Report]) -> list[str]:
    """One warning per timed shape whose spread is too high to trust (other work on the machine, throttling)."""
    out = []
    for r in reports:
        for s in (r.speed.shapes if r.speed is not None else []):
            lat = s.latency
            spread = (lat.p90_ms - lat.median_ms) / lat.median_ms if lat.median_ms > 0 else 0.0
            if spread > NOISY_SPREAD:
                out.append(f"warning: {r.model} at {s.batch}x{s.seq_len}: p90 is {spread:.0%} above the median; too "
                           "noisy to trust (is other work running?): rerun with more --iters on a quiet machine")
    return out
