"""Runs fuzz cases in one process under a memory bound (RLIMIT_AS) and reports what each did.

    python _fuzz_worker.py cases.json results.json LIMIT_BYTES

Each case is ``{"id", "kind": "cli" | "load", "argv" | "path", "root", "allowed"}``; the result says the exit
code (2 for a TorchSlimError from ``load``), stderr, any traceback, the seconds taken, and every file under
``root`` created, changed or deleted outside ``allowed`` (the target folder).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file() or p.is_symlink():
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def outside(before: dict, after: dict, allowed: list[str]) -> list[str]:
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    return sorted(p for p in changed if not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed))


def run_case(case: dict) -> dict:
    import torchslim
    from torchslim.cli.main import main
    from torchslim.core.errors import TorchSlimError

    root = Path(case["root"])
    before = snapshot(root)
    err, out, code, tb = io.StringIO(), io.StringIO(), 0, ""
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            if case["kind"] == "cli":
                main(case["argv"])
            else:
                torchslim.load(case["path"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except TorchSlimError as e:
            code, err = 2, io.StringIO(f"error: {e}\n")
        except BaseException:  # noqa: BLE001 - what the fuzz test looks for
            code, tb = 99, traceback.format_exc()
    return {"id": case["id"], "code": code, "stderr": err.getvalue()[-2000:], "traceback": tb[-3000:],
            "seconds": time.perf_counter() - t0, "outside": outside(before, snapshot(root), case["allowed"])}


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.environ["TORCHSLIM_PROGRESS"] = "0"
    results = []
    for case in cases:
        results.append(run_case(case))
        Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
