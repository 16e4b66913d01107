"""Run a child process under a memory cap and read its peak resident set.

The cap is a cgroup (v1 ``memory`` controller, or v2 ``memory.max``) when this process may create one (root on a
machine that has the controller): the kernel then kills the child if its memory goes over, so "completed" means
"stayed under". Otherwise the child runs uncapped and only its measured peak (``VmHWM``) is checked against the cap;
the result says which of the two happened.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


def _make_cgroup(cap: int) -> tuple[Path | None, str]:
    name = f"torchslim-bench-{os.getpid()}"
    try:
        if (V1 / "memory.limit_in_bytes").is_file():
            cg = V1 / name
            cg.mkdir(exist_ok=True)
            (cg / "memory.limit_in_bytes").write_text(str(cap))
            if (cg / "memory.memsw.limit_in_bytes").is_file():
                (cg / "memory.memsw.limit_in_bytes").write_text(str(cap))
            return cg, "cgroup v1 memory.limit_in_bytes"
        if (V2 / "cgroup.controllers").is_file() and "memory" in (V2 / "cgroup.controllers").read_text():
            cg = V2 / name
            cg.mkdir(exist_ok=True)
            (cg / "memory.max").write_text(str(cap))
            (cg / "memory.swap.max").write_text("0")
            return cg, "cgroup v2 memory.max"
    except OSError as e:
        return None, f"no cgroup ({e.strerror or e}): peak RSS checked against the cap instead"
    return None, "no memory cgroup controller: peak RSS checked against the cap instead"


def run_capped(args: list[str], cap: int | None, env: dict[str, str] | None = None,
               timeout: int = 3600) -> dict:
    """Run ``python args...`` (which prints one JSON line last) under ``cap`` bytes; its JSON plus how it was capped
    and whether it completed."""
    cg, how = _make_cgroup(cap) if cap is not None else (None, "uncapped")

    def enter() -> None:
        os.nice(10)
        if cg is not None:
            (cg / "cgroup.procs").write_text(str(os.getpid()))

    try:
        res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                             preexec_fn=enter)
        oom = ""
        if cg is not None and (cg / "memory.failcnt").is_file():
            oom = f", limit hit {(cg / 'memory.failcnt').read_text().strip()} times (page cache reclaimed)"
    finally:
        if cg is not None:
            try:
                cg.rmdir()
            except OSError:
                pass
    out = {"capped_by": how + (oom if cap is not None else ""), "cap": cap, "returncode": res.returncode}
    if res.returncode != 0:
        out["error"] = (res.stderr or "")[-1500:]
        return out
    out.update(json.loads(res.stdout.strip().splitlines()[-1]))
    return out
