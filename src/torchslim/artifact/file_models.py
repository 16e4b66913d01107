"""Exported files as callable models, so a task can evaluate what was written rather than what was meant to be
written: an ONNX graph run by ONNX Runtime (the adapter of ``torchslim.runtime.backends``, which also runs OpenVINO
and llama.cpp), a GGUF file's weights as transformers' GGUF reader dequantizes them, a Hugging Face folder as ``from_pretrained`` loads it. Each is an ``nn.Module`` whose ``forward(**batch)`` takes the
keyword inputs a task feeds (``input_ids``, ``attention_mask``, ...) and returns outputs that read by name or
position (``out.logits``, ``out[0]``)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from torchslim.core.errors import TorchSlimError
from torchslim.runtime.backends.graph import Outputs  # noqa: F401 - re-exported
from torchslim.runtime.backends.ort import OrtModel


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
