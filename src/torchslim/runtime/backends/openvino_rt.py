"""OpenVINO (CPU) running an exported ``.onnx`` graph (OpenVINO reads ONNX directly) as a model-like module.

OpenVINO's own compression without extra tools: ``compress_to_fp16`` stores the weights in fp16 (``ov.save_model``'s
default); ``config`` passes CPU plugin properties such as ``{"INFERENCE_PRECISION_HINT": "bf16"}`` (compute in bf16
on CPUs with avx512_bf16 / AMX) or ``{"DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"}`` (int8 activations for layers whose
weights are stored compressed, such as the int4 / int8 weight-only layers of a torchslim export). By default
inference runs in f32, as torch and ONNX Runtime do, so a comparison is of runtimes and not of precisions.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from torchslim.runtime.backends.graph import OnnxGraphModel


def _dims(partial: Any) -> list[Any]:
    return [d.get_length() if d.is_static else None for d in partial]


class OpenVinoModel(OnnxGraphModel):
    """An ONNX file compiled by OpenVINO for the CPU. ``threads``: inference threads (default: OpenVINO's).
    ``config``: more CPU plugin properties (they override the defaults: f32 precision, latency hint).
    ``compress_to_fp16``: convert the weights to fp16 first (OpenVINO's IR default)."""

    runtime = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, config: dict[str, Any] | None = None,
                 compress_to_fp16: bool = False):
        super().__init__(path)
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(self.path))
        if compress_to_fp16:
            with tempfile.TemporaryDirectory(prefix="torchslim-ov-") as d:
                ir = Path(d) / "model.xml"
                ov.save_model(model, str(ir), compress_to_fp16=True)
                model = core.read_model(str(ir))
                self._ir_bytes = sum(p.stat().st_size for p in Path(d).iterdir())
        props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            props["INFERENCE_NUM_THREADS"] = int(threads)
        props.update(config or {})
        self.config = {k: str(v) for k, v in props.items()}
        self.compiled = core.compile_model(model, "CPU", props)
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in model.inputs]
        self.input_shapes = {p.get_any_name(): _dims(p.get_partial_shape()) for p in model.inputs}
        self.output_names = [p.get_any_name() for p in model.outputs]

    def file_bytes(self) -> int:
        return getattr(self, "_ir_bytes", None) or super().file_bytes()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.request.infer(feeds)
        return [self.request.get_output_tensor(i).data.copy() for i in range(len(self.output_names))]
