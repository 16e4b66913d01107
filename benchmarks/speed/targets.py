"""Check issue 12's and issue 23's speed, size and export targets against the measured tables (docs/results/speed_*.json).

Writes docs/results/speed_targets.md: each target, the measured figure, met or missed, and for a miss what was
tried (or that it was not built). Run after the benchmarks (``make bench-speed`` does).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, write_checks  # noqa: E402

RES = ROOT / "docs/results"


def load(name: str) -> dict[str, dict]:
    path = RES / f"{name}.json"
    return {r["name"]: r for r in json.loads(path.read_text())} if path.exists() else {}


def _x(v) -> float:
    return float(str(v).rstrip("x")) if v not in (None, "–") else float("nan")


def _pct(v) -> float:
    return float(str(v).rstrip("%")) / 100 if v not in (None, "–") else float("nan")


def speed(d: dict[str, dict]) -> list[tuple[str, str, bool, str]]:
    if not d:
        return [("SmolLM2 speed table", "missing", False, "run benchmarks/speed/smollm2.py")]
    def peer(t: str) -> float:
        row = d.get(f"llama.cpp {t} (this run)") or d[f"llama.cpp {t} (reference run)"]
        return row["decode tok/s"]
    q40, f32 = peer("Q4_0"), peer("F32")
    int4 = max((v for k, v in d.items() if k.startswith("int4") and "fast path" in k), key=lambda v: v["decode tok/s"])
    flt = max((v for k, v in d.items() if k.startswith(("fp32", "bf16")) and "fast path" in k),
              key=lambda v: v["decode tok/s"])
    fast = [v for k, v in d.items() if "fast path" in k and "AMX off" not in k]   # the paths that run by default
    where = "this run" if "llama.cpp Q4_0 (this run)" in d else "a reference run, not this one"
    out = [("int4 decode >= 50% of llama.cpp Q4_0", f"{int4['name']}: {int4['decode tok/s']:.1f} tok/s = "
            f"{int4['decode tok/s'] / q40:.1%} of {q40:.0f} ({where})", int4["decode tok/s"] >= 0.5 * q40,
            "eager PyTorch: per-layer dispatch overhead dominates at 135M parameters; torch.compile of the step "
            "(--compile) is the lever, and a kernel table picks the packed kernel per row count"),
           ("fp32/bf16 decode >= 70% of llama.cpp F32", f"{flt['name']}: {flt['decode tok/s']:.1f} tok/s = "
            f"{flt['decode tok/s'] / f32:.0%} of {f32:.0f} ({where})", flt["decode tok/s"] >= 0.7 * f32, "as above")]
    for seq in (128, 512):                  # every compressed or cast variant against fp32
        worst = min((v for v in fast if not v["name"].startswith("fp32")),
                    key=lambda v: _x(v.get(f"prefill {seq} vs fp32")))
        out.append((f"prefill at {seq} tokens >= 1.0x fp32 for every format", f"worst: {worst['name']} "
                    f"{worst.get(f'prefill {seq} vs fp32')}", _x(worst.get(f"prefill {seq} vs fp32")) >= 1.0,
                    "packed layers switch to a dequantized bf16 matmul above the measured row cut"))
    eff_f = _pct(flt["bandwidth efficiency"])
    eff_4 = _pct(int4["bandwidth efficiency"])
    out.append(("decode bandwidth efficiency >= 50% (fp32/bf16) and >= 35% (int4)",
                f"{flt['name']} {flt['bandwidth efficiency']}; {int4['name']} {int4['bandwidth efficiency']}",
                eff_f >= 0.5 and eff_4 >= 0.35, "see the decode rows: overhead-bound, not bandwidth-bound"))
    return out


def _best(d: dict[str, dict], prefix: str, key: str, low: bool = False) -> dict | None:
    rows = [v for k, v in d.items() if k.startswith(prefix) and "fast path" in k and "AMX off" not in k
            and isinstance(v.get(key), (int, float))]
    return (min if low else max)(rows, key=lambda v: v[key]) if rows else None


def llama_parity(d: dict[str, dict]) -> list[tuple[str, str, bool, str]]:
    """Issue 23: the torch runtime at llama.cpp's speed (its rows measured in the same run)."""
    out = []
    for ours, peer, tried in (
            ("int4", "Q4_0", "decode: split int8 head on the int8 units (3-4% of a step at 2 threads), compiled step; skipping "
             "Dynamo's guards saved 2% but ran one compiled decoder's steps on another's graph, so it was dropped "
             "(speed_decode_profile.md breaks a step down: the int4 GEMV and the compiled step's small kernels "
             "are most of it). The fused int4 x int8 C++ kernel: rebuilt with OpenMP (it had run every layer on one "
             "thread) and given a 512-bit path taking two blocks per instruction: 1.1-1.3x int4pack_mm on one hot "
             "layer at 2 threads, yet over the model's 121 int4 layers in sequence both kernels take the same time "
             "(8.3 ms a pass, about 9 GB/s from the last-level cache, where llama.cpp's Q4_0 step reads about "
             "21 GB/s). The compiled step no longer repeats the grouped key/value heads over the static cache "
             "(35 MB of copies a token; the generated kernels' time fell by about 1.5 ms). Inductor's C++ wrapper "
             "measured 6-9% faster but compiles 2.3x longer (177 vs 78 s), so it is not the default. "
             "Prefill: the int4 layers are dequantized on every call (int4pack_mm is a GEMV kernel)"),
            ("bf16", "F16", "oneDNN's bf16 GEMV at one row runs far below memory bandwidth (max-autotune and "
             "freezing measured no faster), so decode runs torchslim's own bf16 GEMV (AVX512-BF16 dot products, each "
             "weight row read once; switched per shape where measured faster): 66% -> 86% of llama.cpp F16 in the "
             "same rounds; the rest of the step is the compiled step's per-op overhead (speed_decode_profile.md)")):
        p = d.get(f"llama.cpp {peer} (this run)")
        if p is None:
            out.append((f"{ours} vs llama.cpp {peer}", "llama.cpp not measured in this run", False,
                        "make llama-cpp builds llama-bench"))
            continue
        dec = _best(d, ours, "decode tok/s")
        out.append((f"{ours} decode >= 100% of llama.cpp {peer}", f"{dec['name']}: {dec['decode tok/s']:.1f} tok/s = "
                    f"{dec['decode tok/s'] / p['decode tok/s']:.0%} of {p['decode tok/s']:.1f}",
                    dec["decode tok/s"] >= p["decode tok/s"], tried))
        for seq in (128, 512):
            pre = _best(d, ours, f"prefill {seq} ms", low=True)
            out.append((f"{ours} prefill at {seq} tokens >= 100% of llama.cpp {peer}",
                        f"{pre['name']}: {pre[f'prefill {seq} ms']:.1f} ms vs {p[f'prefill {seq} ms']:.1f} ms "
                        f"({p[f'prefill {seq} ms'] / pre[f'prefill {seq} ms']:.0%})",
                        pre[f"prefill {seq} ms"] <= p[f"prefill {seq} ms"], tried))
    amx = [k for k in d if "AMX off" in k]
    from common import machine_line

    if "amx" in machine_line():
        out.append(("on an AMX machine the table shows the AMX path", f"{len(amx)} AMX-off rows beside the AMX rows",
                    bool(amx), "the AMX-off child process failed"))
    return out


