"""Export a model to ONNX for ONNX Runtime, keeping its compressed layers.

The model's packed layers are first replaced by float modules of the weights they compute
(:func:`torchslim.artifact.onnx_rewrite.densify`), the model is exported in float with the torch ONNX exporter
(``dynamo=True``; batch, sequence and cache lengths dynamic), then every MatMul / Gemm / Conv of a packed layer is
rewritten to ONNX Runtime's int operator on that layer's own codes (:func:`torchslim.artifact.onnx_rewrite.rewrite`).

What is written (:mod:`torchslim.artifact.onnx_graphs` has the signatures):

* causal LMs -> a folder ``model.onnx`` (``input_ids, attention_mask[, position_ids], past_key_values.{i}.key/value
  -> logits, present.{i}.key/value``), ``config.json``, ``generation_config.json`` and the tokenizer's files: the
  layout optimum's ``ORTModelForCausalLM`` loads; ONNX Runtime generates without recomputing the prefix;
* encoder-decoders (T5, BART) -> a folder ``encoder_model.onnx``, ``decoder_model.onnx`` and
  ``decoder_with_past_model.onnx`` (optimum's ``ORTModelForSeq2SeqLM`` layout) with the same companions;
* any other module -> one ``.onnx`` file from the task's example inputs, or the caller's ``example_inputs``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.artifact.onnx_graphs import (
    Graph,
    causal_graphs,
    model_kind,
    plain_graph,
    seq2seq_graphs,
)
from torchslim.artifact.onnx_rewrite import (
    densify,
    needs_opset21,
    plan,
    rewrite,
    rewrite_kind,
)
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.progress import heartbeat

log = logging.getLogger("torchslim")
EXTERNAL_DATA_BYTES = 1_800_000_000        # protobuf's 2 GiB limit: larger graphs keep weights in a .data file


def _graphs(model: nn.Module, kind: str, task: Any, example_inputs: Any) -> list[Graph]:
    if kind == "causal-lm":
        return causal_graphs(model)
    if kind == "seq2seq":
        return seq2seq_graphs(model)
    if example_inputs is not None:
        return [plain_graph(model, example_inputs, task_names=False)]
    if task is None:
        raise ConfigError(f"ONNX export of {type(model).__name__} needs its inputs: this model has no task, so give "
                          "example_inputs (Python) or --shape / --input (CLI)")
    batch = task.example_inputs(2, 16) if hasattr(task, "tokenizer") else task.example_inputs(2)
    return [plain_graph(model, batch, task_names=True)]


def _export(graph: Graph, path: Path, name: str, opset: int | None) -> None:
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), \
                torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph.module.eval(), graph.args, str(path), kwargs=graph.kwargs or None, dynamo=True,
                              input_names=graph.input_names, output_names=graph.output_names,
                              dynamic_shapes=graph.dynamic, verbose=False,
                              **({"opset_version": opset} if opset else {}))
    except ImportError:
        raise
    except Exception as e:
        log.debug("exporter failure", exc_info=True)
        raise TorchSlimError(f"the torch ONNX exporter failed on {name} ({graph.file}): "
                             f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:300]}") from None
    finally:
        quiet.setLevel(level)


def _save(proto: Any, path: Path) -> None:
    import onnx

    big = sum(len(i.raw_data) for i in proto.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
              location=f"{path.name}.data" if big else None)


def _check_out(out: Path, folder: bool, kind: str) -> None:
    if folder:
        if out.suffix == ".onnx":
            raise ConfigError(f"--out {out}: a {kind} model exports as a folder (ONNX graphs, config, tokenizer); "
                              "name a folder")
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not any(out.glob("*.onnx")))):
            raise ConfigError(f"--out {out} exists and is not an ONNX export folder; name a new folder")
    elif out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the .onnx file to write")


def _companions(model: nn.Module, tokenizer: Any, folder: Path) -> list[str]:
    written = []
    config = getattr(model, "config", None)
    if config is not None:
        config.save_pretrained(folder)
        written.append("config.json")
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(folder)
        written.append("generation_config.json")
    if tokenizer is not None and callable(getattr(tokenizer, "save_pretrained", None)):
        tokenizer.save_pretrained(folder)
        written.append("tokenizer")
    return written


def write_onnx(model: nn.Module, out: str | Path, task: Any = None, example_inputs: Any = None,
               tokenizer: Any = None) -> dict[str, Any]:
    """Write ``model`` for ONNX Runtime at ``out``: a folder for causal LMs and encoder-decoders, else one ``.onnx``
    file whose inputs come from ``task`` or ``example_inputs`` (a tensor, tuple or dict of tensors). Returns what
    was written and rewritten. ``torchslim.exports.export_onnx`` loads a model by name or folder first."""
    try:
        import onnx
        import onnxscript  # noqa: F401 - the torch exporter needs it
    except ImportError as e:
        raise TorchSlimError(f"ONNX export needs onnx and onnxscript ({e}): pip install 'torchslim[onnx]'") from None
    from torchslim.core.io import atomic_dir, atomic_path

    out = Path(out)
    kind = model_kind(model)
    folder = kind in ("causal-lm", "seq2seq")
    _check_out(out, folder, kind)
    layers = plan(model)                                    # fail fast: before the copy and the slow export
    for name in layers["float"]:
        log.warning("ONNX export: packed layer %s has no ONNX Runtime int operator and runs in float", name)
    opset = 21 if needs_opset21(model) else None              # blocked int4 / int8 DequantizeLinear
    model = copy.deepcopy(model).eval()
    packed = densify(model)
    graphs = _graphs(model, kind, task, example_inputs)
    seen: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="torchslim-onnx-") as d:
        protos = []
        for i, graph in enumerate(graphs, 1):
            tmp = Path(d) / graph.file
            shown = graph.file if folder else out.name          # a single file is written under the user's name
            with heartbeat(f"ONNX export {i}/{len(graphs)}: tracing {shown} (packed layers rewritten after)"):
                _export(graph, tmp, type(model).__name__, opset)
            proto = onnx.load(str(tmp))
            for m in rewrite(proto, packed):
                seen[id(m)] = rewrite_kind(m)
            protos.append((graph.file, proto))
        if folder:
            with atomic_dir(out) as tmp_dir:
                for file, proto in protos:
                    _save(proto, tmp_dir / file)
                companions = _companions(model, tokenizer, tmp_dir)
            size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
        else:
            companions = []
            with atomic_path(out) as tmp_out:
                _save(protos[0][1], tmp_out)
            size = out.stat().st_size
    counts: dict[str, int] = {}
    for k in seen.values():
        counts[k] = counts.get(k, 0) + 1
    missing = len(packed) - len(seen)
    if missing:
        log.warning("ONNX export: %d of %d packed layers were not found in the exported graphs and run in float",
                    missing, len(packed))
    return {"file": str(out), "folder": folder, "files": [f for f, _ in protos], "companions": companions,
            "bytes": size, "inputs": graphs[0].input_names if len(graphs) == 1 else
            {g.file: g.input_names for g in graphs}, "rewritten": counts,
            "packed_layers": len(layers["int"]) + len(layers["float"]),
            "float_layers": len(layers["float"]) + missing}
