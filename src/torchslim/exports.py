"""Export entry points that start from a model's name or folder: they load it (``torchslim.load_model``), then hand
the model to the artifact layer's writers (``artifact.export_gguf.write_gguf``, ``artifact.export_onnx.write_onnx``),
which take a model and know nothing of where models come from."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from torchslim.artifact.export_gguf import (
    FLOAT_TYPES,
    OffGridError,
    check_gguf,
    named_tensors,
    tensor_type,
    write_gguf,
)
from torchslim.artifact.export_onnx import write_onnx
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.registry import apply_
from torchslim.core.progress import announce
from torchslim.core.select import Selector
from torchslim.models import load_model
from torchslim.quantization import GPTQConfig, IntFormat, PerGroup, WeightOnlyConfig
from torchslim.zoo.registry import get_entry

log = logging.getLogger("torchslim")
# the block types GPTQ can aim at exactly (symmetric int8 / int5 / int4 and asymmetric int4, groups of 32)
GRID_FORMATS = {"Q8_0": IntFormat(8), "Q5_0": IntFormat(5), "Q4_0": IntFormat(4),
                "Q4_1": IntFormat(4, symmetric=False)}


def export_gguf(artifact: str | Path, out: str | Path, qtype: str = "Q4_0", embed_type: str = "Q8_0",
                source_gguf: str | Path | None = None, calibrate: bool = True,
                evaluate: bool = False) -> dict[str, Any]:
    """Write the decoder artifact (or model folder / zoo name) ``artifact`` as the GGUF file ``out``.

    The best file the type allows: with ``calibrate`` and calibration data (the model's task: a zoo model's, an
    artifact's source's, or a folder's), every float layer stored in a block type (Q8_0, Q5_0, Q4_0, Q4_1, and the
    per-tensor types of a mix such as Q4_K_M, fallbacks included) is first quantized by GPTQ on exactly that grid
    and its codes written as they are; K-quant tensors (whole Q4_K / Q6_K super-blocks) are rounded from the float
    weights. Packed layers off the target grid are refused with the command that re-quantizes from the float model.
    With ``evaluate``, ``done["quality"]`` holds the task's metric of the model and of the written file
    (see :func:`compare_quality`).
    """
    loaded = load_model(str(artifact))
    source_gguf = Path(source_gguf) if source_gguf else _source_gguf(loaded.source)
    calibrated = 0
    try:                                             # refuse what the file cannot hold before calibrating
        check_gguf(loaded.model, loaded.name, qtype, embed_type)
    except OffGridError as e:
        raise TorchSlimError(f"{e}. {_working_command(loaded.source, out, qtype, e)}") from None
    before = _metric(loaded, loaded.model) if evaluate else None
    if calibrate and loaded.task is None and qtype not in FLOAT_TYPES:
        log.warning("GGUF export: no calibration data is known for %s; its float layers are rounded to the %s grid, "
                    "not GPTQ-calibrated", loaded.name, qtype)
    if calibrate and loaded.task is not None and qtype not in FLOAT_TYPES:
        config, calibrated = grid_gptq_config(loaded.model, qtype)
        if config is not None:
            log.info("GGUF export: GPTQ on the %s grid for %d float layer(s) (calibration: the model's task)",
                     qtype, calibrated)
            with _quiet_kernel_warnings():           # these layers are written to GGUF, never run here
                apply_(loaded.model, config, ApplyContext(task=loaded.task), family="quantization", record=False)
    try:
        done = write_gguf(loaded.model, out, qtype=qtype, embed_type=embed_type, tokenizer=loaded.tokenizer,
                          source_gguf=source_gguf, name=loaded.name)
    except OffGridError as e:
        raise TorchSlimError(f"{e}. {_working_command(loaded.source, out, qtype, e)}") from None
    done = {**done, "calibrated_layers": calibrated}
    if evaluate:
        from torchslim.artifact.file_models import gguf_model

        done["quality"] = compare_quality(loaded, before, lambda: gguf_model(out), "transformers' GGUF reader")
    return done


class _NoKernelNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "have no fast kernel" not in record.getMessage()


@contextlib.contextmanager
def _quiet_kernel_warnings() -> Iterator[None]:
    """Drop the quantizer's 'no fast kernel, slower than fp32' notes: true of torch, irrelevant to a GGUF file."""
    target, note = logging.getLogger("torchslim.quantization"), _NoKernelNotes()
    target.addFilter(note)
    try:
        yield
    finally:
        target.removeFilter(note)


