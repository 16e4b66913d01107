"""Exported files as callable models, so a task can evaluate what was written rather than what was meant to be
written: an ONNX graph run by ONNX Runtime, a GGUF file's weights as transformers' GGUF reader dequantizes them, a
Hugging Face folder as ``from_pretrained`` loads it. Each is an ``nn.Module`` whose ``forward(**batch)`` takes the
keyword inputs a task feeds (``input_ids``, ``attention_mask``, ...) and returns outputs that read by name or
position (``out.logits``, ``out[0]``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.core.errors import TorchSlimError


class Outputs(tuple):
    """A tuple of output tensors that also reads by output name (``out.logits``), as a transformers output does."""

    names: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name in self.names:
            return self[self.names.index(name)]
        raise AttributeError(name)


def _outputs(names: list[str], values: list[Any]) -> Outputs:
    out = Outputs(torch.from_numpy(np.asarray(v)) for v in values)
    out.names = tuple(names)
    return out


class OrtModel(nn.Module):
    """An ONNX file run by ONNX Runtime (CPU). Inputs are fed by name; a decoder graph's ``past_key_values.*`` get an
    empty cache and ``position_ids`` count from 0, so one call scores whole sequences as the torch model does."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.inputs = list(self.session.get_inputs())
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _feed(self, name: str, shape: list[Any], kw: dict[str, Any]) -> np.ndarray:
        if name in kw:
            value = kw[name]
            return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        ids = next((v for k, v in kw.items() if k in ("input_ids", "pixel_values") and v is not None), None)
        if ids is None:
            raise TorchSlimError(f"{self.path.name}: the graph needs input {name!r}, which the task does not give")
        batch = ids.shape[0]
        if name.startswith("past_key_values."):
            heads, dim = shape[1], shape[3]
            if not isinstance(heads, int) or not isinstance(dim, int):
                raise TorchSlimError(f"{self.path.name}: past input {name!r} has no fixed heads/head size")
            return np.zeros((batch, heads, 0, dim), np.float32)
        if name == "position_ids":
            return np.tile(np.arange(ids.shape[1], dtype=np.int64), (batch, 1))
        raise TorchSlimError(f"{self.path.name}: the graph needs input {name!r}, which the task does not give")

    def forward(self, *args: Any, **kw: Any) -> Outputs:
        if args:                                 # positional inputs (a vision model's pixels) in graph order
            kw = {**{i.name: a for i, a in zip(self.inputs, args)}, **kw}
        feeds = {i.name: self._feed(i.name, list(i.shape), kw) for i in self.inputs}
        return _outputs(self.output_names, self.session.run(None, feeds))


def ort_model(path: str | Path) -> OrtModel:
    """The graph that scores whole inputs: ``path`` itself, or ``model.onnx`` in an exported decoder folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.onnx").is_file():
            raise TorchSlimError(f"{path}: an encoder-decoder folder (encoder, decoder and decoder-with-past graphs) "
                                 "is not evaluated as one model")
        path = path / "model.onnx"
    return OrtModel(path)


def gguf_model(path: str | Path) -> nn.Module:
    """The GGUF file's model as transformers reads it: every tensor dequantized from its stored type (the weights
    llama.cpp multiplies by, computed here in float32 where llama.cpp rounds activations to 8 bits)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                     local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise TorchSlimError(f"transformers cannot read this GGUF file ({str(e).splitlines()[0][:160]})") from None
    return model.eval()
