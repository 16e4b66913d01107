"""ONNX Runtime (CPU) running an exported ``.onnx`` graph as a model-like module."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from torchslim.runtime.backends.graph import OnnxGraphModel


class OrtModel(OnnxGraphModel):
    """An ONNX file run by ONNX Runtime (CPU execution provider). ``threads``: intra-op threads (default: ONNX
    Runtime's choice, one per physical core). ``options``: ``SessionOptions`` attributes to set
    (``{"graph_optimization_level": ...}``); a dotted key is a session config entry
    (``{"session.intra_op.allow_spinning": "0"}``: worker threads sleep after a run instead of spinning, so they do
    not slow whatever is timed next)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, options: dict[str, Any] | None = None):
        super().__init__(path)
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        for key, value in (options or {}).items():
            if "." in key:
                so.add_session_config_entry(key, str(value))
            else:
                setattr(so, key, value)
        self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        inputs = list(self.session.get_inputs())
        self.input_names = [i.name for i in inputs]
        self.input_shapes = {i.name: list(i.shape) for i in inputs}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)
