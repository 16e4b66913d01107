"""MiniLM int8 in three runtimes, one harness: torch W8A8 (torchslim) against ONNX Runtime (torchslim's W8A8 export,
and ONNX Runtime's own dynamic int8 quantizer) and OpenVINO (reading the same ONNX files; its f32, bf16 and fp16-weight
modes), with torch fp32 as the reference.

Every row's quality is computed by the same task code (``SentenceEmbeddingTask.evaluate``: cosine of normalized
mean-pooled embeddings to the fp32 torch model's) on two domains: the GPL-3 sentences and sentences of Python's
reference topics. Latency: the task's forward at 1 x 128 and 32 x 128 tokens, every runtime interleaved in one
process by ``torchslim.runtime.timing.measure_interleaved``; medians. The timed loops hold the shared benchmark lock
(``/tmp/torchslim-bench.lock``, as ``flock`` takes it); quality is computed before, outside it. Writes docs/results/runtimes_minilm.md
(+ .json).
"""
from __future__ import annotations

import copy
import json
import os
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
from common_rt import ORT_QUIET, interleaved_forwards, machine, pydoc_sentences, timing_lock  # noqa: E402

import torchslim  # noqa: E402
from torchslim.exports import export_for_runtime  # noqa: E402
from torchslim.quantization import W8A8Config  # noqa: E402
from torchslim.runtime.backends import available, open_file  # noqa: E402
from torchslim.tasks.embedding import SentenceEmbeddingTask  # noqa: E402

warnings.filterwarnings("ignore")
SHAPES = ((1, 128), (32, 128))
SMOKE = os.environ.get("TORCHSLIM_BENCH_SMOKE") == "1"          # a quick check of the script, not a table
WARMUP, ITERS = (1, 3) if SMOKE else (2, 9)
OUT = Path("/tmp/runtimes_minilm.md") if SMOKE else ROOT / "docs/results/runtimes_minilm.md"