def minilm_vs_ort(d: dict[str, dict]) -> list[tuple[str, str, bool, str]]:
    """Issue 23: the encoder fast path against ONNX Runtime at both shapes, fp32 and int8."""
    if not d:
        return []
    out = []
    for ours_names, peer, label in (
            (("torch fp32, fast path", "torch fp32, fast path + compile"), "ONNX Runtime fp32 (peer)", "fp32"),
            (("W8A8 (torchslim), fast path", "W8A8 (torchslim), fast path + compile"),
             "ONNX Runtime dynamic int8 (its quantizer)", "W8A8 vs dynamic int8")):
        rows = [d[n] for n in ours_names if n in d]
        if not rows or peer not in d:
            continue
        for shape in ("1x128", "32x128"):
            best = min(rows, key=lambda r: r[f"{shape} ms"])
            out.append((f"MiniLM {label}: torch fast path >= ONNX Runtime at {shape}",
                        f"{best['name']}: {best[f'{shape} ms']:.2f} ms vs {d[peer][f'{shape} ms']:.2f} ms",
                        best[f"{shape} ms"] <= d[peer][f"{shape} ms"],
                        "fused shared-input matmuls, freed memory kept, compile; what is left is per-op overhead "
                        "between small kernels at 1 x 128"))
    return out


