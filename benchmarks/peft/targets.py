"""Check issue 20's targets against the measured tables (docs/results/peft_smollm2.json).

Writes docs/results/peft_targets.md: each target, the measured figure, met or missed, and for a miss what was
tried (or which part to run). Run after the benchmark (``make bench-peft`` does).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import write_checks  # noqa: E402
from benchmarks.peft.harness import CACHE, RES  # noqa: E402

Check = tuple[str, str, bool | None, str]


def _x(v: Any) -> float:
    return float(str(v).rstrip("x"))


def _missing(target: str, part: str) -> Check:
    return (target, "not measured", False, f"run benchmarks/peft/smollm2.py --parts {part}")


def params(sec: dict[str, Any] | None) -> list[Check]:
    target = "trainable-parameter counts equal peft's (LoRA, IA3, prompt tuning; MiniLM and SmolLM2)"
    if not sec:
        return [_missing(target, "params")]
    rows = sec["rows"]
    measured = [r for r in rows if r.get("torchslim trainable") is not None]
    unequal = [r for r in measured if r["torchslim trainable"] != r["peft trainable"]]
    unmeasured = [r for r in rows if r.get("torchslim trainable") is None]
    got = "; ".join(f"{r['name']}: {r['torchslim trainable']:,} vs {r['peft trainable']:,}" for r in measured)
    if unmeasured:
        got += "; not measured: " + ", ".join(f"{r['name']} ({r.get('note', '')})" for r in unmeasured)
    tried = "; ".join(([f"unequal: {', '.join(r['name'] for r in unequal)}"] if unequal else []) +
                      (["the methods without a torchslim count are not built yet"] if unmeasured else []))
    return [(target, got, not unequal and not unmeasured, tried)]


def speed(sec: dict[str, Any] | None) -> list[Check]:
    target = "LoRA step time and peak memory no worse than peft's (SmolLM2, same batch and sequence, side by side)"
    if not sec:
        return [_missing(target, "speed")]
    out = []
    for r in sec["rows"]:
        t, m = _x(r["time ratio"]), _x(r["memory ratio"])
        mm = _x(r["memory ratio, 1 MiB mmap"]) if "memory ratio, 1 MiB mmap" in r else None
        fixed = (f"; 1 MiB mmap threshold {r['torchslim peak MB, 1 MiB mmap']:.0f} vs "
                 f"{r['peft peak MB, 1 MiB mmap']:.0f} MB ({r['memory ratio, 1 MiB mmap']})") if mm is not None else ""
        out.append((f"{target}: {r['name']}", f"time {r['torchslim s/step']:.2f} vs {r['peft s/step']:.2f} s/step "
                    f"({r['time ratio']}); peak {r['torchslim peak MB']:.0f} vs {r['peft peak MB']:.0f} MB "
                    f"({r['memory ratio']}, medians, default allocator){fixed}; {r['note']}",
                    t <= 1.0 and m <= 1.0 and (mm is None or mm <= 1.0),
                    "time: interleaved medians on a shared CPU; memory: medians of fresh subprocesses, both allocator "
                    "settings must pass. The step is the same hand-written code for both libraries and the branch "
                    "computes what peft's layer does (s * B(A(x)) added to the base output, from a forward hook "
                    "rather than a wrapping module), so a difference within the runs' spread is the allocator's"))
    return out


def qlora(sec: dict[str, Any] | None) -> list[Check]:
    target = "QLoRA on the int4 base: peak training memory <= 0.5x LoRA on the fp32 base"
    if not sec:
        return [_missing(target, "qlora")]
    rows = {r["name"]: r for r in sec["rows"]}
    ref = rows["LoRA, fp32 base"]
    q = rows["QLoRA, int4 base, gradient checkpointing"]
    others = "; ".join(f"{n}: {r['peak MB']:.0f} MB ({r['vs LoRA fp32']})" for n, r in rows.items()
                       if n not in ("LoRA, fp32 base", "QLoRA, int4 base, gradient checkpointing"))
    trimmed = (f"; with a 1 MiB mmap threshold (freed large blocks returned to the OS) {q['peak MB, 1 MiB mmap']:.0f}"
               f" vs {ref['peak MB, 1 MiB mmap']:.0f} MB = {q['vs LoRA fp32, 1 MiB mmap']}")
    spread = f" (medians; runs {q['runs']} vs {ref['runs']} MB)" if q.get("runs") else ""
    ok = _x(q["vs LoRA fp32"]) <= 0.5 and _x(q["vs LoRA fp32, 1 MiB mmap"]) <= 0.5
    return [(target, f"glibc default allocator: {q['peak MB']:.0f} MB vs {ref['peak MB']:.0f} MB = {q['vs LoRA fp32']}"
             f"{spread}"
             f"{trimmed} (also {others})", ok,
             "int4 RTN g128 base loaded from a torchslim artifact, LoRA r=16 on every block linear, gradient "
             "checkpointing on, frozen packed layers (no dense weight kept for backward); both allocator settings "
             "must pass")]


def structured(sec: dict[str, Any] | None) -> list[Check]:
    target = ("after 25% structured pruning, LoRA recovery with <= 2% trainable reaches full fine-tuning's "
              "quality at equal steps, on GPL-3 and on the Python reference")
    if not sec:
        return [_missing(target, "structured")]
    loras = [r for r in sec["rows"] if r["name"].startswith("+ LoRA")]
    lora = next(r for r in loras if "extra" not in r["note"])       # the row fixed before the run
    extras = [r for r in loras if r is not lora]
    fts = [r for r in sec["rows"] if r["name"].startswith("+ full")]
    if not fts:
        return [_missing(target, "structured")]
    ft = min(fts, key=lambda r: r["ppl GPL-3"] + r["ppl pydoc"])       # the best full fine-tuning run measured
    ok = lora["trainable %"] <= 2.0 and lora["ppl GPL-3"] <= ft["ppl GPL-3"] and lora["ppl pydoc"] <= ft["ppl pydoc"]
    one = next(r for r in sec["rows"] if "one-shot" in r["name"])
    got = (f"LoRA ({lora['trainable %']:.2f}% trainable, {lora['note'].split(';')[0]}): GPL-3 {lora['ppl GPL-3']:.2f}, "
           f"pydoc {lora['ppl pydoc']:.2f}; best full FT ({ft['note'].split(',')[0]}): GPL-3 {ft['ppl GPL-3']:.2f}, "
           f"pydoc {ft['ppl pydoc']:.2f}; one-shot {one['ppl GPL-3']:.2f} / {one['ppl pydoc']:.2f}; "
           f"{lora['steps']} steps each")
    tried = ("learning rates fixed before the run (LoRA 1e-3, full FT 5e-5 and 2e-4, the best full FT compared), "
             "not tuned on the evaluation texts; LoRA r=8 on all 7 block linears (r=16 would exceed 2%)")
    if extras:
        tried += "; also measured, not counted (an extra learning rate): " + "; ".join(
            f"LoRA {r['note'].split(' (')[0].replace('AdamW ', '')}: GPL-3 {r['ppl GPL-3']:.2f}, pydoc "
            f"{r['ppl pydoc']:.2f}" for r in extras)
    return [(target, got, ok, tried)]


def interop(sec: dict[str, Any] | None) -> list[Check]:
    target = "a torchslim adapter loads in peft, and a peft adapter in torchslim, outputs within 1e-5"
    if not sec:
        return [_missing(target, "interop")]
    worst = max(sec["rows"], key=lambda r: r["max abs diff"])
    weak = min(r["adapter effect"] for r in sec["rows"])
    notes = "".join(f"; {n}" for n in sec.get("notes", []))
    got = (f"{len(sec['rows'])} directions x models, worst {worst['max abs diff']:.1e} ({worst['name']}); every "
           f"adapter moved the outputs by >= {weak:.2g}; LoRA, IA3, prompt and prefix tuning{notes}")
    return [(target, got, worst["max abs diff"] <= 1e-5 and weak > 1e-3, "")]


def optim(sec: dict[str, Any] | None) -> list[Check]:
    target = "Lion against AdamW and bf16 against fp32 on the same recovery task: time, memory, quality in one table"
    if not sec:
        return [_missing(target, "optim")]
    got = "; ".join(f"{r['name']}: {r['s/step']:.2f} s/step ({r['vs AdamW fp32']}), {r['peak MB']:.0f} MB, "
                    f"ppl {r['ppl GPL-3']:.2f} / {r['ppl pydoc']:.2f}" for r in sec["rows"])
    return [(target, got, len(sec["rows"]) == 3, "")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", type=Path, default=CACHE, help="the benchmark's JSON (peft_targets.md goes beside it)")
    args = ap.parse_args()
    d = json.loads(args.results.read_text()) if args.results.exists() else {}
    checks = params(d.get("params")) + speed(d.get("speed")) + qlora(d.get("qlora")) + \
        structured(d.get("structured")) + interop(d.get("interop")) + optim(d.get("optim"))
    out = RES / "peft_targets.md" if args.results == CACHE else args.results.parent / "peft_targets.md"
    write_checks(out, "PEFT targets (issue 20)", checks)


if __name__ == "__main__":
    main()
