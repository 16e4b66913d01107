"""What the PEFT benchmark's parts share: the results cache (one JSON, parts merged), the Markdown tables,
the two perplexity texts, the memory definition, and running one measurement in a fresh subprocess.

Peak memory (every "peak MB" figure): the process's resident high-water mark (Linux VmHWM, which is what
``getrusage``'s ru_maxrss reports for a process that did not inherit a larger one) over the training steps,
minus its resident memory just before the model was loaded. The high-water mark is reset (Linux
``/proc/self/clear_refs``) once the model is loaded and prepared, so one-off copies a loader makes do not count,
and the loader's own peak is reported beside it ("load peak MB"). Each figure comes from a fresh subprocess
that measures only that variant.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import _fmt, machine_line  # noqa: E402
from benchmarks.recovery.common_train import rss_mb  # noqa: E402,F401 - for worker.py

RES = ROOT / "docs/results"
OUT = RES / "peft_smollm2.md"
CACHE = OUT.with_suffix(".json")


def set_output(md: Path) -> None:
    """Write the tables (and their JSON cache) somewhere else, e.g. for a smoke run."""
    global OUT, CACHE
    OUT, CACHE = Path(md), Path(md).with_suffix(".json")
WORKER = Path(__file__).resolve().parent / "worker.py"
PYDOC_WINDOWS = 48      # as benchmarks/recovery/smollm2.py: the held-out quarter of Python's reference topics


# -- the two texts ----------------------------------------------------------------------------------------------
def eval_tasks(tokenizer: Any, windows: int | None = None) -> dict[str, Any]:
    """GPL-3 (the causal-LM task's evaluation text, 512-token windows) and the Python reference text (the
    held-out quarter, 48 windows), exactly as benchmarks/recovery/smollm2.py evaluates them; ``windows`` caps
    both (smoke runs only)."""
    from torchslim.data.text import pydoc_text
    from torchslim.tasks.causal_lm import CausalLMTask

    return {"ppl GPL-3": CausalLMTask(tokenizer, seq_len=512, max_eval_windows=windows),
            "ppl pydoc": CausalLMTask(tokenizer, seq_len=512, max_eval_windows=min(PYDOC_WINDOWS, windows or 1 << 30),
                                      eval_text=pydoc_text(True))}


def perplexities(model: Any, tokenizer: Any, windows: int | None = None) -> dict[str, float]:
    out = {}
    for name, task in eval_tasks(tokenizer, windows).items():
        t = time.perf_counter()
        out[name] = task.evaluate(model)["perplexity"]
        say(f"{name}: {out[name]:.3f} ({time.perf_counter() - t:.0f} s)")
    return out


def work_dir() -> Path:
    """Where bases made once (the int4 and the 25%-pruned SmolLM2) are kept between runs and parts."""
    root = Path(os.environ.get("TORCHSLIM_CACHE") or Path.home() / ".cache" / "torchslim").expanduser()
    return root / "bench-peft"


# -- memory -------------------------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's resident high-water mark (VmHWM; ``getrusage``'s ru_maxrss elsewhere). Not ru_maxrss on
    Linux: a process started by exec inherits the larger of its parent's peak there (the benchmark's parent holds
    models), and clear_refs does not lower it; VmHWM is this address space's own and is reset by clear_refs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_and_reset_peak() -> None:
    """Give freed heap back to the OS (glibc ``malloc_trim``), then restart the resident high-water mark."""
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# -- progress and subprocesses ------------------------------------------------------------------------------------
def say(msg: str) -> None:
    print(f"[peft-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_key(spec: dict[str, Any]) -> str:
    import hashlib

    same = {k: v for k, v in spec.items() if k != "label"}
    return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:16]


def run_worker(spec: dict[str, Any], timeout_s: float = 3600, reuse: bool = False) -> dict[str, Any]:
    """One measurement in a fresh Python (``worker.py``): progress goes to stderr, the result is stdout's last line.
    ``spec['env']``: environment variables for that process only (e.g. the allocator's). ``reuse``: a long run
    (training + evaluation) whose result is kept in the work folder under its spec, and not run again for the
    same spec (so a part re-run with one more variant only runs that one)."""
    saved = work_dir() / "runs" / f"{run_key(spec)}.json"
    if reuse and saved.is_file():
        say(f"reusing the measured run {saved.name}: {spec.get('label', spec)}")
        return json.loads(saved.read_text())["result"]
    say(f"subprocess: {spec.get('label', spec)}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           **spec.get("env", {})}
    proc = subprocess.run([sys.executable, str(WORKER), json.dumps(spec)], stdout=subprocess.PIPE, text=True,
                          timeout=timeout_s, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"error: worker failed ({proc.returncode}) for {spec.get('label')}: {proc.stdout[-2000:]}")
    result = json.loads(lines[-1])
    if reuse:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"spec": spec, "result": result, "date": time.strftime("%Y-%m-%d %H:%M"),
                                     "loadavg": os.getloadavg()}, indent=1))
    return result


# -- results cache and tables ---------------------------------------------------------------------------------------
def load_cache() -> dict[str, Any]:
    return json.loads(CACHE.read_text()) if CACHE.exists() else {}


def store_part(part: str, section: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """Merge one part's rows into the cache (other parts' rows are kept), stamped with load and machine."""
    cache = load_cache()
    section["meta"] = {"wall_s": round(wall_s, 1), "loadavg": [round(x, 2) for x in os.getloadavg()],
                       "machine": machine_line(), "date": time.strftime("%Y-%m-%d %H:%M")}
    cache[part] = section
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(cache, indent=1, default=str))
    return cache


def table(section: dict[str, Any]) -> list[str]:
    cols = section["columns"]
    lines = ["| variant | " + " | ".join(cols) + " | notes |", "|" + "---|" * (len(cols) + 2)]
    for r in section["rows"]:
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(r.get(c)) for c in cols) + f" | {r.get('note', '')} |")
    return lines


def write_markdown(cache: dict[str, Any], order: list[str], titles: dict[str, str], regen: str) -> None:
    lines = ["# Parameter-efficient fine-tuning on SmolLM2-135M (and MiniLM): torchslim against Hugging Face peft",
             "", "Each part is measured by `python benchmarks/peft/smollm2.py --parts PART` and merged here; its "
             "machine line, load average and run time are under its table. Peak memory (\"peak MB\"): the resident "
             "high-water mark over the training steps (VmHWM; getrusage's ru_maxrss would carry the parent "
             "process's larger peak into the subprocess) minus the resident memory just before the model was "
             "loaded, each variant in its own fresh subprocess; the high-water mark is reset once the model is "
             "loaded and prepared (so a loader's one-off copies are not counted; \"load peak MB\" shows them). "
             "Step times are medians of interleaved rounds in one process.", "",
             f"Machine (this regeneration): {machine_line()}", "", f"Regenerate: `{regen}`; check: "
             "`python benchmarks/peft/targets.py` (docs/results/peft_targets.md).", ""]
    for part in order:
        lines += [f"## {part}: {titles[part]}", ""]
        sec = cache.get(part)
        if sec is None:
            lines += ["Not measured yet.", ""]
            continue
        if sec.get("intro"):
            lines += [sec["intro"], ""]
        lines += table(sec) + [""]
        meta = sec.get("meta", {})
        notes = list(sec.get("notes", [])) + [
            f"Measured {meta.get('date')} on {meta.get('machine')}; part took {meta.get('wall_s')} s; load "
            f"average (1/5/15 min) at its end {meta.get('loadavg')} on a machine shared with other jobs."]
        lines += [f"- {n}" for n in notes] + [""]
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(OUT)
