"""digits-cnn quantization benchmark: fp32, BN-folded fp32, static int8 (W8A8), ternary and binary weights.

Every variant is built from the same trained model in this process: top-1 on the 360 test images,
artifact bytes (torchslim.save into a temp folder), and latency at batch 1 and batch 256 measured
interleaved (round-robin, medians), as ratios to fp32 in the same run.
Regenerates docs/results/quantization_digits.md (+ .json).

    python benchmarks/quantization/digits.py [--threads 1] [--rounds 30]

Conversion goes through ``torchslim.quantize_`` when the W8A8 / weight-only handlers accept Conv2d
layers; until they do, a local stand-in below (same functions, same calibration data) converts the
convs, and the table's notes say which path ran.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, artifact_bytes, interleaved, write_table  # noqa: E402

import torchslim  # noqa: E402
from torchslim.calibration.pipeline import run_basic  # noqa: E402
from torchslim.calibration.stats import ChannelStats  # noqa: E402
from torchslim.core.errors import ConfigError  # noqa: E402
from torchslim.core.surgery import replace_module  # noqa: E402
from torchslim.quantization import (ActMode, Binary, Int8StaticLinear, PerChannel, Ternary, W8A8Config,  # noqa: E402
                                    WeightOnlyConfig)
from torchslim.quantization.int8_conv import conv_input_stats, convert_conv, quantize_conv_weight_only  # noqa: E402
from torchslim.quantization.w8a8 import static_range  # noqa: E402
from torchslim.quantization.fuse_int8 import fuse_int8_relu_  # noqa: E402
from torchslim.transforms import fold_bn_  # noqa: E402

warnings.filterwarnings("ignore")
N_CALIB = 128
PATHS: set[str] = set()   # which conversion path ran: "handler" or "local"
FIRST_LAST = ("stem.0", "head")


# -- conversions ---------------------------------------------------------------------------
def _selector(exclude: tuple[str, ...] = ()) -> torchslim.Selector:
    return torchslim.Selector(include=(nn.Conv2d, nn.Linear), exclude=exclude)


def _local_static(model: nn.Module, cfg: W8A8Config, task) -> None:
    """Stand-in for the W8A8 handler on convs + linears: one calibration pass, then convert."""
    targets = {n: m for n, m, _ in cfg.selector.resolve(model, cfg)}

    def stats(_n: str, m: nn.Module):
        return conv_input_stats(m) if isinstance(m, nn.Conv2d) else ChannelStats(m.in_features)

    def solve(measured: dict) -> None:
        for name, (m, st) in measured.items():
            if isinstance(m, nn.Conv2d):
                replace_module(model, name, convert_conv(m, cfg, st))
            else:
                lin = Int8StaticLinear.from_linear(m, cfg)
                lin.set_range(*static_range(st, None, cfg.observer))
                replace_module(model, name, lin)

    run_basic(model, targets, task.calibration_batches(cfg.n_samples), task.forward, stats, solve, "W8A8 (local)")


def static_int8(model: nn.Module, task, fuse: bool) -> None:
    cfg = W8A8Config(mode=ActMode.STATIC, n_samples=N_CALIB, sequential=False, selector=_selector())
    try:
        torchslim.quantize_(model, cfg, calibration=task)
        PATHS.add("handler")
    except ConfigError:
        _local_static(model, cfg, task)
        PATHS.add("local")
    if fuse:
        fuse_int8_relu_(model)


def weight_only(model: nn.Module, fmt, exclude: tuple[str, ...]) -> None:
    cfg = WeightOnlyConfig(format=fmt, granularity=PerChannel(), selector=_selector(exclude))
    try:
        torchslim.quantize_(model, cfg)
        PATHS.add("handler")
    except ConfigError:
        convs = [(n, m) for n, m, _ in cfg.selector.resolve(model, cfg) if isinstance(m, nn.Conv2d)]
        for name, conv in convs:
            replace_module(model, name, quantize_conv_weight_only(conv, cfg))
        linears = tuple(n for n, m, _ in cfg.selector.resolve(model, cfg) if isinstance(m, nn.Linear))
        if linears:
            torchslim.quantize_(model, WeightOnlyConfig(format=fmt, granularity=PerChannel(),
                                                        selector=torchslim.Selector(include=linears)))
        PATHS.add("local")


def folded(then: Callable[[nn.Module, object], None] | None = None) -> Callable[[nn.Module, object], None]:
    """Fold the BatchNorms (exact), then apply ``then``: every compressed variant starts from the folded model."""
    def run(model: nn.Module, task) -> None:
        pairs = fold_bn_(model)
        if len(pairs) != 6:
            raise RuntimeError(f"expected 6 conv-BN pairs in digits-cnn, folded {pairs}")
        if then is not None:
            then(model, task)
    return run


def variants() -> dict[str, tuple[Callable | None, str]]:
    keep, every = "first conv (stem.0) and head kept fp32", "all layers, per-channel, no recovery"
    return {
        "fp32": (None, "trained model, BatchNorm unfolded"),
        "fp32, BN folded": (folded(), "6 BatchNorms folded into their convs (exact)"),
        "int8 static (W8A8)": (folded(lambda m, t: static_int8(m, t, fuse=True)),
                               "all 6 convs + head; per-channel int8 weights, per-tensor uint8 activations "
                               f"({N_CALIB} calibration images); ReLUs fused, uint8 between chained convs"),
        "int8 static, no fusion": (folded(lambda m, t: static_int8(m, t, fuse=False)),
                                   "same layers, ReLUs as separate ops"),
        "ternary weights (PTQ)": (folded(lambda m, t: weight_only(m, Ternary(), ())), every),
        "ternary weights, first/last fp32": (folded(lambda m, t: weight_only(m, Ternary(), FIRST_LAST)), keep),
        "binary weights (PTQ)": (folded(lambda m, t: weight_only(m, Binary(), ())), every),
        "binary weights, first/last fp32": (folded(lambda m, t: weight_only(m, Binary(), FIRST_LAST)), keep),
    }


# -- measurement -------------------------------------------------------------------------------
def latencies(models: dict[str, nn.Module], task, batch: int, calls: int, rounds: int) -> dict[str, float]:
    """Median ms per forward at ``batch`` (each timed call runs ``calls`` forwards), interleaved."""
    x = task.example_inputs(batch)["x"]

    def runner(m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                m(x)
        return run

    with torch.inference_mode():
        secs = interleaved({k: runner(m) for k, m in models.items()}, rounds=rounds)
    return {k: 1e3 * s / calls for k, s in secs.items()}


def build_all(base: nn.Module, task, source: dict) -> tuple[list[Row], dict[str, nn.Module]]:
    rows, models = [], {}
    for name, (convert, note) in variants().items():
        m = copy.deepcopy(base)
        t = time.perf_counter()
        if convert is not None:
            convert(m, task)
        secs = time.perf_counter() - t
        m.eval()
        top1 = task.evaluate(m)["top1"]
        size = artifact_bytes(m, source)
        models[name] = m
        rows.append(Row(name, note, {"top1 %": top1, "artifact KB": size / 1e3,
                                     "convert ms": None if convert is None else 1e3 * secs}))
        print(f"{name}: top1 {top1:.2f}%, {size / 1e3:.1f} KB, {secs:.2f}s", flush=True)
    return rows, models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: a shared machine)")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = torchslim.load_model("digits-cnn")
    rows, models = build_all(loaded.model.eval(), loaded.task, loaded.source)
    lat = {1: latencies(models, loaded.task, 1, 50, args.rounds),
           256: latencies(models, loaded.task, 256, 2, args.rounds)}
    base = rows[0].values
    for r in rows:
        v = r.values
        v["Δ top1 (points)"] = f"{v['top1 %'] - base['top1 %']:+.2f}"
        v["size ratio"] = round(v["artifact KB"] / base["artifact KB"], 3)
        for b in (1, 256):
            v[f"batch {b} ms"] = lat[b][r.name]
            v[f"batch {b} speedup"] = f"{lat[b]['fp32'] / lat[b][r.name]:.2f}x"
    cols = ["top1 %", "Δ top1 (points)", "artifact KB", "size ratio", "batch 1 ms", "batch 1 speedup",
            "batch 256 ms", "batch 256 speedup", "convert ms"]
    write_table(ROOT / "docs/results/quantization_digits.md", "Quantization: digits-cnn",
                "Top-1 on scikit-learn digits' 360 test images (stratified split). Latency = one forward of "
                "[batch, 1, 8, 8] images, median of interleaved rounds in one process (batch 1: 50 forwards per "
                "timed call; batch 256: 2), speedups relative to fp32 in the same run. Artifact = torchslim.save "
                "folder (safetensors + manifest). Regenerate: `python benchmarks/quantization/digits.py`.",
                cols, rows, notes(lat))
    print(open(ROOT / "docs/results/quantization_digits.md").read())


def notes(lat: dict[int, dict[str, float]]) -> list[str]:
    i8, fold = "int8 static (W8A8)", "fp32, BN folded"
    return [
        f"Static int8 vs BN-folded fp32 (the fair baseline: int8 convs have BN folded too): "
        f"{lat[1][fold] / lat[1][i8]:.2f}x at batch 1, {lat[256][fold] / lat[256][i8]:.2f}x at batch 256.",
        "Int8 convs run oneDNN's `onednn::qconv2d_pointwise` (u8 activations x s8 weights, VNNI). Each call "
        "has a fixed cost of roughly 35 us on this CPU, more than an fp32 conv on an 8x8 or 4x4 map at batch 1, "
        "so this tiny model is slower in int8 at batch 1 and faster at large batch.",
        "Ternary and binary are post-training round-to-nearest only (TWN threshold 0.7 mean|w|; XNOR mean|w| "
        "scale), without any recovery (no QAT, no BatchNorm re-estimation): the accuracy collapse shown is the "
        "honest PTQ result. Their layers dequantize the weight on every call (no ternary/binary kernel): at batch 1 "
        "that makes them several times slower than the BN-folded fp32 model they start from, at batch 256 the "
        "cost is amortized. The gain is storage only: 2 and 1 bits per weight + per-channel scales (every "
        "artifact also holds an 11-14 KB JSON manifest, a large share of these small files).",
        "Fused vs unfused int8 differ by less than the run-to-run noise of this shared 2-core machine: ReLU "
        "fusion and uint8 chaining are exact rewrites (identical outputs) with no measurable gain on this model.",
        f"Conversion path: {', '.join(sorted(PATHS)) or 'none'} "
        "(local = the benchmark's stand-in for the W8A8/weight-only handlers, calling convert_conv / "
        "quantize_conv_weight_only; handler = torchslim.quantize_).",
    ]


if __name__ == "__main__":
    main()