def gguf(d: dict[str, dict]) -> list[tuple[str, str, bool, str]]:
    out = []
    for qtype, peer_names in (("Q4_0", ("Q4_0 reference rounding (llama-quantize's)",)),
                              ("Q4_K_M", ("Q4_K_M llama-quantize", "Q4_K_M reference (quoted)"))):
        ours = d.get(f"{qtype} torchslim GPTQ")
        ref = next((d[n] for n in peer_names if n in d), None)
        if not (ours and ref):
            out.append((f"GGUF {qtype} export quality", "missing", False,
                        f"run benchmarks/speed/gguf_quality.py --types {qtype} (Q4_K_M's peer needs make llama-cpp)"))
            continue
        texts = [k.removeprefix("ppl ") for k in ours if k.startswith("ppl ") and f"ppl {k.removeprefix('ppl ')}" in ref]
        both = all(ours[f"ppl {t}"] < ref[f"ppl {t}"] for t in texts)
        got = "; ".join(f"{t}: {ours[f'ppl {t}']:.2f} vs {ref[f'ppl {t}']:.2f}" for t in texts)
        same_size = ours["file MiB"] <= ref["file MiB"] * 1.001           # metadata strings differ by a few bytes
        out.append((f"GGUF {qtype} export beats llama.cpp's quantizer at the same size (both texts)",
                    f"{got} ({ours['file MiB']:.1f} vs {ref['file MiB']:.1f} MiB)", both and same_size,
                    f"GPTQ on each tensor's {qtype} grid, calibrated on license text; K-quant tensors (ffn_down) "
                    "rounded by torchslim's least-squares rounding, not GPTQ"))
    ours, imat = d.get("Q4_K_M torchslim GPTQ"), d.get("Q4_K_M llama-quantize with imatrix")
    if ours and imat:
        texts = [k.removeprefix("ppl ") for k in ours if k.startswith("ppl ")]
        got = "; ".join(f"{t}: {ours[f'ppl {t}']:.2f} vs {imat[f'ppl {t}']:.2f}" for t in texts)
        out.append(("GGUF Q4_K_M export against llama.cpp's quantizer with an importance matrix (reported)",
                    f"{got} ({ours['file MiB']:.1f} vs {imat['file MiB']:.1f} MiB)",
                    all(ours[f"ppl {t}"] < imat[f"ppl {t}"] for t in texts),
                    "same calibration text for both; torchslim rounds the 30 ffn_down K-quant tensors without "
                    "activation statistics, while the imatrix weights every tensor's rounding: GPTQ (or "
                    "importance-weighted rounding) on the K-quant grids is the next step"))
    else:
        out.append(("GGUF export with an importance matrix (llama.cpp's imatrix)", "not measured", False,
                    "llama-imatrix not built (make llama-cpp builds it)"))
    return out


