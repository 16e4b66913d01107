"""Where one decode step of SmolLM2-135M spends its time: weight matmuls, attention, the other kernels, framework
overhead and sampling, eager and compiled, before and after the split-activation int8 kernel and the fused int4 x
int8 kernel (``prepare_fast`` switches the int4 layer shapes it measures 1.1x faster).

Each variant decodes on a static KV cache; the step time is the median over rounds of 16 unprofiled steps,
variants interleaved. Then ``torch.profiler`` records 16 more steps and each op's own CPU time is put in a
category (below); the profiler adds a little time per op, so its step time is quoted beside the unprofiled one
and the categories are scaled to the unprofiled step (shares kept). "framework" is everything that is not an op
doing arithmetic: Python, dispatch, Dynamo's guard checks, the compiled wrapper. Sampling (greedy ``argmax``
over the 49152-token vocabulary) is timed apart. Regenerates docs/results/speed_decode_profile.md (+ .json).

    python benchmarks/speed/decode_profile.py [--rounds 5]
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
from common import ROOT, Row, timing_lock, write_table  # noqa: E402

import torchslim  # noqa: E402
from torchslim import WeightOnlyConfig  # noqa: E402
from torchslim.quantization import IntFormat, PerChannel, PerGroup  # noqa: E402
from torchslim.runtime import FastDecoder, prepare_fast  # noqa: E402

warnings.filterwarnings("ignore")
OUT = ROOT / "docs/results/speed_decode_profile.md"
STEPS = 16
MATMUL = ("_weight_int4pack_mm", "_weight_int8pack_mm", "split_int8_mm", "int4_gemv", "bf16_gemv", "linear_dynamic", "aten::mm", "aten::addmm",
          "aten::bmm", "aten::_int_mm", "mkldnn", "onednn")
ATTENTION = ("scaled_dot_product", "flash_attention")
FRAMEWORK = ("Dynamo", "Torch-Compiled Region", "AOTDispatcher", "Pregraph", "CompiledFunction")
WRAPPERS = ("## Call CompiledFxGraph",)          # its own time is the compiled C++ kernels it runs inline
COLUMNS = ["step ms", "tok/s", "profiled step ms", "weight matmuls ms", "attention ms", "other kernels ms",
           "framework ms", "sampling ms", "matmul share"]


def category(name: str) -> str:
    if any(k in name for k in MATMUL):
        return "weight matmuls"
    if any(k in name for k in ATTENTION):
        return "attention"
    if any(k in name for k in FRAMEWORK):
        return "framework"
    return "other kernels"


class Stepper:
    """One decode position after another on a static cache (restarted before it fills)."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, compile: bool, max_len: int = 512) -> None:
        self.dec = FastDecoder(model, max_len=max_len, compile=compile)
        self.ids, self.max_len = ids, max_len
        with torch.inference_mode():
            self.dec.generate(ids, 8)          # compiles, and warms the caches
        self._restart()

    def _restart(self) -> None:
        self.cache = self.dec._cache()
        logits = self.dec._forward(self.ids, torch.arange(self.ids.shape[1]), self.cache)
        self.tok, self.pos = logits.argmax(-1, keepdim=True), self.ids.shape[1]

    def steps(self, n: int) -> float:
        if self.pos + n >= self.max_len:
            self._restart()
        t0 = time.perf_counter()
        for _ in range(n):
            self.dec._step(self.tok, torch.tensor([self.pos]), self.cache)
            self.pos += 1
        return (time.perf_counter() - t0) / n


def profile(stepper: Stepper) -> tuple[float, dict[str, float]]:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = stepper.steps(STEPS)
    per: dict[str, float] = {}
    for ev in prof.key_averages():
        if ev.key.startswith("## Call") and not ev.key.startswith(WRAPPERS):
            continue
        cat = "other kernels" if ev.key.startswith(WRAPPERS) else category(ev.key)
        per[cat] = per.get(cat, 0.0) + ev.self_cpu_time_total / 1e3 / STEPS
    per["framework"] = per.get("framework", 0.0) + max(wall * 1e3 - sum(per.values()), 0.0)
    return wall * 1e3, per


