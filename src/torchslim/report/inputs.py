"""What the HTML report reads: run folders, artifact folders, ``eval --json`` files, sensitivity scans and
size/quality fronts, each recognised by its content and checked once here (a bad input is one line).

Everything is turned into the plain values the page renders: evaluation :class:`Report` columns, stage rows,
manifests, a :class:`Scan` (groups x actions costs) and :class:`Front` points. Nothing here measures anything.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim.core.errors import TorchSlimError
from torchslim.eval.report import Report

MAX_BYTES = 64 << 20
WHAT = ("a run folder (report.json), an artifact folder (manifest.json), an `eval --json` file, a sensitivity.json "
        "(or the folder `torchslim sensitivity` wrote) or a front JSON (points with bytes and quality)")


@dataclass
class Column:
    """One evaluated model: ``role`` is ``original`` (a run's uncompressed model), ``recipe`` (a run's final
    model) or ``evaluated`` (an ``eval --json`` file)."""

    report: Report
    role: str


@dataclass
class Run:
    label: str
    recipe: str
    metric: str
    machine: str
    stages: list[dict[str, Any]]


@dataclass
class Artifact:
    label: str
    manifest: dict[str, Any]


@dataclass
class Scan:
    """A sensitivity scan: ``costs[i][j]`` of action ``j`` on group ``i`` (``None``: not applied)."""

    label: str
    measure: str
    granularity: str
    actions: list[str]
    groups: list[str]
    costs: list[list[float | None]]
    seconds: float = 0.0


@dataclass
class Point:
    name: str
    kind: str               # original | recipe | uniform | tuned | evaluated | any other label a front gives
    bytes: float
    quality: float
    latency_ms: float | None = None


@dataclass
class Front:
    label: str
    metric: str
    higher_is_better: bool
    points: list[Point]
    bytes_label: str = "stored bytes"
    front: list[str] | None = None          # the names the file marks as the front (None: computed)
    notes: list[str] = field(default_factory=list)


@dataclass
class Inputs:
    sources: list[str] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    scans: list[Scan] = field(default_factory=list)
    fronts: list[Front] = field(default_factory=list)

    def add_column(self, column: Column) -> None:
        """A column once: two runs of one model share their uncompressed baseline."""
        if not any(column.report.to_dict() == c.report.to_dict() for c in self.columns):
            self.columns.append(column)


def read_json(file: Path) -> Any:
    from torchslim.core.io import read_text

    try:
        return json.loads(read_text(file, MAX_BYTES, "report not found"))
    except json.JSONDecodeError as e:
        raise TorchSlimError(f"{file}: not JSON: {e}") from None
    except UnicodeDecodeError:
        raise TorchSlimError(f"{file}: not JSON (not UTF-8 text)") from None


def is_run(data: Any) -> bool:
    return isinstance(data, dict) and "final" in data and "stages" in data


def run_columns(data: dict[str, Any], label: str, file: Path) -> list[Column]:
    """The uncompressed and the final model of a run's report (the final one labelled by the run)."""
    if not isinstance(data.get("final"), dict) or not isinstance(data.get("baseline"), dict):
        raise TorchSlimError(f"{file}: the run wrote no before/after evaluation (run without --no-report)")
    base, final = _report(data["baseline"], file), _report(data["final"], file)
    final.model = f"{label} ({data.get('recipe', 'run')})"
    return [Column(base, "original"), Column(final, "recipe")]


def evaluations(path: Path) -> list[Column]:
    """The evaluations a path holds: an ``eval --json`` file gives one; a run folder (or its ``report.json``)
    its baseline and final model."""
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise TorchSlimError(f"{path}: no evaluation report (an `eval --json` file, or a run folder with report.json)")
    data = read_json(file)
    if is_run(data):
        return run_columns(data, label_of(path), file)
    return [Column(_report(data, file), "evaluated")]


def label_of(path: Path) -> str:
    """A run's label: its folder's name (also when given its ``report.json``), else the file's stem."""
    return path.name if path.is_dir() else path.parent.name if path.name == "report.json" else path.stem


def _report(data: Any, file: Path) -> Report:
    try:
        return Report.from_dict(data)
    except TorchSlimError as e:
        raise TorchSlimError(f"{file}: {e}") from None


def gather(paths: list[Path]) -> Inputs:
    """Read every input (in order); an input nothing here reads is an error naming what is read."""
    if not paths:
        raise TorchSlimError(f"nothing to report: give {WHAT}")
    out = Inputs()
    for path in paths:
        if not path.exists():
            raise TorchSlimError(f"{path}: no such file or folder")
        _folder(path, out) if path.is_dir() else _file(path, label_of(path), read_json(path), out)
        out.sources.append(str(path))
    return out


