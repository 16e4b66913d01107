"""One static, self-contained HTML page from what :mod:`torchslim.report.inputs` read: the before/after table,
the size/quality Pareto plots, the sensitivity heat maps, each artifact's per-layer kernel and format table and
the history of stages. Figures are PNGs embedded as ``data:`` URIs; the page loads nothing and runs no script.
Every string that came from a file (model, layer, recipe names) is HTML-escaped; a section with nothing to
show is named under "Not in this report" with the input that would fill it."""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Iterable

from torchslim.eval.fmt import fmt_bytes, fmt_count, fmt_metric, fmt_num, shape_key
from torchslim.report import plots
from torchslim.report.inputs import Artifact, Column, Front, Inputs, Point, Run, Scan, gather

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}th,td{border:1px solid #ddd;padding:.25em .6em}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption,.note{color:#555;font-size:.88em}.missing li{color:#555}code{background:#f3f3f3;padding:0 .2em}
"""

MISSING = {
    "before/after table": "a run folder (`torchslim run`) or `torchslim eval --json` files",
    "size/quality Pareto plot": "run folders or evaluations with a size and a quality, or a front JSON "
                                "(benchmarks/search/front.py)",
    "sensitivity heat map": "a sensitivity.json (`torchslim sensitivity MODEL -o DIR`)",
    "per-layer kernel and format table": "an artifact folder (`torchslim quantize/prune/run ... -o DIR`)",
    "history of stages": "a run folder or an artifact folder",
}


def e(value: Any) -> str:
    """``value`` as HTML text (quotes escaped too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], numeric: Iterable[int] = ()) -> str:
    """An HTML table; every cell is escaped; columns in ``numeric`` are right-aligned."""
    right = set(numeric)
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in right else ""}>{e(c)}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(fig: Any, alt: str, caption: str = "") -> str:
    data = base64.b64encode(plots.png(fig, dpi=96)).decode("ascii")
    cap = f"<figcaption>{e(caption)}</figcaption>" if caption else ""
    return f'<figure><img class="plot" alt="{e(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _notes(lines: Iterable[str]) -> str:
    return "".join(f'<p class="note">{e(n)}</p>' for n in lines)


# -- sections --------------------------------------------------------------------------------------------------
def before_after(columns: list[Column]) -> str:
    from torchslim.eval.render import table_rows

    headers, rows, notes = table_rows([c.report for c in columns])
    machines = {(c.report.device_name, c.report.threads) for c in columns if c.report.speed is not None}
    if len(machines) > 1:
        notes.append("These results were timed on different machines or thread counts ("
                     + "; ".join(f"{d}, {t} threads" for d, t in sorted(machines)) + "): compare speed only within one.")
    return table(["Metric", *headers], [[label, *cells] for label, cells in rows], range(1, len(headers) + 1)) \
        + _notes(notes)


def _latency_key(columns: list[Column]) -> str | None:
    """The first timed shape every timed column shares, if all were timed on one machine."""
    timed = [c.report for c in columns if c.report.speed is not None and c.report.speed.shapes]
    if len(timed) < 2 or len({(r.device_name, r.threads) for r in timed}) > 1:
        return None
    keys = [shape_key(s.batch, s.seq_len) for s in timed[0].speed.shapes]
    return next((k for k in keys if all(k in {shape_key(s.batch, s.seq_len) for s in r.speed.shapes} for r in timed)),
                None)


def columns_front(columns: list[Column]) -> tuple[Front | None, list[str]]:
    """The evaluated models as points (size on disk against the first column's primary metric), or None with
    the reason when fewer than two have both."""
    sized = [c for c in columns if c.report.quality is not None and c.report.size is not None
             and c.report.size.artifact_bytes is not None and c.report.quality.primary in c.report.quality.metrics]
    if not sized:
        return None, []
    metric = sized[0].report.quality.primary
    same = [c for c in sized if c.report.quality.primary == metric]
    notes = [f"{c.report.model}: left out of the plot ({c.report.quality.primary}, not {metric})"
             for c in sized if c not in same]
    if len(same) < 2:
        return None, notes
    key = _latency_key(same)
    points = []
    for c in same:
        r = c.report
        lat = next((s.latency.median_ms for s in (r.speed.shapes if r.speed else [])
                    if shape_key(s.batch, s.seq_len) == key), None) if key else None
        points.append(Point(r.model, c.role, float(r.size.artifact_bytes), float(r.quality.metrics[metric]), lat))
    if key:
        notes.append(f"latency: median at batch x tokens {key}, timed on {same[0].report.device_name}")
    return Front("evaluated models", metric, bool(same[0].report.quality.higher_is_better), points,
                 "artifact size on disk"), notes


