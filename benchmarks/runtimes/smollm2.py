"""SmolLM2-135M int4 in two runtimes, one harness: torch (int4 per group of 128 on its packed kernel; int4 per group
of 32 on Q4_0's grid) against llama.cpp through the llama-cpp-python bindings (torchslim's GGUF export: Q4_0 keeping
the torch g32 row's codes, and F32), with torch fp32 as the reference.

Every row's perplexity is computed by the same task code (``CausalLMTask.evaluate`` on each runtime's logits) on two
domains: GPL-3 and Python's held-out reference topics, 512-token windows. Decode: the task's own ``decode`` (greedy,
32 new tokens after its prompt, through each runner's ``generate``), rounds interleaved across variants, medians.
Prefill: the task's forward at 1 x 128 and 1 x 512 tokens (logits of every position in every runtime) timed by
``torchslim.runtime.timing.measure_interleaved``; tokens/s from the median. Decode and prefill timing hold the shared
benchmark lock (``/tmp/torchslim-bench.lock``); perplexity is computed before, outside it. Writes docs/results/runtimes_smollm2.md
(+ .json).
"""
from __future__ import annotations

import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

# Worker threads sleep between runs in every runtime (ONNX Runtime: allow_spinning=0, see common_rt): torch's OpenMP
# threads otherwise spin at each barrier, and on a machine shared with other work a 2-thread forward measured up to
# 300x slower than with sleeping threads (tiny-llama 1x32: 814 ms against 2.8 ms median under load average 15).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Row  # noqa: E402
from common_rt import interleaved_forwards, machine, timing_lock  # noqa: E402
from minilm import write  # noqa: E402

import torchslim  # noqa: E402
from torchslim import WeightOnlyConfig  # noqa: E402
from torchslim.artifact.export_gguf import write_gguf  # noqa: E402
from torchslim.data.text import pydoc_text  # noqa: E402
from torchslim.quantization import IntFormat, PerGroup  # noqa: E402
from torchslim.runtime.backends import available, open_file  # noqa: E402
from torchslim.tasks.causal_lm import CausalLMTask  # noqa: E402
from torchslim.zoo.smollm2 import gguf_path  # noqa: E402

warnings.filterwarnings("ignore")
SMOKE = os.environ.get("TORCHSLIM_BENCH_SMOKE") == "1"
WINDOWS = 2 if SMOKE else 8
DECODE_TOKENS, DECODE_ROUNDS = (8, 2) if SMOKE else (32, 3)
PREFILL = ((1, 128), (1, 512))
WARMUP, ITERS = (1, 3) if SMOKE else (1, 5)
OUT = Path("/tmp/runtimes_smollm2.md") if SMOKE else ROOT / "docs/results/runtimes_smollm2.md"
N_CTX = 512 + 128


def variants(fp32, task, tmp: Path, threads: int) -> dict[str, tuple[torch.nn.Module, str]]:
    body = torchslim.Selector(exclude=("lm_head",))          # the head is the tied embedding: left in fp32
    g128 = copy.deepcopy(fp32)
    torchslim.quantize_(g128, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(128),
                                               selector=body))
    g32 = copy.deepcopy(fp32)
    torchslim.quantize_(g32, WeightOnlyConfig(format=IntFormat(4), granularity=PerGroup(32), selector=body))
    out = {"torch fp32 (reference)": (fp32, "HF generate"),
           "torch int4 g128 (packed kernel)": (g128, "RTN asymmetric int4 per 128, _weight_int4pack_mm; head fp32"),
           "torch int4 g32 (Q4_0's grid)": (g32, "RTN symmetric int4 per 32: the Q4_0 row's codes; head fp32; "
                                                 "no packed kernel for g32 (dequantized per call)")}
    if not available("llamacpp"):
        return out
    done = write_gguf(g32, tmp / "q4_0.gguf", qtype="Q4_0", embed_type="Q8_0", source_gguf=gguf_path(),
                      name="smollm2-135m")
    out["llama.cpp Q4_0 (bindings)"] = (open_file("llamacpp", tmp / "q4_0.gguf", threads=threads, n_ctx=N_CTX),
                                        f"torchslim GGUF export of the g32 row: {done['exact_layers']} layers keep "
                                        "their codes; token embedding / tied head Q8_0")
    write_gguf(fp32, tmp / "f32.gguf", qtype="F32", embed_type="F32", source_gguf=gguf_path(), name="smollm2-135m")
    out["llama.cpp F32 (bindings)"] = (open_file("llamacpp", tmp / "f32.gguf", threads=threads, n_ctx=N_CTX),
                                       "torchslim GGUF export of the fp32 model")
    return out