def _metric(loaded: Any, model: nn.Module, what: str = "the model") -> float | None:
    """The task's primary metric of ``model`` (``what`` names it in the progress lines), or None without a task."""
    if loaded.task is None:
        return None
    announce(f"quality of {what}: {loaded.task.metric}")
    return float(loaded.task.evaluate(model)[loaded.task.metric])


def compare_quality(loaded: Any, before: float | None, read: Any, reader: str) -> dict[str, Any]:
    """``{"metric", "higher_is_better", "artifact", "exported", "reader"}``: the task's metric of the model
    (``before``) and of the written file as ``read()`` loads it; ``{"skipped": why}`` when it cannot be measured."""
    if loaded.task is None or before is None:
        return {"skipped": "no task is known for this model (nothing to evaluate on)"}
    try:
        exported = _metric(loaded, read(), f"the exported file (read by {reader})")
    except (TorchSlimError, ImportError) as e:
        return {"skipped": str(e)}
    return {"metric": loaded.task.metric, "higher_is_better": loaded.task.higher_is_better, "artifact": before,
            "exported": exported, "reader": reader}


def _working_command(source: dict[str, Any], out: str | Path, qtype: str, err: OffGridError) -> str:
    """The command that writes ``qtype`` from float weights with calibration (GPTQ on the grid), the grid a
    quantization would have to aim at, and the types that keep the codes."""
    float_model = source.get("name") if source.get("kind") == "zoo" else source.get("path")
    grids = sorted({t for _, _, t in err.layers})
    aim = "; ".join(f"{t}: {_grid_words(t)}" for t in grids if t in GRID_FORMATS)
    keep = "-t F16 --embed-type F16 keeps the codes as they are (dequantized)"
    onto = f"quantize onto the grid ({aim}) before exporting, or " if aim else ""
    if float_model:
        return (f"Re-quantize from the source's float weights on the {qtype} grid: `torchslim export gguf "
                f"{float_model} -o {out} -t {qtype}` (GPTQ with calibration; other stages of this artifact are not "
                f"in it); or {onto}{keep}")
    return (f"Export the float model instead (`torchslim export gguf <float model folder> -o {out} -t {qtype}` runs "
            f"GPTQ on that grid), or {onto}{keep}")


def _grid_words(t: str) -> str:
    fmt = GRID_FORMATS[t]
    return f"int{fmt.bits} {'symmetric' if fmt.symmetric else 'asymmetric'} per group of 32"


def grid_gptq_config(model: nn.Module, qtype: str) -> tuple[GPTQConfig | None, int]:
    """(GPTQ on each float linear layer's own grid in ``qtype`` (the block type export_gguf will store it in,
    a mix's per-tensor choice and fallbacks included), layer count); None when no layer has a block type GPTQ
    can aim at. The head and K-quant tensors stay float (rounded at export)."""
    from torchslim.artifact.gguf_families import family_of

    fam = family_of(model, getattr(getattr(model, "config", None), "model_type", "model"))
    blocks = int(getattr(model.config, "num_hidden_layers", None) or model.config.n_layer)
    by_module = {id(m): gg for gg, m in named_tensors(model, fam, blocks).items()}
    head = model.get_output_embeddings()
    overrides: dict[str, Any] = {}
    for name, layer in model.named_modules():
        gg = by_module.get(id(layer))
        if type(layer) is not nn.Linear and type(layer).__name__ != "FalconLinear" or gg is None or layer is head:
            continue
        t = tensor_type(qtype, gg, blocks, layer.in_features)
        if t in GRID_FORMATS and layer.in_features % 32 == 0:
            overrides[name] = GPTQConfig(weight=WeightOnlyConfig(format=GRID_FORMATS[t], granularity=PerGroup(32)))
    if not overrides:
        return None, 0
    first = next(iter(overrides.values())).weight
    sel = Selector(include=tuple(overrides), overrides=overrides)
    return GPTQConfig(weight=WeightOnlyConfig(format=first.format, granularity=PerGroup(32), selector=sel)), len(overrides)


