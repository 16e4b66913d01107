"""What torchslim checks in a Hugging Face folder (or an artifact's ``config.json``) before transformers reads it.

* No code from a folder, ever: every transformers loader gets :data:`LOADER_KWARGS` (``trust_remote_code=False``,
  offline), and a folder whose configs carry an ``auto_map`` is refused before transformers sees it (so it can
  never ask on the terminal whether to run that code).
* The files transformers would read are regular files of a bounded size (not a FIFO, a device or a broken link).
* A shard index (``model.safetensors.index.json``) names plain files inside the folder only.
* The config's numbers are finite and bounded, and its layer count fits the tensors the weights hold
  (:func:`check_config_numbers`), before any model is built.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import stat
import struct
from pathlib import Path
from typing import Any, Iterator

from torchslim.core.errors import UnknownModelError, first_line

LOADER_KWARGS: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}

MAX_CONFIG_BYTES = 16 << 20          # config.json, tokenizer_config.json, shard index, processor configs
MAX_TOKENIZER_BYTES = 512 << 20      # tokenizer.json, vocab and merges files, sentencepiece models
MAX_HEADER_BYTES = 100 << 20         # a safetensors header (JSON) is far smaller than this
MAX_LAYERS = 4096
MAX_WIDTH = 1 << 24                  # hidden / intermediate / vocabulary sizes, head counts, label counts
MAX_CONTEXT = 1 << 24                # context lengths (max_position_embeddings and kin): 16 M tokens
SHARD_INDEX = "model.safetensors.index.json"

CONFIG_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                "image_processor_config.json", "video_preprocessor_config.json", "feature_extractor_config.json",
                "generation_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.json",
                SHARD_INDEX)
TOKENIZER_DATA = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                  "sentencepiece.bpe.model", "chat_template.jinja")

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "image_processor_config.json")
MAX_IMAGE_EDGE = 1 << 14             # an image processor's output height / width / edge
MAX_PIXELS = 1 << 26                 # an image processor's min/max pixel counts
EDGE_KEYS = frozenset({"height", "width", "shortest_edge", "longest_edge", "size", "crop_size", "patch_size",
                       "max_image_size", "image_size"})
LAYER_KEYS = frozenset({"num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_decoder_layers",
                        "num_encoder_layers", "decoder_layers", "encoder_layers"})
WIDTH_KEYS = frozenset({"hidden_size", "intermediate_size", "n_embd", "n_inner", "d_model", "d_ff", "ffn_dim",
                        "encoder_ffn_dim", "decoder_ffn_dim", "vocab_size", "head_dim", "num_attention_heads",
                        "num_key_value_heads", "n_head", "num_heads", "num_labels", "image_size", "patch_size",
                        "num_channels", "embedding_size", "type_vocab_size", "moe_intermediate_size",
                        "num_experts", "num_local_experts"})
CONTEXT_KEYS = frozenset({"max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_seq_len",
                          "max_sequence_length", "sliding_window"})
EPS_KEYS = frozenset({"rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps", "norm_epsilon"})
POSITIVE_FLOAT_KEYS = frozenset({"rope_theta", "rope_local_base_freq"})


def _refuse(where: Path, what: str) -> None:
    raise UnknownModelError(f"{where}: {what}")


def regular_file(path: Path, limit: int) -> bool:
    """Whether ``path`` exists; refuses one that is not a regular file (a FIFO, a device, a folder, a broken or
    looping link: reading those could hang or never end) or is larger than ``limit`` bytes."""
    try:
        if not path.is_symlink() and not path.exists():
            return False
        st = path.stat()
    except (OSError, RuntimeError):
        _refuse(path, "a broken or looping link")
    if not stat.S_ISREG(st.st_mode):
        _refuse(path, "not a regular file (a folder, a device, a FIFO?): refused")
    if st.st_size > limit:
        _refuse(path, f"{st.st_size} bytes, more than the bound of {limit >> 20} MiB for this file")
    return True


def read_json(path: Path, limit: int = MAX_CONFIG_BYTES, strict: bool = True) -> Any:
    """A JSON file of at most ``limit`` bytes (``None`` when absent), with one-line errors; ``strict=False``:
    ``None`` for a file that does not parse (the reader that needs it says so in its own words)."""
    if not regular_file(path, limit):
        return None
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        if strict:
            _refuse(path, f"not valid JSON ({first_line(e, 80)})")
        return None


def _walk(doc: Any, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """``(dotted path, key, value)`` for every value inside ``doc`` (bounded depth: JSON came through json.loads)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            yield path, str(k), v
            yield from _walk(v, path)
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:10000]):
            yield f"{prefix}[{i}]", "", v
            yield from _walk(v, f"{prefix}[{i}]")


def check_folder(folder: Path) -> None:
    """Refuse a folder whose files would make transformers run code, hang, or read outside it."""
    for name in TOKENIZER_DATA:
        regular_file(folder / name, MAX_TOKENIZER_BYTES)
    for name in CONFIG_FILES:
        doc = read_json(folder / name, strict=False)     # one that does not parse cannot name code either
        for path, key, _ in _walk(doc):
            if key == "auto_map":
                _refuse(folder / name, f"'{path}' asks to run code from the folder; torchslim never runs "
                                       "code from a model folder: refused")
    for name in PROCESSOR_FILES:
        check_processor_numbers(read_json(folder / name, strict=False), folder / name)
    check_shard_index(folder)
    for p in folder.glob("*.safetensors"):
        regular_file(p, 1 << 50)


