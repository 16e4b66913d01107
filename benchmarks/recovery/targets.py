"""Check the recovery targets (issues 11 and 19) against the measured tables (docs/results/recovery_*.json).

Writes docs/results/recovery_targets.md: each target, the measured figure, met or missed, and for a miss what
was tried. Run after the benchmarks (``make bench-recovery`` does).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, write_checks  # noqa: E402

RES = ROOT / "docs/results"
Check = tuple[str, str, bool | None, str]


def load(name: str) -> dict[str, dict]:
    path = RES / f"recovery_{name}.json"
    return {r["name"]: r for r in json.loads(path.read_text())} if path.exists() else {}


def _speed(v) -> float:
    return float(str(v).rstrip("x")) if v not in (None, "–") else float("nan")


def digits(d: dict[str, dict]) -> list[Check]:
    if not d:
        return [("digits-cnn tables", "missing", False, "run benchmarks/recovery/digits.py")]
    fp32 = d["fp32"]["top1 %"]
    t, b, w = d["ternary QAT"], d["binary QAT"], d["W4A4 QAT (LSQ)"]
    return [("digits-cnn ternary QAT >= 97% top-1", f"{t['top1 %']:.2f}% (PTQ {d['ternary PTQ']['top1 %']:.2f}%)",
             t["top1 %"] >= 97, ""),
            ("digits-cnn binary QAT >= 90% top-1", f"{b['top1 %']:.2f}% (PTQ {d['binary PTQ']['top1 %']:.2f}%)",
             b["top1 %"] >= 90, ""),
            ("digits-cnn W4A4 LSQ within 0.5 points of fp32", f"{w['top1 %']:.2f}% vs {fp32:.2f}%",
             fp32 - w["top1 %"] <= 0.5, "")]


def smollm2(d: dict[str, dict]) -> list[Check]:
    out: list[Check] = []
    base = d.get("fp32 (teacher)", {}).get("ppl")
    gptq, qat = d.get("int4 GPTQ g128"), d.get("int4 GPTQ g128 + QAT (KD)")
    if base and gptq and qat:
        closed = (gptq["ppl"] - qat["ppl"]) / (gptq["ppl"] - base)
        minutes = qat["train s"] / 60
        out.append(("SmolLM2 int4 g128: QAT/distillation closes >= 50% of GPTQ's gap (<= 25.1) in <= 30 min",
                    f"{gptq['ppl']:.2f} -> {qat['ppl']:.2f} ({closed:.0%} of the gap) in {minutes:.1f} min, "
                    f"{qat['steps']} steps", closed >= 0.5 and minutes <= 30,
                    "KD-only loss (the teacher's distribution), lr 1e-5 (not tuned), LSQ+ scales and offsets learned; "
                    "each step costs 20-40 s on 2 cores (fake quantization of every layer + teacher + full-vocabulary "
                    "KL), so 30 minutes allow 60-90 steps; this run shared the CPU"))
    else:
        out.append(("SmolLM2 int4 QAT", "missing", False, "run benchmarks/recovery/smollm2.py --parts int4"))
    kd, ft = d.get("structured 25% + distillation"), d.get("structured 25% + fine-tuning (control)")
    block = [r for n, r in d.items() if n.startswith("structured 25%") and "block-wise" in n]
    longer = [r for n, r in d.items() if re.fullmatch(r"structured 25%( \[[^]]+\])? \+ distillation \(\d+ steps\)", n)]
    base_pydoc = d.get("fp32 (teacher)", {}).get("ppl pydoc")

    def both(r: dict) -> float:          # the worse of the two texts' increases (the target holds on both)
        return max(r["ppl"] / base, r.get("ppl pydoc", float("inf")) / base_pydoc if base_pydoc else float("inf"))
    if base and kd and ft:
        timely = [r for r in [kd, *longer, *block] if r["train s"] <= 3600] or [kd]
        rec = min(timely, key=both)
        minutes = rec["train s"] / 60 + (sum(r["train s"] for r in block if r is not rec and r["name"] in
                                             rec["name"].replace(" + distillation", "")) / 60
                                         if "block-wise + " in rec["name"] else 0)
        routes = "; ".join(f"{r['name']}: {r['ppl']:.2f} ({r['ppl change']}), pydoc {r.get('pydoc change', '–')}, "
                           f"{r['train s'] / 60:.0f} min" for r in [kd, *longer, *block])
        out.append(("SmolLM2 25% structured: <= +30% perplexity after recovery in <= 60 min, on GPL-3 and on the "
                    "Python reference",
                    f"{rec['name']}: {rec['ppl']:.2f} ({rec['ppl change']}), Python reference "
                    f"{rec.get('pydoc change', '–')}, in {minutes:.1f} min; control "
                    f"fine-tuning {ft['ppl']:.2f} ({ft['ppl change']}); teacher KL {rec['teacher KL']:.3f} vs "
                    f"{ft['teacher KL']:.3f}", both(rec) <= 1.3 and minutes <= 60,
                    f"routes: {routes}. End-to-end distillation: logit KL + relative block MSE, batches of 4 x 512 "
                    "tokens, AdamW lr 2e-4, cosine; block-wise reconstruction of the kept weights on cached inputs (no "
                    "whole-model pass per step); fine-tuning's lower perplexity comes with adapting to the "
                    "evaluation's domain"))
    else:
        out.append(("SmolLM2 structured distillation", "missing", False, "run --parts structured"))
    recovered = [r for n, r in d.items() if n.startswith("W8A8 static") and " + " in n]
    if base and recovered:
        wq = min(recovered, key=lambda r: r["ppl"])
        start = d.get(wq["name"].split(" + ")[0].replace("W8A8 static", "W8A8 static SmoothQuant", 1)) or \
            d.get("W8A8 static SmoothQuant", {})
        before = f"{start['ppl']:.2f} ({start['ppl change']}) -> " if start else ""
        out.append(("SmolLM2 static W8A8 <= +2% after recovery",
                    f"{wq['name']}: {before}{wq['ppl']:.2f} ({wq['ppl change']}), Python reference "
                    f"{wq.get('pydoc change', '–')}, {wq['train s'] / 60:.0f} min", wq["ppl"] <= 1.02 * base,
                    "SmoothQuant (alpha 0.5), per-tensor static int8 activations, then block-wise reconstruction of "
                    "weights, weight scales and activation ranges (the w8a8-static-recover recipe)"))
    else:
        out.append(("SmolLM2 W8A8 recovery", "missing", False, "run --parts w8a8-block (or w8a8)"))
    bb, raw = d.get("structured 25% + black-box distillation"), d.get("structured 25% + raw-text fine-tuning (control)")
    if bb and raw:
        out.append(("black-box distillation beats the same tokens of raw text (held-out perplexity)",
                    f"GPL-3 {bb['ppl']:.2f} vs {raw['ppl']:.2f}, Python reference {bb.get('ppl pydoc', float('nan')):.2f} "
                    f"vs {raw.get('ppl pydoc', float('nan')):.2f} (teacher KL {bb['teacher KL']:.3f} vs "
                    f"{raw['teacher KL']:.3f})", bb["ppl"] < raw["ppl"],
                    "the raw text is license text, the evaluation's own domain; the teacher's generations are "
                    "sampled continuations (T=0.8, top-p 0.95) of 64 calibration prompts, each seen about 7 times "
                    "in 60 steps of 8 x 128 tokens: a 135M model's samples drift from the text it continues, so "
                    "the student learns the teacher's sampled style rather than its distribution on real text "
                    "(it loses on the second domain too)"))
    else:
        out.append(("black-box distillation", "missing", False, "run --parts blackbox"))
    return out


def _gap(base: float, compressed: float, recovered: float) -> float:
    return (compressed - recovered) / (compressed - base) if compressed > base else float("nan")


def smollm2_blockwise(d: dict[str, dict]) -> list[Check]:
    """Issue 19: block-wise reconstruction of int4 g128, on both texts, in the time budget; against Q4_K_M. Gaps are
    measured from the int4-gptq recipe's GPTQ (license calibration text), whatever text a route calibrated on."""
    base, gptq = d.get("fp32 (teacher)"), d.get("int4 GPTQ g128")
    rows = [r for n, r in d.items() if n.startswith("int4 ") and "block-wise" in n and "ppl pydoc" in r]
    if not (base and gptq and rows and "ppl pydoc" in gptq):
        return [("SmolLM2 int4 g128 block-wise reconstruction", "missing", False,
                 "run benchmarks/recovery/smollm2.py --parts int4-block")]

    def gaps(r: dict) -> tuple[float, float]:
        return _gap(base["ppl"], gptq["ppl"], r["ppl"]), _gap(base["ppl pydoc"], gptq["ppl pydoc"], r["ppl pydoc"])

    # the best on the worse of the two texts among the routes within the 30-minute budget (all when none is)
    timely = [r for r in rows if r["train s"] <= 30 * 60] or rows
    best = max(timely, key=lambda r: min(gaps(r)))
    g1, g2 = gaps(best)
    minutes = best["train s"] / 60
    routes = "; ".join(f"{r['name']}: {gaps(r)[0]:.0%} / {gaps(r)[1]:.0%} in {r['train s'] / 60:.0f} min"
                       for r in rows)
    tried = ("block-wise reconstruction (latent weights + LSQ+ step sizes/offsets per block, relative output MSE, "
             "AdamW with cosine decay) from GPTQ and from RTN, calibrated on the license text alone or on "
             f"mixed-calibration (license + standard-library docstrings); gap closed on GPL-3 / Python reference: "
             f"{routes}. License-only calibration fits GPL-3's domain and leaves the other; the mixed text trades "
             "some GPL-3 for the other domain; 16 -> 64 -> 128 -> 192 steps per block still lowers GPL-3 (figure "
             "recovery_smollm2_time.png; 192 steps fit 30 minutes on 2 threads), so more steps would help within a "
             "larger budget; a few blocks whose packed result came out no better were kept as they were. The quantization step "
             "before it (RTN: seconds; GPTQ: 3-13 minutes) is not in this time")
    checks = [("SmolLM2 int4 g128: recovery closes >= 60% of GPTQ's gap on GPL-3 and on the Python reference, <= 30 min",
               f"{best['name']}: GPL-3 {gptq['ppl']:.2f} -> {best['ppl']:.2f} ({g1:.0%}), Python reference "
               f"{gptq['ppl pydoc']:.2f} -> {best['ppl pydoc']:.2f} ({g2:.0%}), {minutes:.1f} min",
               g1 >= 0.6 and g2 >= 0.6 and minutes <= 30, tried)]
    best = min(rows, key=lambda r: r["ppl"])
    quality = {r["name"]: r for r in json.loads((RES / "speed_gguf_quality.json").read_text())} \
        if (RES / "speed_gguf_quality.json").exists() else {}
    q4km = quality.get("Q4_K_M llama-quantize")
    speed = json.loads((RES / "speed_smollm2.json").read_text()) if (RES / "speed_smollm2.json").exists() else {}
    speed = {r["name"]: r for r in speed} if isinstance(speed, list) else speed
    ours = next((v.get("artifact MiB") for k, v in speed.items() if k.startswith("int4") and "artifact MiB" in v), None)
    if q4km:
        size = (f"{ours:.1f} MiB, the int4-gptq layout (speed_smollm2.md)" if ours is not None else "size not measured")
        checks.append(("int4 g128 (torch int4 kernel) at <= the perplexity of llama.cpp's Q4_K_M (GPL-3), in a smaller file",
                       f"{best['name']}: {best['ppl']:.2f} ({size}) vs Q4_K_M {q4km['ppl GPL-3']:.2f} "
                       f"({q4km['file MiB']:.1f} MiB)",
                       best["ppl"] <= q4km["ppl GPL-3"] and ours is not None and ours < q4km["file MiB"], tried))
    return checks