def minilm(d: dict[str, dict]) -> list[tuple[str, str, bool, str]]:
    if not d:
        return [("MiniLM encoder fast path", "missing", False, "run benchmarks/speed/minilm.py")]
    ort = d["ONNX Runtime dynamic int8 (its quantizer)"]
    best = [d["W8A8 (torchslim), fast path"], d["W8A8 (torchslim), fast path + compile"]]
    out = []
    for shape in ("1x128", "32x128"):
        fastest = min(best, key=lambda r: r[f"{shape} ms"])
        out.append((f"MiniLM W8A8 >= 1.8x fp32 at {shape}, cosine >= 0.99",
                    f"{fastest['name']}: {fastest[f'{shape} vs fp32']} (eager fast path "
                    f"{best[0][f'{shape} vs fp32']}), cosine {fastest['cosine']:.4f}",
                    _x(fastest[f"{shape} vs fp32"]) >= 1.8 and fastest["cosine"] >= 0.99,
                    "fused q/k/v, freed memory kept, one-pass per-token scaling; compile for the int_mm form"))
        out.append((f"MiniLM W8A8 faster than ONNX Runtime's dynamic int8 at {shape}",
                    f"{fastest[f'{shape} ms']:.2f} ms vs {ort[f'{shape} ms']:.2f} ms "
                    f"({ort[f'{shape} ms'] / fastest[f'{shape} ms']:.2f}x; cosine {fastest['cosine']:.3f} vs "
                    f"{ort['cosine']:.3f})", fastest[f"{shape} ms"] < ort[f"{shape} ms"],
                    "tried: torch.compile (default and max-autotune), HF eager attention under compile, "
                    "per-tensor activations (cosine 0.993, nn agreement 0.89: rejected); what is left at 1 x 128 "
                    "is per-op overhead and the attention kernel"))
    ours, ort_on = d["W8A8 torchslim ONNX export on ORT"], d["W8A8 torchslim ONNX export on ORT, SkipLayerNormFusion off"]
    for row, label in ((ours, "default ORT session"), (ort_on, "SkipLayerNormFusion off")):
        faster = all(row[f"{s} ms"] <= ort[f"{s} ms"] * 1.03 for s in ("1x128", "32x128"))   # 3%: timing noise
        out.append((f"torchslim ONNX int8 export as fast as ORT's own quantizer, better fidelity ({label})",
                    f"{row['1x128 ms']:.2f} / {row['32x128 ms']:.1f} ms vs {ort['1x128 ms']:.2f} / "
                    f"{ort['32x128 ms']:.1f} ms; cosine {row['cosine']:.4f} vs {ort['cosine']:.4f}",
                    faster and row["cosine"] > ort["cosine"],
                    "the dynamo exporter's graph gets ORT's SkipLayerNormalization fusion, slower here than "
                    "Add + LayerNormalization"))
    return out


def main() -> None:
    checks = speed(load("speed_smollm2")) + gguf(load("speed_gguf_quality"))
    checks += minilm(load("speed_minilm"))
    sp = load("speed_smollm2")
    int4 = next((v for k, v in sp.items() if k.startswith("int4") and "artifact MiB" in v), None)
    rec = load("recovery_smollm2")
    gptq = rec.get("int4 GPTQ g128")
    # the int4-gptq-qat route (GPTQ, then block-wise reconstruction) packs back into the very same layers and file
    same_layout = [v for k, v in rec.items() if k.startswith("int4 GPTQ g128") and "block-wise reconstruction" in k]
    best = min([gptq, *same_layout], key=lambda v: v["ppl"]) if gptq else None
    if int4 and best:
        checks.append(("int4 recipe on llama.cpp's front: size <= Q4_K_M's 99 MiB and perplexity <= its 24.15 (GPL-3)",
                       f"{int4['artifact MiB']:.1f} MiB (int4-gptq layout: int4 g128, int8 head shared with the tied "
                       f"embedding); perplexity {best['ppl']:.2f} ({best['ppl change']}, {best['name']}; GPTQ alone "
                       f"{gptq['ppl']:.2f}, recovery_smollm2.md)",
                       int4["artifact MiB"] <= 99 and best["ppl"] <= 24.15,
                       "size met by storing the tied table once; quality: GPTQ g128 without AWQ is +18.4% (AWQ+GPTQ "
                       "+10.2%), Q4_K_M +5.1%. For llama.cpp deployment, torchslim's GGUF Q4_K_M export (GPTQ on the "
                       "mix's per-tensor Q5_0/Q8_0 grids) is beyond llama.cpp's own Q4_K_M at the same size (see the "
                       "GGUF rows); that mix is mostly int5, which has no fast torch kernel, so the torchslim-runtime "
                       "int4 recipe stays behind"))
    checks += llama_parity(sp) + minilm_vs_ort(load("speed_minilm"))
    write_checks(RES / "speed_targets.md", "Speed, size and export targets (issues 12 and 23)", checks)


if __name__ == "__main__":
    main()
