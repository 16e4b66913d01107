"""What every runtime adapter shares: a model-like ``nn.Module`` over an exported file.

A task evaluates a model by calling ``model(**batch)`` (``input_ids``, ``attention_mask``, ...) and reading
``out.logits`` / ``out.last_hidden_state`` / ``out[0]``; it times generation with ``model.generate(ids,
max_new_tokens=n, ...)``. An adapter answers both, so quality, latency and decode speed of a file in ONNX Runtime,
OpenVINO or llama.cpp are measured by the same task and timing code as the torch model.

:class:`OnnxGraphModel` holds what ONNX Runtime and OpenVINO share (both run the same ``.onnx`` graph): feeding
inputs by name (an empty key/value cache and counted positions when the task does not give them) and greedy
generation through the graph's ``present.*`` outputs; each runtime only says how to run one set of feeds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.core.errors import TorchSlimError

PAST = "past_key_values."
PRESENT = "present."


class Outputs(tuple):
    """A tuple of output tensors that also reads by output name (``out.logits``), as a transformers output does."""

    names: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name in self.names:
            return self[self.names.index(name)]
        raise AttributeError(name)


def outputs(names: list[str], values: list[Any]) -> Outputs:
    """``values`` (numpy arrays the runtime no longer writes to) as torch tensors readable by ``names``."""
    out = Outputs(torch.from_numpy(np.asarray(v)) for v in values)
    out.names = tuple(names)
    return out


def as_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class FileModel(nn.Module):
    """An exported file run by another runtime. ``runtime`` names it in reports; ``path`` is the file run."""

    runtime = "file"

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    def file_bytes(self) -> int:
        """Bytes on disk of what the runtime reads (the file, plus an ONNX graph's external data beside it)."""
        files = [self.path] + [p for p in self.path.parent.glob(self.path.name + ".data")]
        return sum(p.stat().st_size for p in files if p.is_file())


class OnnxGraphModel(FileModel):
    """An ONNX graph fed by input name. Subclasses set ``input_names``, ``input_shapes`` (name -> dims, ``None`` or
    a string for a dynamic one), ``output_names`` and implement :meth:`run`."""

    input_names: list[str]
    input_shapes: dict[str, list[Any]]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs (in ``output_names`` order) for ``feeds``."""
        raise NotImplementedError

    def _feed(self, name: str, kw: dict[str, Any]) -> np.ndarray:
        if name in kw and kw[name] is not None:
            return as_numpy(kw[name])
        ids = next((v for k, v in kw.items() if k in ("input_ids", "pixel_values") and v is not None), None)
        if ids is None:
            raise TorchSlimError(f"{self.path.name}: the graph needs input {name!r}, which the task does not give")
        batch = ids.shape[0]
        if name.startswith(PAST):
            shape = self.input_shapes[name]
            heads, dim = shape[1], shape[3]
            if not isinstance(heads, int) or not isinstance(dim, int):
                raise TorchSlimError(f"{self.path.name}: past input {name!r} has no fixed heads/head size")
            return np.zeros((batch, heads, 0, dim), np.float32)
        if name == "position_ids":
            return np.tile(np.arange(ids.shape[1], dtype=np.int64), (batch, 1))
        if name == "attention_mask":
            return np.ones(tuple(ids.shape[:2]), np.int64)
        raise TorchSlimError(f"{self.path.name}: the graph needs input {name!r}, which the task does not give")

    def forward(self, *args: Any, **kw: Any) -> Outputs:
        if args:                                 # positional inputs (a vision model's pixels) in graph order
            kw = {**dict(zip(self.input_names, args)), **kw}
        feeds = {name: self._feed(name, kw) for name in self.input_names}
        return outputs(self.output_names, self.run(feeds))

    # ------------------------------------------------------------------ generation
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32, min_new_tokens: int | None = None,
                 **_: Any) -> torch.Tensor:
        """Greedy generation of exactly ``max_new_tokens`` tokens (the task's decode timing calls this as it calls
        transformers' ``generate``): the prompt once with an empty cache, then one token at a time with the
        graph's ``present.*`` outputs fed back as ``past_key_values.*``."""
        if "logits" not in self.output_names or not any(n.startswith(PAST) for n in self.input_names):
            raise TorchSlimError(f"{self.path.name}: not a decoder graph with a key/value cache; cannot generate")
        ids = as_numpy(input_ids).astype(np.int64)
        feeds = {name: self._feed(name, {"input_ids": input_ids}) for name in self.input_names}
        out, tokens = [], ids
        for step in range(max_new_tokens):
            values = dict(zip(self.output_names, self.run(feeds)))
            nxt = values["logits"][:, -1].argmax(-1).astype(np.int64)[:, None]
            out.append(nxt)
            total = tokens.shape[1] + 1
            tokens = np.concatenate([tokens, nxt], 1)
            if step + 1 == max_new_tokens:
                break
            feeds = {"input_ids": nxt, "attention_mask": np.ones((ids.shape[0], total), np.int64)}
            if "position_ids" in self.input_names:
                feeds["position_ids"] = np.full((ids.shape[0], 1), total - 1, np.int64)
            for name in self.input_names:
                if name.startswith(PAST):
                    feeds[name] = values[PRESENT + name[len(PAST):]]
        return torch.from_numpy(np.concatenate([ids, *out], 1))
