"""Check issue 4's targets against the measured pruning tables (docs/results/pruning_*.json).

Writes docs/results/pruning_targets.md: each target, the measured figure, met or missed, and for a
miss what was tried. Run after the benchmarks (``make bench-prune`` does).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT  # noqa: E402

RES = ROOT / "docs/results"
Check = tuple[str, str, bool, str]


def load(name: str) -> dict[str, dict]:
    path = RES / f"pruning_{name}.json"
    return {r["name"]: r for r in json.loads(path.read_text())} if path.exists() else {}


def speed(text) -> float:
    return float(str(text).rstrip("x")) if text not in (None, "–") else float("nan")


def missing(table: str, script: str) -> list[Check]:
    return [(f"{table} table", "missing", False, f"run benchmarks/pruning/{script}")]


def digits_checks(d: dict[str, dict]) -> list[Check]:
    base = next((v for k, v in d.items() if k.startswith("fp32")), None)
    ours = d.get("torchslim: L2 magnitude, layer scope")
    tp = d.get("Torch-Pruning 1.6.1: GroupMagnitude p=2, layer")
    if not (base and ours and tp):
        return missing("digits-cnn", "digits.py")
    best = max((v for k, v in d.items() if k.startswith("torchslim") and v.get("MAC ratio", 1) <= 0.5),
               key=lambda v: v["top1 % after FT"])
    drop = base["top1 % after FT"] - best["top1 % after FT"]
    out = [("digits-cnn structured: MACs <= 0.5x", f"{best['name']}: {best['MAC ratio']:.3f}x",
            best["MAC ratio"] <= 0.5, ""),
           ("digits-cnn: accuracy drop <= 0.3 points after recovery", f"{best['name']}: "
            f"{base['top1 % after FT']:.2f}% -> {best['top1 % after FT']:.2f}% ({-drop:+.2f} points)", drop <= 0.3, ""),
           ("digits-cnn: accuracy >= Torch-Pruning at the same MAC budget", f"{ours['top1 % after FT']:.2f}% vs "
            f"{tp['top1 % after FT']:.2f}% (same importance, same channels); best torchslim {best['top1 % after FT']:.2f}%",
            ours["top1 % after FT"] >= tp["top1 % after FT"], "")]
    for b in ("1", "256"):
        eff = ours.get(f"b{b} speedup / MAC reduction")
        if eff is None:
            continue
        out.append((f"digits-cnn: latency speedup >= 75% of the MAC reduction at batch {b}",
                    f"{ours['name']}: {ours[f'batch {b} speedup']} for {1 / ours['MAC ratio']:.2f}x fewer MACs "
                    f"= {100 * eff:.0f}%", eff >= 0.75,
                    "8x8 inputs: per-op overhead dominates (90% of channels removed still gives ~1.4x at batch 1); "
                    "BN folding, channels-last, round_to=8, global scope, Taylor tried (see the digits table)"))
    return out


def unstructured_checks(u: dict[str, dict]) -> list[Check]:
    if "dense fp32" not in u:
        return missing("SmolLM2 unstructured", "llm_unstructured.py")
    base = u["dense fp32"]["perplexity"]
    pct = {k: 100 * (v["perplexity"] / base - 1) for k, v in u.items() if "perplexity" in v}
    mag = pct.get("50% magnitude", float("nan"))
    out = []
    for name in ("50% SparseGPT", "50% Wanda"):
        if name in pct:
            ok = pct[name] <= 35 and pct[name] < 0.5 * mag
            out.append((f"SmolLM2 {name}: <= +35% ppl and far better than magnitude",
                        f"{pct[name]:+.1f}% (magnitude {mag:+.1f}%)", ok,
                        "" if ok else "one-shot, 128 x 512-token calibration windows, sequential blocks"))
    for name in ("2:4 magnitude", "2:4 Wanda", "2:4 SparseGPT"):
        if name in pct:
            out.append((f"SmolLM2 {name} reported", f"{pct[name]:+.1f}%", True, ""))
    sizes = [(k, u[k]["size ratio"]) for k in ("50% magnitude", "75% magnitude", "90% magnitude", "2:4 magnitude")
             if k in u and "size ratio" in u[k]]
    if sizes:
        shrinks = [s for _, s in sizes[:3]] == sorted((s for _, s in sizes[:3]), reverse=True)
        out.append(("artifact size shrinks with sparsity (50/75/90%, 2:4)",
                    ", ".join(f"{k}: {s:.3f}x" for k, s in sizes), shrinks, ""))
    return out


def structured_checks(s: dict[str, dict]) -> list[Check]:
    out = []
    for model in ("tiny-llama", "smollm2-135m"):
        rows = {k.split(": ", 1)[1]: v for k, v in s.items() if k.startswith(model + ": ")}
        if not rows:
            out += missing(f"{model} structured", "llm_structured.py")
            continue
        control = next((v for k, v in rows.items() if "control" in k), None)
        for label, rec in rows.items():
            one = rows.get(label.split(" + ")[0])
            if "recovery" not in label or one is None:
                continue
            ok = "same greedy tokens" in rec.get("note", "") and rec.get("decode speedup") not in (None, "–")
            ref = f"unpruned {rows['unpruned']['ppl']:.4g}" + (f", fine-tuned control {control['ppl']:.4g}"
                                                                if control else "")
            out.append((f"{model} structured: ppl before/after recovery, reload + generate, decode speed",
                        f"{label}: ppl {one['ppl']:.4g} -> {rec['ppl']:.4g} ({ref}); {rec.get('note', '')}; "
                        f"decode {rec.get('decode speedup')}", ok, ""))
    return out


def minilm_checks(m: dict[str, dict]) -> list[Check]:
    rec = next((v for k, v in m.items() if "recovery" in k), None)
    if not rec:
        return missing("MiniLM structured", "minilm.py")
    ok = all(rec.get(f"{s} speedup") not in (None, "–") for s in ("1x128", "32x128"))
    return [("MiniLM structured 40%: fidelity and latency at batch 1 and 32",
             f"{rec['name']}: cosine {rec['cosine fidelity']:.4f}, {rec.get('1x128 speedup')} at 1x128, "
             f"{rec.get('32x128 speedup')} at 32x128", ok, "")]


def main() -> None:
    rows = (digits_checks(load("digits")) + unstructured_checks(load("llm_unstructured"))
            + structured_checks(load("llm_structured")) + minilm_checks(load("minilm")))
    lines = ["# Pruning targets (issue 4), checked against the measured tables", "",
             "Generated by `python benchmarks/pruning/targets.py` from docs/results/pruning_*.json.", "",
             "| target | measured | met | tried (for a miss) |", "|---|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**MISSED**'} | {'' if ok else tried} |" for t, m, ok, tried in rows]
    lines += ["", "- 2:4 semi-structured speed on a GPU: **not measured**; no GPU was lent to this task (the "
              "`semi_structured` kernel path exists and falls back to dense elsewhere).", ""]
    (RES / "pruning_targets.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
