"""Check the low-rank targets (issue 21) against the measured table (docs/results/lowrank_smollm2.json).

Writes docs/results/lowrank_targets.md: each target, the measured figure, met or missed, and for a miss what was
tried. Run after the benchmark (``make bench-lowrank`` does).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, write_checks  # noqa: E402

RES = ROOT / "docs/results"
MINILM = RES / "lowrank_minilm.json"
Check = tuple[str, str, bool | None, str]


def _rows(data: dict) -> dict[str, dict]:
    return {r["name"]: r for r in data.get("rows", [])}


def checks(data: dict) -> list[Check]:
    if not data:
        return [("SmolLM2-135M low-rank table", "missing", False, "run benchmarks/lowrank/smollm2.py")]
    rows, pct = _rows(data), f"{data['ratio']:.0%}"
    base = rows.get("fp32 (dense)", {}).get("ppl")
    out: list[Check] = []
    w, svd = rows.get(f"whitened SVD {pct}"), rows.get(f"plain SVD {pct}")
    glob = rows.get(f"whitened SVD, global allocation {pct}")
    if base and w:
        best = min([r for r in (w, glob) if r], key=lambda r: r["ppl"])
        also = f"; plain SVD {svd['ppl']:.2f} ({svd['ppl change']})" if svd else ""
        out.append((f"{data['model']}, {pct} of linear weights removed, training-free (whitened): <= +30% perplexity",
                    f"{best['ppl']:.2f} ({best['ppl change']}, {best['name']}) vs {base:.2f}{also}",
                    best["ppl"] <= 1.3 * base,
                    "whitened SVD (SVD-LLM truncation) with the same share cut from every layer and with one global "
                    "threshold on kept energy per weight; ASVD in the same table; 128 calibration windows"))
    else:
        out.append(("training-free whitened factorization", "missing", False, "run --parts free"))
    d = rows.get(f"whitened SVD {pct} + distillation")
    if base and d:
        out.append((f"{data['model']}, {pct} removed, after distillation: <= +15% perplexity",
                    f"{d['ppl']:.2f} ({d['ppl change']}) after {d['steps']} steps ({d['train s'] / 60:.0f} min); "
                    f"pydoc {d['pydoc change']}", d["ppl"] <= 1.15 * base,
                    f"logit KL + relative block-output MSE, {d['steps']} steps of 4 x 512 tokens, AdamW lr 1e-4"))
    else:
        out.append(("distillation recovery", "missing", False, "run --parts distill"))
    speed = data.get("speed", [])
    if speed:
        layers = [r for r in speed if r["name"].startswith("[")]
        whole = next((r for r in speed if r["name"].startswith("whole")), None)
        fast = sum(r.get("note") == "faster" for r in layers)
        out.append(("speed per layer and end to end, measured (a figure, not a threshold)",
                    f"{fast} of {len(layers)} factorized shapes faster than dense; whole model: "
                    + (f"decode {whole['speed-up, 1 row (decode)']}, prefill {whole['speed-up, many rows (prefill)']}"
                       if whole else "not measured"), bool(whole), "run --parts speed"))
    else:
        out.append(("speed per layer and end to end", "missing", False, "run --parts speed"))
    out.append(minilm_check(json.loads(MINILM.read_text()) if MINILM.exists() else []))
    return out


def minilm_check(table: list[dict]) -> Check:
    """The MiniLM row, from the benchmark's table (common.write_table's JSON: one object per row)."""
    target = "MiniLM, 30% removed: cosine fidelity >= 0.97 after recovery"
    rows = {r["name"]: r for r in table}
    d = next((r for n, r in rows.items() if n.endswith("+ distillation")), None)
    if d is None:
        return (target, "not measured", False, "run benchmarks/lowrank/minilm.py")
    free = {n: r for n, r in rows.items() if n != "fp32 (dense)" and r is not d}
    before = ", ".join(f"{n} {r['fidelity GPL-3']:.3f}" for n, r in free.items())
    speed = ", ".join(f"{k.split()[0]} {d[k]}" for k in d if k.endswith("speed-up"))
    return (target, f"{d['removed']} removed, after {d['steps']} steps: GPL-3 {d['fidelity GPL-3']:.4f}, pydoc "
            f"{d['fidelity pydoc']:.4f} (training-free: {before}); speed {speed}",
            min(d["fidelity GPL-3"], d["fidelity pydoc"]) >= 0.97,
            "whitened SVD, the same share from every encoder linear, then distillation (embedding cosine + block MSE "
            "+ attention relations) on mixed-calibration sentences")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--table", type=Path, default=RES / "lowrank_smollm2.json")
    ap.add_argument("--out", type=Path, default=RES / "lowrank_targets.md")
    args = ap.parse_args()
    data = json.loads(args.table.read_text()) if args.table.exists() else {}
    write_checks(args.out, "Low-rank targets (issue 21)", checks(data))


if __name__ == "__main__":
    main()
