"""Export entry points that start from a model's name or folder: they load it (``torchslim.load_model``), then hand
the model to the artifact layer's writers (``artifact.export_gguf.write_gguf``, ``artifact.export_onnx.write_onnx``),
which take a model and know nothing of where models come from."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from torchslim.artifact.export_gguf import write_gguf
from torchslim.artifact.export_onnx import write_onnx
from torchslim.core.errors import ConfigError
from torchslim.models import load_model
from torchslim.zoo.registry import get_entry


def export_gguf(artifact: str | Path, out: str | Path, qtype: str = "Q4_0", embed_type: str = "Q8_0",
                source_gguf: str | Path | None = None) -> dict[str, Any]:
    """Write the Llama-family artifact (or model folder / zoo name) ``artifact`` as the GGUF file ``out``."""
    loaded = load_model(str(artifact))
    source_gguf = Path(source_gguf) if source_gguf else _source_gguf(loaded.source)
    return write_gguf(loaded.model, out, qtype=qtype, embed_type=embed_type, tokenizer=loaded.tokenizer,
                      source_gguf=source_gguf, name=loaded.name)


def export_onnx(model_spec: str | Path, out: str | Path, example_inputs: Any = None) -> dict[str, Any]:
    """Write ``model_spec`` (an artifact, model folder or zoo name) for ONNX Runtime at ``out``: a folder for causal
    LMs and encoder-decoders, else one ``.onnx`` file whose inputs come from the model's task or ``example_inputs``
    (a tensor, tuple or dict of tensors; see :func:`example_inputs_from`)."""
    loaded = load_model(str(model_spec))
    return write_onnx(loaded.model, out, loaded.task, example_inputs=example_inputs, tokenizer=loaded.tokenizer)


_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16, "int64": torch.long,
           "long": torch.long, "int32": torch.int32, "bool": torch.bool}


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise ConfigError(f"shape {text!r}: expected positive sizes joined by x, such as 1x3x32x32")
    return dims


def example_inputs_from(shapes: list[str] | None = None, inputs: list[str] | None = None) -> Any:
    """Example inputs from the CLI: ``shapes`` (``1x3x32x32``, one float tensor per positional input) or ``inputs``
    (``NAME=SHAPE[:DTYPE]``, named; integer inputs hold zeros, float ones random values); None when neither."""
    if shapes and inputs:
        raise ConfigError("give --shape (positional inputs) or --input (named inputs), not both")
    g = torch.Generator().manual_seed(0)
    if shapes:
        return tuple(torch.randn(_shape(s), generator=g) for s in shapes)
    if not inputs:
        return None
    named: dict[str, torch.Tensor] = {}
    for spec in inputs:
        name, eq, rest = spec.partition("=")
        shape, _, dtype = rest.partition(":")
        if not eq or not name.isidentifier():
            raise ConfigError(f"--input {spec!r}: expected NAME=SHAPE[:DTYPE], such as input_ids=1x16:int64")
        dt = _DTYPES.get(dtype or "float32")
        if dt is None:
            raise ConfigError(f"--input {spec!r}: dtype {dtype!r} is not one of {', '.join(sorted(_DTYPES))}")
        dims = _shape(shape)
        named[name] = torch.randn(dims, generator=g).to(dt) if dt.is_floating_point else torch.zeros(dims, dtype=dt)
    return named


def _source_gguf(source: dict[str, Any]) -> Path | None:
    """The GGUF file a zoo model was converted from (its tokenizer keys are reused as they are)."""
    if source.get("kind") != "zoo":
        return None
    finder = getattr(get_entry(source["name"]), "gguf_file", None)
    return Path(finder()) if callable(finder) else None