MARKS = {"original": "the star is the uncompressed model", "recipe": "diamonds are recipes' results",
         "uniform": "circles one action on every layer", "tuned": "squares tuned per-layer mixes",
         "evaluated": "triangles evaluated models"}


def front_section(f: Front, notes: list[str]) -> str:
    front = {id(p) for p in plots.on_front(f)}
    timed = any(p.latency_ms is not None for p in f.points)
    rows = [[p.name, p.kind, fmt_bytes(p.bytes), fmt_metric(p.quality),
             *([] if not timed else [""] if p.latency_ms is None else [f"{fmt_num(p.latency_ms)} ms"]),
             "yes" if id(p) in front else ""] for p in sorted(f.points, key=lambda p: -p.bytes)]
    better = "higher" if f.higher_is_better else "lower"
    marks = [MARKS[k] for k in MARKS if any(p.kind == k for p in f.points)]
    caption = (f"{f.bytes_label} against {f.metric} ({better} is better); " + ", ".join(marks)
               + ("; " if marks else "") + "the dashed line is the front (no other point is both smaller and better).")
    return (f"<h3>{e(f.label)}</h3>" + figure(plots.pareto(f), f"Pareto plot: {f.label}", caption)
            + table(["point", "kind", f.bytes_label, f.metric, *(["latency"] if timed else []), "on the front"], rows,
                    (2, 3, 4) if timed else (2, 3))
            + _notes(f.notes + notes))


def scan_section(s: Scan, top: int = 15) -> str:
    ranked = sorted(range(len(s.groups)), key=lambda i: -sum(c or 0.0 for c in s.costs[i]))
    rows = [[s.groups[i], *("n/a" if c is None else f"{c:.3g}" for c in s.costs[i])] for i in ranked[:top]]
    caption = (f"{len(s.groups)} {s.granularity}s x {len(s.actions)} actions, cost: {s.measure}"
               + (f", scanned in {s.seconds:.0f} s" if s.seconds else "") + "; grey: the action does not apply.")
    return (f"<h3>{e(s.label)}</h3>"
            + figure(plots.heat_map(s.groups, s.actions, s.costs, s.measure, s.granularity),
                     f"Sensitivity heat map: {s.label}", caption)
            + f'<p class="note">The {min(top, len(ranked))} most sensitive of {len(ranked)} {e(s.granularity)}s '
              f"(by the sum of their costs):</p>"
            + table([s.granularity, *(f"{a} cost" for a in s.actions)], rows, range(1, len(s.actions) + 1)))


def layers_section(a: Artifact) -> str:
    layers = a.manifest.get("layers") or {}
    if not layers:
        return f"<h3>{e(a.label)}</h3><p>No compressed layers: every layer is stored as it was.</p>"
    rows = []
    for name, info in layers.items():
        sparsity = info.get("sparsity")
        rows.append([name, info.get("module", ""), info.get("technique", ""), info.get("storage", info.get("format", "")),
                     info.get("bits", ""), f"{sparsity:.0%}" if isinstance(sparsity, (int, float)) else "",
                     info.get("kernel", ""), info.get("kernel_note", ""),
                     "yes" if info.get("slower_than_fp32") else "", info.get("stage", "")])
    return (f"<h3>{e(a.label)}</h3>"
            + table(["layer", "module", "technique", "storage", "bits", "sparsity", "kernel", "kernel note",
                     "slower than fp32", "stage"], rows, (4, 5, 9))
            + _notes([f"{len(layers)} compressed layers; the kernel is the one recorded when the artifact was saved "
                      "(torchslim kernels measures their speed on this machine)."]))