def _folder(path: Path, out: Inputs) -> None:
    from torchslim.artifact import read_manifest

    found = False
    if (path / "report.json").is_file():
        _file(path / "report.json", path.name, read_json(path / "report.json"), out)
        found = True
    if (path / "manifest.json").is_file():
        out.artifacts.append(Artifact(path.name, read_manifest(path)))
        found = True
    if (path / "sensitivity.json").is_file():
        out.scans.append(scan(read_json(path / "sensitivity.json"), path.name, path / "sensitivity.json"))
        found = True
    if not found:
        raise TorchSlimError(f"{path}: a folder with no report.json, manifest.json or sensitivity.json; give {WHAT}")


def _file(file: Path, label: str, data: Any, out: Inputs) -> None:
    if not isinstance(data, dict):
        raise TorchSlimError(f"{file}: not a report torchslim reads (a JSON {type(data).__name__}); give {WHAT}")
    if is_run(data):
        for c in run_columns(data, label, file):
            out.add_column(c)
        stages = data.get("stages")
        if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
            raise TorchSlimError(f"{file}: 'stages' must be a list of stage rows")
        run = Run(label, str(data.get("recipe", "run")), str(data.get("metric", "")), str(data.get("machine", "")),
                  stages)
        if run not in out.runs:
            out.runs.append(run)
    elif "points" in data:
        out.fronts.append(front(data, label, file))
        if isinstance(data.get("scan"), dict):
            out.scans.append(scan(data["scan"], label, file))
    elif "rows" in data and "actions" in data:
        out.scans.append(scan(data, label, file))
    elif isinstance(data.get("scan"), dict):
        out.scans.append(scan(data["scan"], label, file))
    elif "model" in data and "task" in data:
        out.add_column(Column(_report(data, file), "evaluated"))
    elif data.get("format") == "torchslim" or "format_version" in data:
        raise TorchSlimError(f"{file}: an artifact manifest; give the artifact's folder ({file.parent})")
    else:
        raise TorchSlimError(f"{file}: not a report torchslim reads; give {WHAT}")


def _number(value: Any, where: str, file: Path, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TorchSlimError(f"{file}: {where} must be a finite number, got {value!r}")
    return float(value)


def scan(data: Any, label: str, file: Path) -> Scan:
    """A sensitivity scan from its JSON (``Sensitivity.to_dict``): the groups, actions and costs."""
    try:
        actions = [str(a) for a in data["actions"]]
        rows = data["rows"]
        groups = [str(r["group"]) for r in rows]
        costs = [[_number((r["cells"].get(a) or {}).get("cost"), f"rows[{i}].cells[{a!r}].cost", file, True)
                  for a in actions] for i, r in enumerate(rows)]
        return Scan(label, str(data["measure"]), str(data["granularity"]), actions, groups, costs,
                    float(data.get("seconds") or 0.0))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise TorchSlimError(f"{file}: not a sensitivity scan (`torchslim sensitivity` writes one): "
                             f"bad or missing {e}") from None


def front(data: dict[str, Any], label: str, file: Path) -> Front:
    """Points with ``name``, ``kind``, ``bytes`` and ``q`` (``quality`` also read), optional ``latency_ms``; the
    document's ``metric``, ``higher_is_better`` (default true) and ``front`` (the names on it)."""
    points = data["points"]
    if not isinstance(points, list) or not points:
        raise TorchSlimError(f"{file}: 'points' must be a non-empty list")
    parsed = []
    for i, p in enumerate(points):
        if not isinstance(p, dict) or "name" not in p or "bytes" not in p or ("q" not in p and "quality" not in p):
            raise TorchSlimError(f"{file}: points[{i}] needs name, bytes and q (quality)")
        parsed.append(Point(str(p["name"]), str(p.get("kind", "point")), _number(p["bytes"], f"points[{i}].bytes", file),
                            _number(p.get("q", p.get("quality")), f"points[{i}].q", file),
                            _number(p.get("latency_ms"), f"points[{i}].latency_ms", file, True)))
    names = data.get("front")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise TorchSlimError(f"{file}: 'front' must be a list of point names")
    return Front(label, str(data.get("metric", "quality")), bool(data.get("higher_is_better", True)), parsed,
                 front=names, notes=[f"machine: {data['machine']}"] if isinstance(data.get("machine"), str) else [])