def decode_rounds(made: dict, task: CausalLMTask) -> dict[str, dict[str, float]]:
    """The task's decode timing, one call per variant per round (A B C A B C ...); medians."""
    got: dict[str, dict[str, list[float]]] = {k: {"tok/s": [], "ttft": []} for k in made}
    for _ in range(DECODE_ROUNDS):
        for name, (m, _) in made.items():
            st = task.decode(m, DECODE_TOKENS)
            got[name]["tok/s"].append(st.tokens_per_s)
            got[name]["ttft"].append(1e3 * st.prefill_s)
    return {k: {"decode tok/s": statistics.median(v["tok/s"]), "first token ms": statistics.median(v["ttft"]),
                "decode spread": (max(v["tok/s"]) - min(v["tok/s"])) / statistics.median(v["tok/s"])}
            for k, v in got.items()}


def main() -> None:
    threads, load = torch.get_num_threads(), os.getloadavg()
    loaded = torchslim.load_model("smollm2-135m")
    fp32, tok = loaded.model.eval(), loaded.tokenizer
    tasks = {"GPL-3": CausalLMTask(tok, seq_len=512, max_eval_windows=WINDOWS),
             "pydoc": CausalLMTask(tok, seq_len=512, max_eval_windows=WINDOWS, eval_text=pydoc_text(True))}
    tmp = Path(tempfile.mkdtemp(prefix="bench-runtimes-smollm2-"))
    made = variants(fp32, tasks["GPL-3"], tmp, threads)
    rows = {name: Row(name, note) for name, (_, note) in made.items()}
    for name, (m, _) in made.items():
        rows[name].values["MB"] = m.file_bytes() / 1e6 if hasattr(m, "file_bytes") else None
        for domain, t in tasks.items():
            t0 = time.perf_counter()
            rows[name].values[f"ppl {domain}"] = t.evaluate(m)["perplexity"]
            print(f"{name} {domain}: {rows[name].values[f'ppl {domain}']:.3f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    with timing_lock() as lock_note:
        decoded = decode_rounds(made, tasks["GPL-3"])
        prefill = {(b, s): interleaved_forwards({k: m for k, (m, _) in made.items()}, tasks["GPL-3"], b, s, WARMUP,
                                                ITERS) for b, s in PREFILL}
    for name, v in decoded.items():
        rows[name].values.update(v)
        rows[name].values["decode spread"] = f"{100 * v['decode spread']:.0f}%"
    ref_decode = rows["torch fp32 (reference)"].values["decode tok/s"]
    for name in rows:
        rows[name].values["decode vs fp32"] = f"{rows[name].values['decode tok/s'] / ref_decode:.2f}x"
    for (b, s), stats in prefill.items():
        for name, st in stats.items():
            rows[name].values[f"prefill {s} tok/s"] = b * s * 1e3 / st.median_ms
        print(f"prefill {b}x{s}: " + ", ".join(f"{k} {v.median_ms:.0f} ms" for k, v in stats.items()), flush=True)
    cols = ["ppl GPL-3", "ppl pydoc", "MB", "decode tok/s", "decode vs fp32", "decode spread", "first token ms"]
    cols += [f"prefill {s} tok/s" for _, s in PREFILL]
    info = machine(load)
    notes = [lock_note, f"threads: {threads} for every runtime (torch.set_num_threads; llama.cpp n_threads and n_threads_batch)",
             f"perplexity: CausalLMTask.evaluate on each runtime's logits, {WINDOWS} non-overlapping 512-token windows "
             "per text (GPL-3; Python's held-out reference topics), no BOS, the same token ids in every runtime",
             f"decode: CausalLMTask.decode (greedy, {DECODE_TOKENS} new tokens after its prompt; tokens/s excludes the "
             f"first token), {DECODE_ROUNDS} rounds interleaved across rows, medians; llama.cpp rows generate through "
             "the adapter's generate (arg-max of llama.cpp's logits, its key/value cache)",
             f"prefill: one forward over 1 x 128 and 1 x 512 tokens returning every position's logits, "
             f"measure_interleaved ({WARMUP} warm-up, {ITERS} timed rounds), tokens / median",
             f"torch OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} (its threads sleep between runs: spinning ones made "
             "2-thread forwards up to 300x slower on this shared machine); llama.cpp keeps its own thread pool",
             "torch int4 rows are round-to-nearest (no calibration): the runtime comparison, not the best int4 quality",
             "MB: bytes of the GGUF file llama.cpp reads (torch rows: see docs/results/speed_smollm2.md)",
             "llama.cpp multiplies Q4_0 weights by activations rounded to 8 bits (Q8_0) and its Q4_0 file stores the "
             "tied embedding/head in Q8_0: the Q4_0 row and the torch g32 row share the int4 codes, not the head"]
    write(OUT, cols, list(rows.values()), notes, info, title="Runtimes: SmolLM2-135M int4 in torch and llama.cpp")


if __name__ == "__main__":
    main()
