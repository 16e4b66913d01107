"""What every fuzz test shares: run cases in the capped worker, and the checks every case must pass (exit 0, or
exit 2 with exactly one ``error:`` line; no traceback; no file touched outside the target)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("_fuzz_worker.py")
LIMIT = 4 << 30            # address space of the worker: a few GB, far below any "allocate 160 GB" attack


def run_worker(tmp_path: Path, cases: list[dict], timeout: float, stdin: str | None = None) -> list[dict]:
    """Each case's result from one worker process (asserting it ran them all)."""
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "cases.json"), str(tmp_path / "results.json"),
                           str(LIMIT)], capture_output=True, text=True, timeout=timeout, input=stdin)
    results = json.loads((tmp_path / "results.json").read_text()) if (tmp_path / "results.json").exists() else []
    assert proc.returncode == 0 and len(results) == len(cases), (proc.stderr[-3000:], len(results))
    return results


def error_lines(r: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """The case's stderr lines that are neither blank, warnings, progress lines (``[torchslim] ...``, what a
    command is doing), nor containing one of ``ignore``."""
    return [ln for ln in r["stderr"].splitlines() if ln.strip() and not ln.startswith(("warning: ", "[torchslim] "))
            and not any(s in ln for s in ignore)]


def clean_exit(case: dict, r: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Problems every case is checked for: a crash or traceback, an exit 2 without exactly one error line, a file
    touched outside the target."""
    problems = []
    lines = error_lines(r, ignore)
    if r["code"] not in (0, 2) or r["traceback"]:
        problems.append(f"{case['id']}: exit {r['code']}\n{r['traceback'] or r['stderr']}")
    elif r["code"] == 2 and not (len(lines) == 1 and lines[0].startswith("error:")):
        problems.append(f"{case['id']}: not one error line: {r['stderr'][:500]}")
    if r["outside"]:
        problems.append(f"{case['id']}: touched files outside the target: {r['outside'][:3]}")
    return problems


def one_error(r: dict, ignore: tuple[str, ...] = ()) -> str | None:
    """The one ``error:`` line of a clean exit 2, else None."""
    lines = error_lines(r, ignore)
    ok = r["code"] == 2 and not r["traceback"] and len(lines) == 1 and lines[0].startswith("error:")
    return lines[0] if ok else None
