"""The run state of an interrupted recipe run (``<out>/.torchslim-run/run.json``), validated like a manifest.

Sizes, types and ranges are checked against the recipe being resumed: ``completed`` and ``checkpoint`` are
stage indices of that recipe (never a boolean, never beyond its last stage, never below -1), the rows
are what the runner writes, and the stage checkpoint's manifest has the SHA-256 recorded when it was
written (its manifest in turn hashes its weights). A state that fails any check raises
:class:`~torchslim.core.errors.ArtifactError` naming the field; the runner then warns in one line and
falls back to the first stage, the last stage it can trust (only the newest checkpoint is kept).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from torchslim.core.errors import ArtifactError, first_line

RUN_FORMAT = "torchslim-run"
MAX_BYTES = 16 << 20
_SHA = re.compile(r"[0-9a-f]{64}")
_ROW_KEYS = {"index": int, "stage": str, "seconds": (int, float), "changed": str}


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _expect(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise ArtifactError(f"{path}: bad run state: {what}")


def read(path: Path) -> Any:
    """The parsed ``run.json`` (bounded size; deep nesting and bad text are one error)."""
    try:
        if path.is_symlink() or not path.is_file():
            raise ArtifactError(f"{path}: bad run state: not a regular file")
        if path.stat().st_size > MAX_BYTES:
            raise ArtifactError(f"{path}: bad run state: larger than {MAX_BYTES >> 20} MB")
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{path}: unreadable run state ({first_line(e)})") from None


def _check_row(row: Any, path: Path, i: int) -> None:
    _expect(isinstance(row, dict), path, f"rows[{i}] is not a mapping")
    for key, kind in _ROW_KEYS.items():
        _expect(isinstance(row.get(key), kind) and not isinstance(row.get(key), bool), path,
                f"rows[{i}].{key} is missing or of the wrong type")
    for key in ("params", "memory_bytes"):
        _expect(row.get(key) is None or (_int(row[key]) and row[key] >= 0), path, f"rows[{i}].{key} is not a count")
    metrics = row.get("metrics", {})
    _expect(isinstance(metrics, dict) and all(isinstance(k, str) and isinstance(v, (int, float))
                                              and not isinstance(v, bool) for k, v in metrics.items()),
            path, f"rows[{i}].metrics must map names to numbers")


def check(st: Any, path: Path, n_stages: int) -> dict[str, Any]:
    """``st`` if it is a run state a recipe of ``n_stages`` stages can resume from; else an ArtifactError."""
    _expect(isinstance(st, dict) and st.get("format") == RUN_FORMAT, path, "not a torchslim run state")
    for key in ("recipe_name", "model"):
        _expect(isinstance(st.get(key), str) and len(st[key]) <= 4096, path, f"'{key}' must be a string")
    _expect(isinstance(st.get("fingerprint"), str) and _SHA.fullmatch(st["fingerprint"]) is not None, path,
            "'fingerprint' must be 64 hex digits")
    data = st.get("data", {})
    _expect(isinstance(data, dict) and all(isinstance(k, str) and (v is None or isinstance(v, (str, int)))
                                           for k, v in data.items()), path, "'data' must map names to values")
    done = st.get("completed")
    _expect(_int(done) and -1 <= done < n_stages, path,
            f"'completed' must be a stage index from -1 to {n_stages - 1}, got {str(done)[:40]}")
    ck = st.get("checkpoint")
    _expect(ck is None or (_int(ck) and 0 <= ck <= done), path,
            f"'checkpoint' must be null or a completed stage index (0 to {done}), got {str(ck)[:40]}")
    if ck is not None:
        _expect(isinstance(st.get("checkpoint_sha256"), str) and _SHA.fullmatch(st["checkpoint_sha256"]) is not None,
                path, "'checkpoint_sha256' must be 64 hex digits")
    running = st.get("running")
    _expect(running is None or (_int(running) and 0 <= running < n_stages), path, "'running' is not a stage index")
    rows = st.get("rows")
    _expect(isinstance(rows, list) and len(rows) <= n_stages + 1, path,
            f"'rows' must be a list of at most {n_stages + 1} stage rows")
    for i, row in enumerate(rows):
        _check_row(row, path, i)
    return st


def checkpoint_hash(folder: Path) -> str:
    """The SHA-256 of a stage checkpoint's manifest (which records its weights' SHA-256)."""
    from torchslim.core.io import sha256

    return sha256(folder / "manifest.json")
