"""Decode and prefill speed of SmolLM2-135M: Hugging Face ``generate`` against torchslim's fast path (fp32,
bf16, int4 g128 and int8 per channel, optionally compiled), every variant timed interleaved in one process.

Decode: tokens/s over 64 greedy tokens after a 6-token prompt (median of rounds, round-robin). Prefill: one
forward at 1x128 and 1x512 (median, interleaved), as a ratio to fp32. Bandwidth efficiency: weight bytes read
per token x tokens/s against the measured large-copy bandwidth. The int4/int8 layers are round-to-nearest (speed
does not depend on how the codes were chosen). llama.cpp (built by ``build_llamacpp.sh``: ``make llama-cpp``) runs
in the same rounds: each round calls llama-bench once per GGUF type (tg 64, pp128, pp512, one repetition), in
turn with torchslim's decoders; without the tools its figures are quoted from a reference run and marked so.
Regenerates docs/results/speed_smollm2.md (+ .json).

    python benchmarks/speed/smollm2.py [--rounds 3] [--compile]
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
from common import ROOT, Row, artifact_bytes, interleaved, write_table  # noqa: E402
import llamacpp  # noqa: E402

import torchslim  # noqa: E402
from torchslim import WeightOnlyConfig  # noqa: E402
from torchslim.eval.size import memory_bytes  # noqa: E402
from torchslim.quantization import IntFormat, PerChannel, PerGroup  # noqa: E402
from torchslim.quantization import kernel_table  # noqa: E402
from torchslim.runtime import FastDecoder, prepare_fast  # noqa: E402

warnings.filterwarnings("ignore")
OUT = ROOT / "docs/results/speed_smollm2.md"
NEW = 64
LLAMA_CPP = {"F32": 55.0, "Q8_0": 128.0, "Q4_0": 187.0, "Q4_K_M": 141.0}   # tg128 t/s, 2 threads, 2026-11-29


def copy_bandwidth() -> float:
    """Bytes/s of a large tensor copy (read + write), median of 5."""
    a = torch.empty(256 * 2**20 // 4)
    b = torch.empty_like(a)
    times = []
    for _ in range(6):
        t = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t)
    return 2 * a.nbytes / statistics.median(times[1:])


def hf_decoder(model, ids):
    def run() -> float:
        t0 = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False, pad_token_id=0)
        t1 = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW,
                       do_sample=False, pad_token_id=0)
        return (NEW - 1) / max(time.perf_counter() - t1 - (t1 - t0), 1e-9)
    return run


def fast_decoder(model, ids, compile: bool = False):
    dec = FastDecoder(model, max_len=ids.shape[1] + NEW, compile=compile)
    return lambda: dec.generate(ids, NEW)[1].tokens_per_s


NO_AMX = "AVX512_CORE_BF16"     # ONEDNN_MAX_CPU_ISA below AMX: oneDNN's bf16/int8 kernels without the tile units


def has_amx() -> bool:
    from torchslim.runtime.machine import machine_info

    return any(f.startswith("amx") for f in machine_info()["isa"])


def no_amx_rows(rounds: int) -> dict[str, dict[str, float]]:
    """The bf16 and int4 fast paths timed in a child process whose oneDNN may not use AMX (it reads its ISA cap
    once per process): decode tok/s and prefill ms, medians as in the main run. Empty if the child fails."""
    import json
    import os
    import subprocess

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": NO_AMX}
    res = subprocess.run([sys.executable, __file__, "--child-no-amx", "--rounds", str(rounds)], env=env,
                         capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        print(f"AMX-off child failed: {(res.stderr or '').strip().splitlines()[-1:]}", file=sys.stderr)
        return {}
    return json.loads(lines[-1])


def child_no_amx(rounds: int) -> None:
    import json

    loaded = torchslim.load_model("smollm2-135m")
    fp32, task = loaded.model.eval(), loaded.task
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    bf16, int4 = copy.deepcopy(fp32), int4_model(fp32)
    prepare_fast(bf16)
    out = {}
    with torch.inference_mode():
        for name, m in (("bf16", bf16), ("int4 g128", int4)):
            dec = fast_decoder(m, ids)
            dec()
            row = {"decode tok/s": statistics.median(dec() for _ in range(rounds))}
            for seq in (128, 512):
                x = task.example_inputs(1, seq)
                run = lambda: m(**x, logits_to_keep=1)  # noqa: E731
                row[f"prefill {seq} ms"] = 1e3 * interleaved({name: run}, rounds=5, warm_calls=1)[name]
            out[name] = row
    print(json.dumps(out))


def int4_model(fp32, sizes: dict[str, float] | None = None, source: dict | None = None):
    """The int4-gptq recipe's layout (RTN codes: the same size and speed), on the fast path; its artifact size goes
    into ``sizes`` (measured before the fast path rearranges it, which artifacts refuse)."""
    int4 = copy.deepcopy(fp32)
    head = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel())
    torchslim.quantize_(int4, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(128),
                                               selector=torchslim.Selector(overrides={"lm_head": head})))
    if sizes is not None:
        sizes["int4"] = artifact_bytes(int4, source) / 2**20
    prepare_fast(int4)
    return int4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd fast paths")
    ap.add_argument("--child-no-amx", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_no_amx:
        return child_no_amx(args.rounds)
    kernel_table.ensure()
    loaded = torchslim.load_model("smollm2-135m")
    fp32, tok, task = loaded.model.eval(), loaded.tokenizer, loaded.task
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    sizes = {"fp32": artifact_bytes(fp32, loaded.source) / 2**20}    # artifacts, before any fast-path fusing
    bf16 = copy.deepcopy(fp32)
    prepare_fast(bf16, fuse=False, int8_units=False)
    sizes["bf16"] = artifact_bytes(bf16, loaded.source) / 2**20
    prepare_fast(bf16)
    int4 = int4_model(fp32, sizes, loaded.source)
    int8 = copy.deepcopy(fp32)
    torchslim.quantize_(int8, WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel()))
    sizes["int8"] = artifact_bytes(int8, loaded.source) / 2**20
    prepare_fast(int8)
    models = {"fp32": fp32, "bf16": bf16, "int4 g128 (head int8, tied)": int4, "int8 per channel": int8}
    decoders = {"fp32, HF generate": hf_decoder(fp32, ids), "fp32, fast path": fast_decoder(fp32, ids),
                "bf16, fast path": fast_decoder(bf16, ids), "int4 g128, HF generate": hf_decoder(int4, ids),
                "int4 g128, fast path": fast_decoder(int4, ids), "int8, fast path": fast_decoder(int8, ids)}
    if args.compile:
        for name, m in (("bf16", bf16), ("int4 g128", int4)):
            decoders[f"{name}, fast path compiled"] = fast_decoder(m, ids, compile=True)
    ggufs = llamacpp.make_ggufs(ROOT / "benchmarks/.cache/gguf") if llamacpp.tools() else {}
    peer: dict[str, list[dict[str, float]]] = {t: [] for t in ggufs}
    threads = torch.get_num_threads()

    def peer_decoder(t: str):
        def run() -> float:
            r = llamacpp.bench(ggufs[t], threads, NEW, (128, 512))
            peer[t].append(r)
            return r["tg"]
        return run
    for t in ggufs:
        decoders[f"llama.cpp {t}"] = peer_decoder(t)
    with torch.inference_mode():
        for fn in decoders.values():              # warm-up (and compilation)
            fn()
        runs: dict[str, list[float]] = {k: [] for k in decoders}
        for v in peer.values():
            v.clear()                             # the warm-up call is not a measurement
        for _ in range(args.rounds):
            for k, fn in decoders.items():
                runs[k].append(fn())
        prefill = {}
        for seq in (128, 512):
            x = task.example_inputs(1, seq)
            lat = interleaved({k: (lambda m=m: m(**x, logits_to_keep=1)) for k, m in models.items()}, rounds=5,
                              warm_calls=1)
            prefill[seq] = lat
    amx_off = no_amx_rows(args.rounds) if has_amx() else {}
    bw = copy_bandwidth()
    rows = []
    for k, v in runs.items():
        if k.startswith("llama.cpp "):
            continue
        tps = statistics.median(v)
        model = models[next(m for m in models if k.startswith(m.split(" ")[0]))]
        wbytes = memory_bytes(model)
        values = {"artifact MiB": sizes[k.split(",")[0].split(" ")[0]], "decode tok/s": tps, "decode vs fp32 HF": f"{tps / statistics.median(runs['fp32, HF generate']):.2f}x",
                  "weights MiB": wbytes / 2**20, "bandwidth efficiency": f"{wbytes * tps / bw:.0%}"}
        mkey = next(m for m in models if k.startswith(m.split(" ")[0]))
        for seq in (128, 512):
            values[f"prefill {seq} ms"] = 1e3 * prefill[seq][mkey]
            values[f"prefill {seq} vs fp32"] = f"{prefill[seq]['fp32'] / prefill[seq][mkey]:.2f}x"
        spread = (max(v) - min(v)) / tps
        rows.append(Row(k, f"decode spread {spread:.0%} over {args.rounds} rounds", values))
        print(rows[-1], flush=True)
    for name, r in amx_off.items():
        values = {"decode tok/s": r["decode tok/s"],
                  "decode vs fp32 HF": f"{r['decode tok/s'] / statistics.median(runs['fp32, HF generate']):.2f}x"}
        for seq in (128, 512):
            values[f"prefill {seq} ms"] = r[f"prefill {seq} ms"]
            values[f"prefill {seq} vs fp32"] = f"{1e3 * prefill[seq]['fp32'] / r[f'prefill {seq} ms']:.2f}x"
        rows.append(Row(f"{name}, fast path, AMX off", f"ONEDNN_MAX_CPU_ISA={NO_AMX} in a child process timed right "
                        "after the main rounds: what the AMX tile units add to the rows above", values))
    for t, results in peer.items():
        tps = statistics.median(r["tg"] for r in results)
        values = {"artifact MiB": ggufs[t].stat().st_size / 2**20, "decode tok/s": tps,
                  "decode vs fp32 HF": f"{tps / statistics.median(runs['fp32, HF generate']):.2f}x"}
        for seq in (128, 512):
            ms = 1e3 * seq / statistics.median(r[f"pp{seq}"] for r in results)
            values[f"prefill {seq} ms"] = ms
            values[f"prefill {seq} vs fp32"] = f"{1e3 * prefill[seq]['fp32'] / ms:.2f}x"
        amx_note = ("; prefill by the AMX-off build (the native build's AMX int8 prefill dies with SIGILL here)"
                    if any(r.get("no_amx_prefill") for r in results) else "")
        rows.append(Row(f"llama.cpp {t} (this run)", f"llama-bench, {threads} threads, its own quantizer, no imatrix; "
                        f"spread {(max(runs[f'llama.cpp {t}']) - min(runs[f'llama.cpp {t}'])) / tps:.0%}{amx_note}",
                        values))
    if not peer:
        for name, t in LLAMA_CPP.items():
            rows.append(Row(f"llama.cpp {name} (reference run)", "llama-bench tg128, 2 threads, same machine type, "
                            "2026-11-29; not this run (tools not built here: make llama-cpp)", {"decode tok/s": t}))
    write_table(OUT, "Decode and prefill speed: SmolLM2-135M", f"Greedy decode of {NEW} tokens (median of "
                f"{args.rounds} interleaved rounds), prefill = one forward at 1x128 / 1x512 computing the last position's logits, as generate's first token and "
                "llama-bench's pp test do (median of 5 interleaved, each after an untimed call of the same model). "
                f"Large-copy bandwidth measured here: {bw / 1e9:.1f} GB/s. Regenerate: "
                "`python benchmarks/speed/smollm2.py`.",
                ["artifact MiB", "decode tok/s", "decode vs fp32 HF", "weights MiB", "bandwidth efficiency", "prefill 128 ms",
                 "prefill 128 vs fp32", "prefill 512 ms", "prefill 512 vs fp32"], rows,
                ["'weights MiB' is every parameter and buffer the model holds (read once per token by decode).",
                 "Kernel table for this machine: " + "; ".join(f"{f}: {kernel_table.short(f)}" for f in
                                                                 ("int4-g128", "int8-channel"))])


if __name__ == "__main__":
    main()
