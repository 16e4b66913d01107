"""Check the scale targets (issue 24, onloading parts) against docs/results/scale_llama2gb_runs.json and scale_smollm2_runs.json.

Writes docs/results/scale_targets.md: each target, the measured figure, met or missed. Run after the benchmarks
(``make bench-scale`` does).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, write_checks  # noqa: E402

RES = ROOT / "docs/results"


def _load(name: str) -> dict:
    p = RES / name
    return json.loads(p.read_text()) if p.is_file() else {}


def checks() -> list[tuple[str, str, bool | None, str]]:
    out = []
    big = _load("scale_llama2gb_runs.json")
    cap, size = big.get("cap"), big.get("model_bytes")
    for method, label in (("gptq", "GPTQ int4"), ("wanda", "Wanda 50%")):
        runs = {r["mode"]: r for r in big.get("runs", []) if r.get("method") == method and "mode" in r}
        onl, mem = runs.get("onload"), runs.get("memory")
        if not (onl and mem and cap and size):
            out.append((f"2 GB Llama, {label} under the cap, bit-identical", "not measured", False,
                        "not run yet: GPTQ on 76 blocks takes tens of minutes on 2 shared cores; "
                        f"`python benchmarks/scale/llama2gb.py --methods {method}`"))
            continue
        same = onl.get("sha256") == mem.get("sha256")
        under = onl["peak_rss"] <= cap
        out.append((f"{size / 1e9:.2f} GB float32 Llama ({size / cap:.1f}x the cap), {label} completes under "
                    f"{cap / 1e6:.0f} MB, output bit-identical to in-memory",
                    f"peak RSS {onl['peak_rss'] / 1e6:.0f} MB ({onl['capped_by']}), {onl['seconds']:.0f} s; in memory "
                    f"{mem['peak_rss'] / 1e6:.0f} MB; weights file {'identical' if same else 'DIFFERENT'}",
                    bool(same and under and size >= 3 * cap),
                    "ran to completion inside the kernel-enforced memory cgroup, whose limit was never hit, yet the "
                    "stricter VmHWM is above the cap: the two count memory differently (VmHWM includes file-backed "
                    "pages such as libraries); judged by VmHWM. Packing codes in bytes (no int32/int64 widening) "
                    "took the GPTQ peak from 784 to 702 MB; what is left is each block's Hessians and working "
                    "copies beside the block, and about 400 MB of imports, 11 of them torchao's, a benchmark-only "
                    "peer that transformers imports when it is installed" if same and not under else
                    "kernel-enforced cap where a cgroup can be made"))
    s = _load("scale_smollm2_runs.json")
    if s.get("median"):
        med = s["median"]
        out.append(("SmolLM2-135M GPTQ int4 onloaded: peak RSS <= 0.4x in memory",
                    f"{s['rss_ratio']:.2f}x ({med['onload']['peak_rss'] / 1e6:.0f} vs {med['memory']['peak_rss'] / 1e6:.0f} "
                    f"MB); above the imports: {s['rss_above_imports_ratio']:.2f}x",
                    s["rss_ratio"] <= 0.4, "GPTQ solves tall layers 4096 rows at a time, and packing codes no longer "
                    "widens them to int32/int64 (that transient, 400 MB on the 49152-row head, was the peak: found "
                    "by sampling RSS with the stack); both runs dropped (in memory 1819 -> 1230 MB). Onloading "
                    "then maps every freed block of 1 MiB or more straight back to the system (bounded_heap: "
                    "glibc's default had served activations from the heap, where dead ones stayed resident): "
                    "onloaded 869 -> about 740 MB (the in-memory run under the same policy: "
                    + (f"{med['memory-bounded']['peak_rss'] / 1e6:.0f} MB" if "memory-bounded" in med else "not run")
                    + "). What is left: about 400 MB of torch/transformers imports that both runs hold (0.4x of the "
                    "in-memory run is barely above them; about 150 MB of them are torchao and the sympy and scipy it "
                    "loads, a benchmark-only peer that transformers' quantizer module imports whenever it is "
                    "installed: without it the imports hold about 260 MB), the resident tied embedding (113 MB) and "
                    "the tokenizer (about 40 MB)"))
        out.append(("SmolLM2-135M GPTQ int4 onloaded: time <= 1.3x in memory",
                    f"{s['time_ratio']:.2f}x ({med['onload']['seconds']:.0f} vs {med['memory']['seconds']:.0f} s), "
                    f"weights {'identical' if s['identical'] else 'DIFFERENT'}; interleaved rounds on a machine shared "
                    "with other jobs: onloading itself adds about 1.2 s of block reads and writes and the final merge; the "
                    "heap policy adds page faults (about 30,000 maps of freed blocks per run, mostly GPTQ's working "
                    "copies)" + (f": in memory under it {med['memory-bounded']['seconds']:.0f} s"
                                 if "memory-bounded" in med else ""), s["time_ratio"] <= 1.3,
                    f"medians of {s.get('rounds')} alternating rounds, {s.get('n_samples')} calibration windows"))
    else:
        out.append(("SmolLM2-135M onloaded vs in memory", "missing", False, "run benchmarks/scale/smollm2.py"))
    return out + fsdp_checks()


def fsdp_checks() -> list[tuple[str, str, bool | None, str]]:
    """FSDP with 2 processes against 1 (loss curves), and kill -9 of a 2-process run resumed on 1 process."""
    d = _load("scale_fsdp.json")
    if not d:
        return [("FSDP: 2 processes give 1 process's loss curve; a 2-process checkpoint resumes on 1", "not measured",
                 False, "run benchmarks/scale/fsdp.py")]
    one, two = d["curves"]["1 process"], d["curves"]["2 x FSDP"]
    gap = max(abs(a - b) / abs(b) for a, b in zip(two, one))
    kill = d["kill"]
    start = kill["resumed"]["resumed_from"]
    after = kill["resumed"]["losses"][start:]
    kgap = max(abs(a - b) / abs(b) for a, b in zip(after, one[start:])) if after else float("inf")
    return [("FSDP with 2 processes on CPU gives the same loss curve as 1 process (distillation stage)",
             f"{len(one)} steps, largest relative loss difference {gap:.1e}", gap <= 1e-4,
             "gloo, fully_shard per block and root"),
            ("kill -9 during 2-process FSDP training resumes on 1 process from the 2-process checkpoint",
             f"killed after {', '.join(kill['checkpoints_at_kill'])}; 1 process resumed from step {start}: largest "
             f"relative loss difference to the uninterrupted run {kgap:.1e}", bool(after) and kgap <= 1e-4,
             "whole-tensor checkpoints gathered on rank 0")]


if __name__ == "__main__":
    write_checks(RES / "scale_targets.md", "Scale targets (issue 24: onloading, block streaming, FSDP)", checks())