def export_hf_folder(artifact: str | Path, out: str | Path, dense: bool = False, fmt: str = "hf",
                     evaluate: bool = False) -> dict[str, Any]:
    """``artifact`` as a Hugging Face folder at ``out`` (``fmt``: ``hf`` or ``compressed-tensors``), with the
    tokenizer: copied from the source folder when the model came from one, else the one torchslim loads the model
    with (a zoo model's, e.g. SmolLM2's from its GGUF file) saved beside the weights."""
    from torchslim.artifact.export_ct import export_ct
    from torchslim.artifact.export_hf import export_hf
    from torchslim.artifact.hf_files import COMPANIONS

    done = export_ct(artifact, out) if fmt == "compressed-tensors" else export_hf(artifact, out, dense=dense)
    needs_tokenizer = not any((Path(out) / name).is_file() for name in COMPANIONS
                              if name.startswith(("tokenizer", "vocab", "spiece")))
    loaded = load_model(str(artifact)) if needs_tokenizer or evaluate else None     # loaded once for both
    if needs_tokenizer:
        tokenizer = loaded.tokenizer
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
            from torchslim.core.io import user_mode_tree

            user_mode_tree(out)
            done["tokenizer"] = "saved from the tokenizer torchslim loads the model with"
    if evaluate:
        done["quality"] = compare_quality(loaded, _metric(loaded, loaded.model), lambda: _hf_folder_model(out),
                                          "transformers (from_pretrained)")
    return done


def _hf_folder_model(folder: str | Path) -> nn.Module:
    """The exported folder as transformers alone loads it (the Auto class its config names; no torchslim code)."""
    import transformers
    from transformers import AutoConfig

    from torchslim.zoo.hf_guard import LOADER_KWARGS

    config = AutoConfig.from_pretrained(str(folder), **LOADER_KWARGS)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise TorchSlimError(f"{folder}: config.json names no transformers class to load it with")
    return cls.from_pretrained(str(folder), **LOADER_KWARGS).eval()


def export_onnx(model_spec: str | Path, out: str | Path, example_inputs: Any = None,
                evaluate: bool = False) -> dict[str, Any]:
    """Write ``model_spec`` (an artifact, model folder or zoo name) for ONNX Runtime at ``out``: a folder for causal
    LMs and encoder-decoders, else one ``.onnx`` file whose inputs come from the model's task or ``example_inputs``
    (a tensor, tuple or dict of tensors; see :func:`example_inputs_from`). With ``evaluate``, ``done["quality"]``
    compares the task's metric of the model and of the graph run by ONNX Runtime."""
    loaded = load_model(str(model_spec))
    done = write_onnx(loaded.model, out, loaded.task, example_inputs=example_inputs, tokenizer=loaded.tokenizer)
    if evaluate:
        from torchslim.artifact.file_models import ort_model

        done["quality"] = compare_quality(loaded, _metric(loaded, loaded.model), lambda: ort_model(out),
                                          "ONNX Runtime")
    return done


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


def export_for_runtime(model: nn.Module, runtime: str, folder: str | Path, *, task: Any = None, tokenizer: Any = None,
                       gguf_type: str = "F32") -> Path:
    """Write ``model`` into ``folder`` as the file ``runtime`` reads and return its path: ONNX (``model.onnx``, or
    the decoder folder's) for ONNX Runtime and OpenVINO, GGUF (``model.gguf``, ``gguf_type`` for every tensor:
    F32 by default, the model's own weights with packed layers dequantized) for llama.cpp."""
    from torchslim.runtime.backends import require

    kind = require(runtime).file_kind
    folder = Path(folder)
    tokenizer = tokenizer if tokenizer is not None else getattr(task, "tokenizer", None)
    if kind == "gguf":
        out = folder / "model.gguf"
        write_gguf(model, out, qtype=gguf_type, embed_type=gguf_type, tokenizer=tokenizer)
        return out
    from torchslim.artifact.onnx_graphs import model_kind

    kind = model_kind(model)
    if kind == "seq2seq":
        raise ConfigError(f"{type(model).__name__}: an encoder-decoder exports as three ONNX graphs, which are not "
                          f"evaluated as one model in {runtime}")
    out = folder / "model" if kind == "causal-lm" else folder / "model.onnx"
    write_onnx(model, out, task, tokenizer=tokenizer)
    return out / "model.onnx" if out.is_dir() else out
