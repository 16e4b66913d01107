"""MiniLM (all-MiniLM-L6-v2) W8A8 benchmark against fp32 and ONNX Runtime, side by side in one run.

Embedding fidelity = mean cosine to the fp32 model's embeddings on real sentences (GPL-3 text).
Latency at batch 1 x 128 and batch 32 x 128 tokens, medians of interleaved rounds.
Regenerates docs/results/quantization_minilm.md (+ .json).
"""
from __future__ import annotations

import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, Row, artifact_bytes, interleaved, write_table  # noqa: E402

import torchslim  # noqa: E402
from torchslim.quantization import CastConfig, W8A8Config  # noqa: E402

warnings.filterwarnings("ignore")
SHAPES = ((1, 128), (32, 128))


class OrtModel(nn.Module):
    """Runs an ONNX Runtime session behind the ``model(input_ids=, attention_mask=)`` interface."""

    def __init__(self, path: Path, threads: int, disabled: list[str] | None = None):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=disabled or [])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        return (torch.from_numpy(out[0]),)


def export_onnx(model: nn.Module, folder: Path) -> tuple[Path, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Wrap(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    fp32 = folder / "minilm.onnx"
    ids = torch.ones(2, 16, dtype=torch.long)
    # the wrapper in eval mode: the exporter restores the wrapper's mode afterwards, recursively, and a fresh
    # module is in training mode, which would leave ``model`` with dropout on for every later timing
    torch.onnx.export(Wrap(model).eval(), (ids, ids), str(fp32), input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], dynamic_axes={"input_ids": {0: "b", 1: "s"},
                                                                        "attention_mask": {0: "b", 1: "s"}},
                      opset_version=17, dynamo=False)
    int8 = folder / "minilm.int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return fp32, int8


def main() -> None:
    loaded = torchslim.load_model("minilm")
    base, task = loaded.model, loaded.task
    calib = task
    variants = {
        "fp32": None,
        "bf16 (torchslim cast)": CastConfig(dtype=torch.bfloat16),
        "W8A8 dynamic (torchslim)": W8A8Config(),
        "W8A8 dynamic + SmoothQuant 0.5 (torchslim)": W8A8Config(smooth_alpha=0.5),
    }
    models, rows = {}, []
    for name, cfg in variants.items():
        m = copy.deepcopy(base)
        t = time.perf_counter()
        if cfg is not None:
            torchslim.quantize_(m, cfg, calibration=calib)
        secs = time.perf_counter() - t
        models[name] = m
        rows.append(Row(name, "", {"artifact MB": artifact_bytes(m, loaded.source) / 1e6, "compress s": secs}))
    tmp = Path(tempfile.mkdtemp())
    fp32_onnx, int8_onnx = export_onnx(base, tmp)
    threads = torch.get_num_threads()
    for name, path in (("ONNX Runtime fp32 (peer)", fp32_onnx), ("ONNX Runtime dynamic int8 (peer)", int8_onnx)):
        models[name] = OrtModel(path, threads)
        rows.append(Row(name, f"intra_op_num_threads={threads}", {"artifact MB": path.stat().st_size / 1e6}))
    for r in rows:
        q = task.evaluate(models[r.name])
        r.values.update({"cosine fidelity": q["cosine_fidelity"], "min cosine": q["min_cosine"],
                         "nn agreement": q["nn_agreement"]})
    for b, s in SHAPES:
        x = task.example_inputs(b, s)
        with torch.inference_mode():
            lat = interleaved({k: (lambda m=m: m(**x)) for k, m in models.items()}, rounds=7, settle_s=0.05,
                             warm_calls=1)
        for r in rows:
            r.values[f"{b}x{s} ms"] = 1e3 * lat[r.name]
            r.values[f"{b}x{s} speedup"] = f"{lat['fp32'] / lat[r.name]:.2f}x"
    cols = ["cosine fidelity", "min cosine", "nn agreement", "artifact MB"] + [
        f"{b}x{s} {k}" for b, s in SHAPES for k in ("ms", "speedup")]
    write_table(ROOT / "docs/results/quantization_minilm.md", "Quantization: MiniLM (all-MiniLM-L6-v2)",
                "Cosine fidelity to the fp32 model's normalized mean-pooled embeddings on 124 GPL-3 sentences; "
                "latency medians of 7 interleaved rounds per shape (each timed call after an untimed 50 ms pause, for ONNX "
                "Runtime's spinning threads to stop, and one untimed call of the same variant), ratios to torch fp32 "
                "in the same run. "
                "ONNX Runtime peers use the same thread count. Regenerate: `python benchmarks/quantization/minilm.py`.",
                cols, rows, ["W8A8 quantizes the 36 encoder linears; attention matmuls, softmax, GELU and "
                             "LayerNorm stay fp32 in both torchslim and ONNX Runtime's dynamic int8."])


if __name__ == "__main__":
    main()
