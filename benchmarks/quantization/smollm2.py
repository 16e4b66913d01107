"""SmolLM2-135M quantization benchmark: perplexity, size, decode speed, time to compress.

Every variant is built from the same fp32 model in this process; speeds are measured
interleaved (round-robin) and given as ratios to fp32 in the same run.
Regenerates docs/results/quantization_smollm2.md (+ .json).

    python benchmarks/quantization/smollm2.py [--quick]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from common import ROOT, Row, artifact_bytes, write_table  # noqa: E402
from quantization import peers  # noqa: E402

import torchslim  # noqa: E402
from torchslim.quantization import (NF4, ActMode, AWQConfig, CastConfig, GPTQConfig, IntFormat, PerChannel,  # noqa: E402
                                    PerGroup, W8A8Config, WeightOnlyConfig)

warnings.filterwarnings("ignore")
INT8_HEAD = {"lm_head": WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel())}
# Once lm_head is quantized the tied input embedding is a separate fp32 table (113 MB): store it in bf16.
EMB_BF16 = CastConfig(dtype=torch.bfloat16, selector=torchslim.Selector(include=(torch.nn.Embedding,)))


def wo(bits: int, group: int | None, fmt=None, head_int8: bool = True) -> WeightOnlyConfig:
    gran = PerGroup(group) if group else PerChannel()
    fmt = fmt or IntFormat(bits, symmetric=(bits == 8))
    return WeightOnlyConfig(format=fmt, granularity=gran,
                            selector=torchslim.Selector(overrides=INT8_HEAD if head_int8 else {}))


def variants(quick: bool) -> dict[str, tuple[object | None, str]]:
    n = 32 if quick else 128
    no_head = torchslim.Selector(exclude=("lm_head",))
    return {
        "fp32": (None, "baseline"),
        "bf16": (CastConfig(dtype=torch.bfloat16), "all linears + embeddings in bf16"),
        "int8 weight-only": (WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel(), selector=no_head),
                             "per-channel symmetric, int8pack_mm; lm_head fp32 (int8 lm_head: +0.51%)"),
        "W8A8 dynamic + SmoothQuant": (W8A8Config(smooth_alpha=0.5, n_samples=n, selector=no_head),
                                       "per-token int8 activations, alpha 0.5; lm_head fp32"),
        "W8A8 static + SmoothQuant": (W8A8Config(mode=ActMode.STATIC, smooth_alpha=0.8, n_samples=n, selector=no_head),
                                      "calibrated per-tensor activations, alpha 0.8; lm_head fp32"),
        "int4 g128 RTN": ([wo(4, 128), EMB_BF16], "asymmetric; lm_head int8, embedding bf16"),
        "int4 g128 GPTQ": ([GPTQConfig(weight=wo(4, 128), n_samples=n, propagate_quantized=True), EMB_BF16],
                           "act-order, 2 passes per block; lm_head int8 (RTN), embedding bf16"),
        "int4 g128 GPTQ single-pass": ([GPTQConfig(weight=wo(4, 128), n_samples=n, propagate_quantized=False), EMB_BF16],
                                       "next block sees fp32 outputs: half the forwards"),
        "int4 g128 AWQ": ([AWQConfig(weight=wo(4, 128), n_samples=n), EMB_BF16], "lm_head int8, embedding bf16"),
        "int3 g128 GPTQ": ([GPTQConfig(weight=wo(3, 128), n_samples=n, propagate_quantized=True), EMB_BF16],
                           "2 passes per block; lm_head int8, embedding bf16"),
        "int2 g64 GPTQ": ([GPTQConfig(weight=wo(2, 64), n_samples=n, propagate_quantized=True), EMB_BF16],
                          "2 passes per block; lm_head int8, embedding bf16"),
        "NF4 g64": ([wo(4, 64, fmt=NF4()), EMB_BF16], "RTN; lm_head int8, embedding bf16"),
    }


def build(base, task, cfg) -> tuple[torch.nn.Module, float]:
    m = copy.deepcopy(base)
    t = time.perf_counter()
    for c in ([] if cfg is None else cfg if isinstance(cfg, list) else [cfg]):  # configs compose in order
        torchslim.quantize_(m, c, calibration=task)
    return m, time.perf_counter() - t


def decode_rounds(models: dict, task, rounds: int, tokens: int) -> dict[str, dict[str, float]]:
    models = {k: m for k, m in models.items() if hasattr(m, "generate")}
    tps: dict[str, list[float]] = {k: [] for k in models}
    pre: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():
        task.decode(m, 4)  # warm-up
    for _ in range(rounds):
        for k, m in models.items():
            d = task.decode(m, tokens)
            tps[k].append(d.tokens_per_s)
            pre[k].append(d.prefill_s)
    return {k: {"tok_s": statistics.median(tps[k]), "prefill_ms": 1e3 * statistics.median(pre[k])} for k in models}


def prefill_512(models: dict, task, rounds: int) -> dict[str, float]:
    x = task.example_inputs(1, 512)
    out: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(**x)
        for _ in range(rounds):
            for k, m in models.items():
                t = time.perf_counter()
                m(**x)
                out[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in out.items()}


def merge_rows(json_path: Path, rows: list[Row], order: list[str]) -> list[Row]:
    import json

    old = {d["name"]: d for d in json.loads(json_path.read_text())} if json_path.exists() else {}
    new = {r.name: r for r in rows}
    merged = {n: Row(n, d.get("note", ""), {k: v for k, v in d.items() if k not in ("name", "note")})
              for n, d in old.items()}
    merged.update(new)
    rank = {n: i for i, n in enumerate(order)}
    return sorted(merged.values(), key=lambda r: rank.get(r.name, len(order)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer calibration samples and eval windows")
    ap.add_argument("--only", nargs="*", help="variant names to run (fp32 is always run)")
    args = ap.parse_args()
    loaded = torchslim.load_model("smollm2-135m")
    base, task = loaded.model, loaded.task
    eval_task = type(task)(loaded.tokenizer, seq_len=512, max_eval_windows=4 if args.quick else None)
    rows, models = [], {}
    for name, (cfg, note) in variants(args.quick).items():
        if args.only and name != "fp32" and name not in args.only:
            continue
        m, secs = build(base, task, cfg)
        ppl = eval_task.evaluate(m)["perplexity"]
        size = artifact_bytes(m, loaded.source)
        print(f"{name}: ppl {ppl:.3f}, {size / 1e6:.1f} MB, compress {secs:.1f}s", flush=True)
        models[name] = m
        rows.append(Row(name, note, {"perplexity": ppl, "compress s": secs, "artifact MB": size / 1e6}))
    for name, build_peer in (("torchao int4 g64 (peer)", lambda: peers.torchao_int4(base, 64)),
                             ("ONNX Runtime int4 g128 (peer)", lambda: peers.ort_int4(base, 128))):
        if args.only and name not in args.only:
            continue
        try:
            m, note = build_peer()
            ppl = eval_task.evaluate(m)["perplexity"]
            models[name] = m
            rows.append(Row(name, note, {"perplexity": ppl}))
        except Exception as e:  # noqa: BLE001 - a failing peer is a result, reported as such
            rows.append(Row(name, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", {}))
        print(rows[-1].name, rows[-1].values, rows[-1].note, flush=True)
    dec = decode_rounds(models, task, rounds=3, tokens=32)
    pre = prefill_512(models, task, rounds=3)
    base_row = rows[0].values
    for r in rows:
        v = r.values
        if "perplexity" in v:
            v["ppl vs fp32"] = f"{100 * (v['perplexity'] / base_row['perplexity'] - 1):+.2f}%"
        if "artifact MB" in v:
            v["size ratio"] = round(v["artifact MB"] / base_row["artifact MB"], 3)
        if r.name in dec:
            v["decode tok/s"] = dec[r.name]["tok_s"]
            v["decode speedup"] = f"{dec[r.name]['tok_s'] / dec['fp32']['tok_s']:.2f}x"
        if r.name in pre:
            v["prefill 512 ms"] = pre[r.name]
            v["prefill speedup"] = f"{pre['fp32'] / pre[r.name]:.2f}x"
    if args.only:  # merge into the existing table: rows not re-run are kept (each run measured its own fp32)
        rows = merge_rows(ROOT / "docs/results/quantization_smollm2.json", rows, list(variants(args.quick)))
    cols = ["perplexity", "ppl vs fp32", "artifact MB", "size ratio", "decode tok/s", "decode speedup",
            "prefill 512 ms", "prefill speedup", "compress s"]
    write_table(ROOT / "docs/results/quantization_smollm2.md", "Quantization: SmolLM2-135M",
                "Perplexity on Debian's GPL-3 text (non-overlapping 512-token windows; calibration on the other "
                "license texts). Decode = greedy 32 new tokens, batch 1; prefill = one 1x512 forward. Speeds are "
                "medians of interleaved rounds in one process, as ratios to fp32 in the same run. "
                "Regenerate: `make bench-quant` (or `python benchmarks/quantization/smollm2.py`).",
                cols, rows, [
                    "SmolLM2's weights come from a Q4_1 GGUF (4-bit, groups of 32), so 4-bit at group 32 would be "
                    "near-lossless by construction; 4-bit results use group 128 (ragged: 576 inputs = 4.5 groups, "
                    "zero-padded).",
                    "4/3/2-bit variants keep lm_head at int8 per-channel (mixed precision through Selector overrides, "
                    "rounded to nearest) and then store the input embedding (no longer tied) in bf16: two quantize_ "
                    "calls composed. int8 and W8A8 rows keep lm_head and the tied embedding fp32.",
                ] + (["QUICK RUN: 4 eval windows, 32 calibration samples."] if args.quick else []))


if __name__ == "__main__":
    main()