def check_processor_numbers(doc: Any, where: Path) -> None:
    """Refuse an image processor config with non-finite numbers (NaN pixels), or an output size beyond
    :data:`MAX_IMAGE_EDGE` per side or :data:`MAX_PIXELS` in all (every image would be resized to it)."""
    for path, key, v in _walk(doc):
        if isinstance(v, float) and not math.isfinite(v):
            _refuse(where, f"'{path}' is {v}: a processor number must be finite")
        if not _is_number(v):
            continue
        bound = MAX_PIXELS if "pixels" in key else MAX_IMAGE_EDGE if key in EDGE_KEYS else None
        if bound is not None and not 0 <= v <= bound:
            _refuse(where, f"'{path}' is {v}: out of range (0 to {bound})")


def check_shard_index(folder: Path) -> list[str]:
    """The shard files ``model.safetensors.index.json`` names: plain names of regular files in ``folder``."""
    index = read_json(folder / SHARD_INDEX)
    if index is None:
        return []
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict):
        _refuse(folder / SHARD_INDEX, "no 'weight_map' mapping of tensor names to shard files")
    if not all(isinstance(v, str) for v in wmap.values()):
        _refuse(folder / SHARD_INDEX, "a 'weight_map' value is not a file name")
    shards = sorted(set(wmap.values()))
    for name in shards:
        if name in ("..", ".") or any(c in name for c in "/\\\x00") or not name.endswith(".safetensors"):
            _refuse(folder / SHARD_INDEX, f"names the shard {name[:80]!r}, not a .safetensors file inside the folder")
        if not regular_file(folder / name, 1 << 50):
            _refuse(folder / SHARD_INDEX, f"names the shard {name[:80]!r}, which is missing")
    return shards


def weight_tensor_count(folder: Path) -> int:
    """How many tensors the folder's safetensors weights hold (from their headers; nothing is loaded)."""
    return weight_stats(folder)[0]


def weight_stats(folder: Path) -> tuple[int, int]:
    """``(tensors, values)`` in the folder's safetensors weights, from their headers (nothing is loaded)."""
    names = check_shard_index(folder) or sorted(p.name for p in folder.glob("*.safetensors"))
    stats = [_header_stats(folder / n) for n in names]
    return sum(t for t, _ in stats), sum(v for _, v in stats)


def _header_stats(path: Path) -> tuple[int, int]:
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 2 <= size <= min(MAX_HEADER_BYTES, path.stat().st_size - 8):
                _refuse(path, "not a safetensors file (bad header length)")
            header = json.loads(f.read(size).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError, OSError) as e:
        _refuse(path, f"not a safetensors file ({str(e)[:80]})")
    if not isinstance(header, dict):
        _refuse(path, "not a safetensors file (its header is not a mapping)")
    values = 0
    for k, v in header.items():
        shape = v.get("shape") if isinstance(v, dict) and k != "__metadata__" else []
        if not isinstance(shape, list) or not all(_is_number(d) and isinstance(d, int) and d >= 0 for d in shape):
            _refuse(path, f"not a safetensors file (tensor {str(k)[:60]!r} has no valid shape)")
        values += math.prod(shape) if k != "__metadata__" else 0
    return sum(1 for k in header if k != "__metadata__"), values


def check_model_size(folder: Path, auto: Any, config: Any) -> None:
    """Build the config's model on the meta device (no memory) and refuse it when it has far more parameters
    than the weights hold values: transformers would allocate them all before noticing the mismatch."""
    import torch

    _, values = weight_stats(folder)
    bound = 2 * values + (1 << 24)
    try:
        with torch.device("meta"):
            if auto.__name__.startswith("Auto"):
                model = auto.from_config(config, trust_remote_code=False)
            else:
                model = auto._from_config(config)
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta: transformers' own load answers
        return
    n = sum(p.numel() for p in model.parameters())
    if n > bound:
        _refuse(folder / "config.json", f"describes a model of {n:,} parameters, but the weights hold {values:,} "
                                        f"values (the bound is 2 x the weights + 16 M): refused before allocating")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own loading report is a multi-line log; torchslim says what matters in one line. Its
    "Loading weights" tqdm bar is off too: through the Python API (where the CLI's tqdm default does not apply)
    it wrote carriage-return frames into scripts' logs on every load; torchslim's own progress is the one shown."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("transformers")
    old = logger.level
    logger.setLevel(logging.ERROR)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(old)
        if bars:
            hf_logging.enable_progress_bar()


def check_config_numbers(doc: Any, where: Path, tensors: int | None = None) -> None:
    """Refuse a config (the parsed ``config.json``) whose numbers are not finite, or beyond the bounds of
    this module, or with more layers than the weights hold tensors, before any model is built."""
    for path, key, v in _walk(doc):
        if isinstance(v, float) and not math.isfinite(v):
            _refuse(where, f"'{path}' is {v}: a config number must be finite")
        if key in LAYER_KEYS or key in WIDTH_KEYS or key in CONTEXT_KEYS:
            _check_size(where, path, key, v, tensors)
        elif key in EPS_KEYS and _is_number(v) and not 0 < v < 1:
            _refuse(where, f"'{path}' is {v}: a normalisation epsilon must lie in (0, 1)")
        elif key in POSITIVE_FLOAT_KEYS and _is_number(v) and not 0 < v <= 1e15:
            _refuse(where, f"'{path}' is {v}: a rotary base must lie in (0, 1e15]")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_size(where: Path, path: str, key: str, v: Any, tensors: int | None) -> None:
    if v is None or not _is_number(v):
        return                                   # absent / of another type: transformers' own checks answer
    bound = MAX_LAYERS if key in LAYER_KEYS else MAX_CONTEXT if key in CONTEXT_KEYS else MAX_WIDTH
    if v < 0 or v > bound:
        _refuse(where, f"'{path}' is {v}: out of range (0 to {bound})")
    if key in LAYER_KEYS and tensors is not None and v > tensors:
        _refuse(where, f"'{path}' is {v}, more layers than the {tensors} tensors its weights hold")