def sampling_ms(vocab: int) -> float:
    logits = torch.randn(1, vocab, dtype=torch.bfloat16)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        logits.argmax(-1, keepdim=True)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def models(fp32: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, bool]]:
    int4 = copy.deepcopy(fp32)            # the int4-gptq recipe's layout: int4 g128 body, int8 head shared with the table
    head = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel())
    torchslim.quantize_(int4, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(128),
                                               selector=torchslim.Selector(overrides={"lm_head": head})))
    before, fused = copy.deepcopy(int4), copy.deepcopy(int4)
    prepare_fast(before, int8_units=False, int4_units=False)
    prepare_fast(int4, int4_units=False)
    prepare_fast(fused)                   # and int4 layers on the fused int4 x int8 kernel where measured faster
    bf16 = copy.deepcopy(fp32)
    prepare_fast(bf16)
    out = {}
    for compile in (False, True):
        tag = "compiled" if compile else "eager"
        out[f"int4 g128, {tag}, int8 head on the bf16 kernel (before)"] = (before, compile)
        out[f"int4 g128, {tag}, int8 head split on the int8 units"] = (int4, compile)
        out[f"int4 g128, {tag}, int8 head split, int4 body on the fused kernel"] = (fused, compile)
        out[f"bf16, {tag}"] = (bf16, compile)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    loaded = torchslim.load_model("smollm2-135m")
    fp32 = loaded.model.eval()
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    variants = models(fp32)
    with torch.inference_mode():
        steppers = {name: Stepper(m, ids, compile) for name, (m, compile) in variants.items()}
        with timing_lock() as lock_note:
            times: dict[str, list[float]] = {k: [] for k in steppers}
            for _ in range(args.rounds):
                for k, s in steppers.items():
                    times[k].append(s.steps(STEPS))
            profiles = {k: profile(s) for k, s in steppers.items()}
            sample = sampling_ms(fp32.config.vocab_size)
    rows = []
    for k, v in times.items():
        step = 1e3 * statistics.median(v)
        prof_wall, per = profiles[k]
        scale = step / max(prof_wall, 1e-9)
        values = {"step ms": step, "tok/s": 1e3 / (step + sample), "profiled step ms": prof_wall,
                  "sampling ms": sample, "matmul share": f"{per.get('weight matmuls', 0) / prof_wall:.0%}"}
        for cat in ("weight matmuls", "attention", "other kernels", "framework"):
            values[f"{cat} ms"] = per.get(cat, 0.0) * scale
        spread = (max(v) - min(v)) / statistics.median(v)
        rows.append(Row(k, f"spread {spread:.0%} over {args.rounds} rounds", values))
        print(rows[-1], flush=True)
    write_table(OUT, "One decode step of SmolLM2-135M, broken down",
                f"Median of {args.rounds} interleaved rounds of {STEPS} unprofiled steps on a static cache; "
                "categories from torch.profiler's own-time per op over 16 more steps, scaled to the unprofiled step "
                "(the profiler's own step time is shown). Regenerate: `python benchmarks/speed/decode_profile.py`.",
                COLUMNS, rows,
                [f"threads: {torch.get_num_threads()}; {lock_note}",
                 "weight matmuls: the packed int4/int8 kernels, the split int8 and fused int4 kernels, torchslim's bf16 GEMV (their "
                 "activation quantization included), "
                 "dense mm; attention: the SDPA kernel over the static cache; other kernels: norms, rotary, residuals "
                 "(in a compiled step, the generated C++ kernels); framework: Python, dispatch, Dynamo's guards, the "
                 "compiled wrapper, and the step time no op accounts for",
                 "tok/s here = 1 / (step + sampling), one token at a time; the speed tables time whole generations"])


if __name__ == "__main__":
    main()
