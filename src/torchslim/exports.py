"""Export entry points that start from a model's name or folder: they load it (``torchslim.load_model``), then hand
the model to the artifact layer's writers (``artifact.export_gguf.write_gguf``, ``artifact.export_onnx.write_onnx``),
which take a model and know nothing of where models come from."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torchslim.artifact.export_gguf import write_gguf
from torchslim.artifact.export_onnx import write_onnx
from torchslim.models import load_model
from torchslim.zoo.registry import get_entry


def export_gguf(artifact: str | Path, out: str | Path, qtype: str = "Q4_0", embed_type: str = "Q8_0",
                source_gguf: str | Path | None = None) -> dict[str, Any]:
    """Write the decoder artifact (or model folder / zoo name) ``artifact`` as the GGUF file ``out``."""
    loaded = load_model(str(artifact))
    source_gguf = Path(source_gguf) if source_gguf else _source_gguf(loaded.source)
    return write_gguf(loaded.model, out, qtype=qtype, embed_type=embed_type, tokenizer=loaded.tokenizer,
                      source_gguf=source_gguf, name=loaded.name)


def export_onnx(model_spec: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``model_spec`` (an artifact, model folder or zoo name) as the ONNX file ``out``."""
    loaded = load_model(str(model_spec))
    return write_onnx(loaded.model, out, loaded.task)


def _source_gguf(source: dict[str, Any]) -> Path | None:
    """The GGUF file a zoo model was converted from (its tokenizer keys are reused as they are)."""
    if source.get("kind") != "zoo":
        return None
    finder = getattr(get_entry(source["name"]), "gguf_file", None)
    return Path(finder()) if callable(finder) else None