def run_history(r: Run) -> str:
    rows = [[s.get("index", ""), s.get("stage", ""), f"{s.get('seconds') or 0:.1f}", s.get("changed", ""),
             fmt_count(s["params"]) if isinstance(s.get("params"), (int, float)) else "",
             fmt_bytes(s["memory_bytes"]) if isinstance(s.get("memory_bytes"), (int, float)) else "",
             fmt_metric(s["metrics"][r.metric]) if isinstance((s.get("metrics") or {}).get(r.metric), (int, float))
             else ""] for s in r.stages]
    return (f"<h3>{e(r.label)}: recipe {e(r.recipe)}</h3>"
            + table(["#", "stage", "seconds", "changed", "parameters", "in memory", r.metric or "metric"], rows,
                    (0, 2, 4, 5, 6)) + _notes([f"machine: {r.machine}"] if r.machine else []))


def artifact_history(a: Artifact) -> str:
    history = a.manifest.get("history") or []
    if not history:
        return f"<h3>{e(a.label)}</h3><p>No history recorded (format v{e(a.manifest.get('format_version'))}).</p>"
    rows = []
    for h in history:
        touched = h.get("touched") if isinstance(h.get("touched"), dict) else {}
        by_type = touched.get("by_type") if isinstance(touched.get("by_type"), dict) else {}
        metrics = h.get("metrics") if isinstance(h.get("metrics"), dict) else {}
        rows.append([h.get("index", ""), h.get("kind", ""), h.get("name", ""),
                     ", ".join(f"{v} {k}" for k, v in by_type.items()) or "no layer replaced",
                     f"{h['seconds']:.1f}" if isinstance(h.get("seconds"), (int, float)) else "",
                     ", ".join(f"{k}={fmt_metric(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))])
    return f"<h3>{e(a.label)}</h3>" + table(["#", "kind", "stage", "changed", "seconds", "metrics"], rows, (0, 4))


# -- the page ------------------------------------------------------------------------------------------------
def sections(inputs: Inputs) -> tuple[list[tuple[str, str]], list[str]]:
    """``(title, body)`` of each section with data, and the titles of those without."""
    out: dict[str, str] = {}
    if inputs.columns:
        out["before/after table"] = before_after(inputs.columns)
    fronts = [front_section(f, []) for f in inputs.fronts]
    cf, notes = columns_front(inputs.columns)
    if cf is not None:
        fronts.insert(0, front_section(cf, notes))
    if fronts:
        out["size/quality Pareto plot"] = "".join(fronts)
    if inputs.scans:
        out["sensitivity heat map"] = "".join(scan_section(s) for s in inputs.scans)
    if inputs.artifacts:
        out["per-layer kernel and format table"] = "".join(layers_section(a) for a in inputs.artifacts)
    run_labels = {r.label for r in inputs.runs}
    history = [run_history(r) for r in inputs.runs] + [artifact_history(a) for a in inputs.artifacts
                                                        if a.label not in run_labels]
    if history:
        out["history of stages"] = "".join(history)
    return [(t, out[t]) for t in MISSING if t in out], [t for t in MISSING if t not in out]


def render(inputs: Inputs, title: str = "torchslim report") -> str:
    """The whole page as one string."""
    from torchslim.core.io import utc_now
    from torchslim.version import __version__

    present, missing = sections(inputs)
    parts = [f"<h1>{e(title)}</h1>",
             f'<p class="note">torchslim {e(__version__)}, written {e(utc_now())} from: '
             + ", ".join(f"<code>{e(s)}</code>" for s in inputs.sources) + "</p>"]
    if missing:
        parts.append('<div class="missing"><h2>Not in this report</h2><ul>'
                     + "".join(f"<li>{e(t)}: give {e(MISSING[t])}</li>" for t in missing) + "</ul></div>")
    parts += [f'<section id="{e(t.replace(" ", "-").replace("/", "-"))}"><h2>{e(t[0].upper() + t[1:])}</h2>{body}'
              "</section>" for t, body in present]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>{e(title)}</title><style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write(paths: list[str | os.PathLike], out: str | os.PathLike, title: str = "torchslim report") -> Path:
    """Read ``paths`` and write the page to ``out`` atomically (a file; never a folder or through a link)."""
    from torchslim.core.errors import TorchSlimError
    from torchslim.core.io import atomic_file

    out = Path(out)
    if out.is_dir() or out.is_symlink():
        raise TorchSlimError(f"{out}: the report is written to a file, not a folder or a link")
    page = render(gather([Path(p) for p in paths]), title)
    with atomic_file(out) as f:
        f.write(page)
    return out