def files(base, w8a8, task, tmp: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = export_for_runtime(base, "onnxruntime", tmp / "fp32", task=task)
    ours = export_for_runtime(w8a8, "onnxruntime", tmp / "w8a8", task=task)
    theirs = tmp / "ort_int8.onnx"
    quantize_dynamic(str(fp32), str(theirs), weight_type=QuantType.QInt8)
    return {"fp32": fp32, "w8a8": ours, "ort_int8": theirs}


def runners(base, w8a8, f: dict[str, Path], threads: int) -> dict[str, tuple[torch.nn.Module, str]]:
    """name -> (model-like module, how it was made)."""
    out = {"torch fp32 (reference)": (base, "eager"),
           "torch W8A8 (torchslim)": (w8a8, "W8A8Config(): dynamic per-token int8 activations, per-channel weights")}
    ort = lambda p: open_file("onnxruntime", p, threads=threads, options=ORT_QUIET)  # noqa: E731
    out["ONNX Runtime fp32"] = (ort(f["fp32"]), "torchslim ONNX export of the fp32 model")
    out["ONNX Runtime, torchslim W8A8 export"] = (ort(f["w8a8"]), "the torch W8A8 row's codes: MatMulIntegerToFloat")
    out["ONNX Runtime dynamic int8 (its quantizer)"] = (ort(f["ort_int8"]), "quantize_dynamic(QInt8) of the fp32 file")
    if available("openvino"):
        ov = lambda p, **kw: open_file("openvino", p, threads=threads, **kw)  # noqa: E731
        out["OpenVINO fp32"] = (ov(f["fp32"]), "the fp32 ONNX file, INFERENCE_PRECISION_HINT f32")
        out["OpenVINO, torchslim W8A8 export"] = (ov(f["w8a8"]), "the same file as ONNX Runtime's W8A8 row")
        out["OpenVINO, ONNX Runtime's int8 file"] = (ov(f["ort_int8"]), "quantize_dynamic's file")
        out["OpenVINO fp32 file, bf16 compute"] = (ov(f["fp32"], config={"INFERENCE_PRECISION_HINT": "bf16"}),
                                                  "its own reduced precision (avx512_bf16)")
        out["OpenVINO fp16 weights"] = (ov(f["fp32"], compress_to_fp16=True), "ov.save_model(compress_to_fp16=True)")
    return out


def main() -> None:
    torch.manual_seed(0)
    threads, load = torch.get_num_threads(), os.getloadavg()
    loaded = torchslim.load_model("minilm")
    base, task = loaded.model.eval(), loaded.task
    w8a8 = copy.deepcopy(base)
    torchslim.quantize_(w8a8, W8A8Config(), calibration=task)
    tasks = {"GPL-3": task, "pydoc": SentenceEmbeddingTask(loaded.tokenizer, base, eval_sentences=pydoc_sentences())}
    tmp = Path(tempfile.mkdtemp(prefix="bench-runtimes-minilm-"))
    f = files(base, w8a8, task, tmp)
    made = runners(base, w8a8, f, threads)
    rows = {name: Row(name, note) for name, (_, note) in made.items()}
    for name, (m, _) in made.items():
        rows[name].values["MB"] = m.file_bytes() / 1e6 if hasattr(m, "file_bytes") else None
        for domain, t in tasks.items():
            t0 = time.perf_counter()
            q = t.evaluate(m)
            rows[name].values[f"cosine {domain}"] = q["cosine_fidelity"]
            rows[name].values[f"min cosine {domain}"] = q["min_cosine"]
            print(f"{name} {domain}: {q['cosine_fidelity']:.5f} ({time.perf_counter() - t0:.1f} s)", flush=True)
    with timing_lock() as lock_note:
        timings = {(b, s): interleaved_forwards({k: m for k, (m, _) in made.items()}, task, b, s, WARMUP, ITERS)
                   for b, s in SHAPES}
    for (b, s), stats in timings.items():
        ref = stats["torch fp32 (reference)"].median_ms
        for name, st in stats.items():
            rows[name].values[f"{b}x{s} ms"] = st.median_ms
            rows[name].values[f"{b}x{s} vs torch fp32"] = f"{ref / st.median_ms:.2f}x"
            rows[name].values[f"{b}x{s} p90/median"] = round(st.p90_ms / st.median_ms, 2)
        print(f"{b}x{s}: " + ", ".join(f"{k} {v.median_ms:.1f}" for k, v in stats.items()), flush=True)
    cols = ["cosine GPL-3", "min cosine GPL-3", "cosine pydoc", "min cosine pydoc", "MB"]
    cols += [f"{b}x{s} {k}" for b, s in SHAPES for k in ("ms", "vs torch fp32", "p90/median")]
    info = machine(load)
    notes = [lock_note, f"threads: {threads} for every runtime (torch.set_num_threads, ONNX Runtime intra_op_num_threads, "
             "OpenVINO INFERENCE_NUM_THREADS)",
             "quality: the task's own evaluate() on each runtime's outputs (SentenceEmbeddingTask: cosine of "
             f"normalized mean-pooled embeddings to torch fp32's; {len(task.sentences('eval'))} GPL-3 sentences and "
             f"{len(tasks['pydoc'].sentences('eval'))} sentences of Python's held-out reference topics)",
             f"latency: torchslim.runtime.timing.measure_interleaved over the harness's forward_fn, {WARMUP} warm-up "
             f"rounds and {ITERS} timed rounds per shape, all variants round-robin; medians",
             f"worker threads sleep between runs in every runtime: torch OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
             "ONNX Runtime session.intra_op.allow_spinning=0 (spinning workers slow whichever variant runs next, and "
             "on a machine shared with other work they made torch's 2-thread forwards up to 300x slower)",
             "OpenVINO has no int8/int4 weight compression of its own without NNCF (not a torchslim dependency): its "
             "own options here are bf16 compute and fp16 weight storage; its int8 rows read the int8 ONNX files",
             "MB: bytes of the file the runtime reads; torch rows: see docs/results/speed_minilm.md for artifact sizes"]
    write(OUT, cols, list(rows.values()), notes, info)


def write(path: Path, cols: list[str], rows: list[Row], notes: list[str], info: dict,
          title: str = "Runtimes: MiniLM int8 in torch, ONNX Runtime and OpenVINO") -> None:
    from common import _fmt

    lines = [f"# {title}", "",
             "One harness: every row's quality from the same task code, every latency from the same interleaved "
             "loop. Regenerate: `make bench-runtimes`.", "", f"Machine: {info['line']}", "",
             "| variant | " + " | ".join(cols) + " | notes |", "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        lines.append(f"| {r.name} | " + " | ".join(_fmt(r.values.get(c)) for c in cols) + f" | {r.note} |")
    lines += [""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps({"machine": info, "columns": cols, "rows": [
        {"name": r.name, "note": r.note, **r.values} for r in rows], "notes": notes}, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