def minilm(d: dict[str, dict]) -> list[Check]:
    def best(*names: str) -> dict | None:
        found = [d[n] for n in names if n in d]
        return max(found, key=lambda r: r["cosine fidelity"]) if found else None

    s = best("3-block student, distilled", "3-block student, block-wise + distilled", "3-block student, block-wise")
    n = best("40% structured, distilled", "40% structured, block-wise + distilled", "40% structured, block-wise")
    if not (s and n):
        return [("MiniLM tables", "missing", False, "run benchmarks/recovery/minilm.py")]
    return [("MiniLM 3-block student: fidelity >= 0.95 at >= 1.8x speed (32x128)",
             f"{s['name']}: {s['cosine fidelity']:.3f} at {s.get('32x128 speedup', '–')} (1x128 "
             f"{s.get('1x128 speedup', '–')})",
             s["cosine fidelity"] >= 0.95 and _speed(s.get("32x128 speedup")) >= 1.8,
             "embedding + block + relation losses on license + Python-reference sentences"
             + ("; block-wise reconstruction of each student block against the teacher's hidden state at its depth, "
                "alone and before distillation" if "3-block student, block-wise" in d else
                "; block-wise reconstruction (benchmarks/recovery/minilm.py has its rows) not yet measured")),
            ("MiniLM 40% structured: fidelity >= 0.95 after distillation",
             f"{n['name']}: {n['cosine fidelity']:.3f} (before: "
             f"{d['40% structured, no training']['cosine fidelity']:.3f})",
             n["cosine fidelity"] >= 0.95, "same losses and data")]


def main() -> None:
    checks = digits(load("digits")) + smollm2(load("smollm2")) + smollm2_blockwise(load("smollm2")) + \
        minilm(load("minilm"))
    write_checks(RES / "recovery_targets.md", "Recovery targets (issues 11 and 19)", checks)


if __name__ == "__main__":
    main()
