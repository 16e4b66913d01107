"""Export a decoder model as one GGUF file that llama.cpp runs and transformers reads (``gguf_file=``), for every
family llama.cpp converts (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Gemma3, Phi-3, GPT-2, GPT-NeoX, Falcon;
names, metadata and per-family transforms in :mod:`torchslim.artifact.gguf_families`).

Weight layers go to the chosen block type (``Q8_0``, ``Q5_0``, ``Q4_0``, ``Q4_1``), a K-quant (``Q6_K``,
``Q4_K``), llama.cpp's ``Q4_K_M`` mix (per tensor, by llama.cpp's own rule: ``attn_v`` and ``ffn_down`` of a
third of the blocks in Q6_K, the rest Q4_K; a fused ``attn_qkv``, Q5_K in llama.cpp, takes Q6_K here; rows that
are not whole 256-weight super-blocks take llama.cpp's fallback, Q5_0 for Q4_K and Q8_0 for Q6_K) or a float type
(``F32``, ``F16``, ``BF16``). A packed layer whose codes already lie on the type's grid (int8 / int5 / int4
symmetric per group of 32 for ``Q8_0`` / ``Q5_0`` / ``Q4_0``, int4 asymmetric per group of 32 for ``Q4_1``, or
fewer bits of the same kind; no AWQ input scale) is written code for code, so a GPTQ or AWQ+GPTQ result keeps its
calibrated codes; a packed layer off that grid is refused (:class:`OffGridError`: rounding codes onto another
grid loses accuracy silently), and float layers are rounded to the grid from their weights, as llama-quantize
does; the result counts each kind. The token embedding (and an untied output head) take ``embed_type``
(default ``Q8_0``); norms, biases and position tables stay F32.

The tokenizer comes from the GGUF file the model was converted from, when there is one (its ``tokenizer.*``
keys copied as they are), else from the model's Hugging Face tokenizer (BPE or SentencePiece).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.artifact.gguf_blocks import (
    TYPES,
    BlockType,
    llama_rope_rows,
    pack,
    round_to_grid,
)
from torchslim.artifact.gguf_families import Family, family_of, qkv_rows, write_metadata
from torchslim.artifact.gguf_families import facts as family_facts
from torchslim.artifact.gguf_kquants import FALLBACK, QK, pack_rounded
from torchslim.core.errors import ConfigError, TorchSlimError

log = logging.getLogger("torchslim")
FLOAT_TYPES = ("F32", "F16", "BF16")
K_TYPES = ("Q4_K", "Q6_K")
MIXES = ("Q4_K_M",)
GGUF_TYPES = (*FLOAT_TYPES, *TYPES, *K_TYPES, *MIXES)


def _file_type(name: str) -> int:
    import gguf

    ft = gguf.LlamaFileType
    return {"F32": ft.ALL_F32, "F16": ft.MOSTLY_F16, "BF16": ft.MOSTLY_BF16, "Q8_0": ft.MOSTLY_Q8_0,
            "Q4_0": ft.MOSTLY_Q4_0, "Q4_1": ft.MOSTLY_Q4_1, "Q5_0": ft.MOSTLY_Q5_0, "Q4_K": ft.MOSTLY_Q4_K_S,
            "Q6_K": ft.MOSTLY_Q6_K, "Q4_K_M": ft.MOSTLY_Q4_K_M}[name]


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the blocks and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(qtype: str, gguf_name: str, n_blocks: int, cols: int) -> str:
    """The type one weight tensor of row length ``cols`` is stored in for ``qtype``: a mix such as Q4_K_M decides
    per tensor, and a K-quant takes llama.cpp's fallback when rows are not whole super-blocks."""
    t = qtype
    if qtype == "Q4_K_M":
        parts = gguf_name.split(".")
        more = parts[0] == "blk" and parts[-1] in ("attn_v", "ffn_down") and _more_bits(int(parts[1]), n_blocks)
        # a fused attn_qkv holds the values too: llama.cpp gives it Q5_K, not written here, so it takes Q6_K
        t = "Q6_K" if more or parts[-1] == "attn_qkv" else "Q4_K"
    return FALLBACK[t] if t in K_TYPES and cols % QK else t


def exact_codes(module: nn.Module, t: BlockType) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(codes, scales, minimums) of a packed layer whose codes lie on ``t``'s grid, else None: groups of 32 of the
    same kind (symmetric / with a minimum) and at most ``t``'s bits (int4 codes are exact in Q5_0 and Q8_0)."""
    from torchslim.quantization.formats import IntFormat, PerGroup
    from torchslim.quantization.qlinear import QuantLinear

    if not isinstance(module, QuantLinear) or module.input_scale is not None:
        return None
    fmt, gran = module.fmt, module.gran
    if not (isinstance(fmt, IntFormat) and isinstance(gran, PerGroup) and gran.size == 32):
        return None
    if fmt.bits > t.bits or fmt.symmetric != t.signed or module.padded_in != module.in_features:  # a sub-grid fits
        return None
    return module.codes(), module.scale, module.offset


def weight_of(module: nn.Module) -> torch.Tensor:
    """The float weight ``[out, in]`` a (possibly packed) linear or embedding layer computes with."""
    from torchslim.artifact.export_hf import dense_linear

    if isinstance(module, nn.Embedding) or type(module).__name__ == "PackedEmbedding":
        return module.weight.detach().float()
    if type(module).__name__ == "Conv1D":                       # GPT-2 stores [in, out]
        return module.weight.detach().float().t()
    lin = dense_linear(module)
    w = lin.weight if lin is not None else getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise TorchSlimError(f"GGUF export: no weight in {type(module).__name__}")
    return w.detach().float()


def _count_rounded(counts: dict[str, int], qtype: str) -> None:
    """One more float layer rounded to ``qtype``'s grid (per type too: a file mixes types, e.g. a Q8_0 embedding)."""
    counts["rounded"] += 1
    counts[f"rounded:{qtype}"] = counts.get(f"rounded:{qtype}", 0) + 1


def encode(module: nn.Module, qtype: str, rows: torch.Tensor | None, counts: dict[str, int]) -> tuple[np.ndarray, Any]:
    """(data, raw GGML type or None) of one weight matrix in ``qtype``, rows reordered by ``rows``."""
    import gguf

    if qtype in FLOAT_TYPES:
        w = weight_of(module)
        w = w[rows] if rows is not None else w
        counts["float"] += 1
        if qtype == "BF16":
            return gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16
        return w.numpy().astype(np.float16 if qtype == "F16" else np.float32), None
    if qtype in K_TYPES:                         # whole super-blocks: tensor_type resolved the fallback
        if not _is_float(module):
            raise _NotOnGrid(qtype)
        w = weight_of(module)
        _count_rounded(counts, qtype)
        return pack_rounded(qtype, w[rows] if rows is not None else w), getattr(gguf.GGMLQuantizationType, qtype)
    t = TYPES[qtype]
    got = exact_codes(module, t)
    if got is None:
        if not _is_float(module):
            raise _NotOnGrid(qtype)
        w = weight_of(module)
        if w.shape[1] % 32:
            raise TorchSlimError(f"GGUF {qtype} needs rows of a multiple of 32 weights; a layer has {w.shape[1]}")
        got = round_to_grid(t, w)
        _count_rounded(counts, qtype)
    else:
        counts["exact"] += 1
    codes, scale, minimum = got
    if rows is not None:
        codes, scale = codes[rows], scale[rows]
        minimum = minimum[rows] if minimum is not None else None
    return pack(t, codes, scale, minimum), getattr(gguf.GGMLQuantizationType, qtype)


class _NotOnGrid(Exception):
    """A packed layer whose codes are not on ``qtype``'s grid (collected, then refused as one OffGridError)."""


def _rows(module: nn.Module) -> int:
    """Output rows of a (possibly packed) linear layer, without dequantizing it."""
    n = getattr(module, "out_features", None)
    return int(n) if isinstance(n, int) else int(weight_of(module).shape[0])


def _cols(module: nn.Module) -> int:
    """Row length of a (possibly packed) linear layer or embedding, without dequantizing it."""
    n = getattr(module, "in_features", getattr(module, "embedding_dim", None))
    return int(n) if isinstance(n, int) else int(weight_of(module).shape[1])


def _stored(qtype: str, gg: str, module: nn.Module, n_blocks: int, counts: dict[str, int]) -> str:
    t = tensor_type(qtype, gg, n_blocks, _cols(module))
    if t != tensor_type(qtype, gg, n_blocks, QK):      # the mix's choice did not fit whole super-blocks
        counts["fallback"] += 1
    return t


def _copy_tokenizer(w: Any, source_gguf: Path) -> set[str]:
    import gguf

    reader = gguf.GGUFReader(source_gguf)
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), vtype, sub)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return set(tokens.contents()) if tokens is not None else set()


# llama.cpp sets token attributes by the file's general.name: a name containing one of these keys makes it look
# up the listed tokens and abort ("unordered_map::at") when the vocabulary lacks one of them
_NAME_RULES = {("phi-3", "phi3"): ("</s>", "<unk>", "<s>", "<|endoftext|>")}


def llama_name(name: str, vocab: set[str]) -> str:
    """``name`` as written to ``general.name``: unchanged unless it would trigger one of llama.cpp's name-keyed
    vocabulary rules whose tokens this vocabulary lacks; then the key is spelled so the rule does not fire
    (``phi3`` -> ``phi_3``), with a warning."""
    lowered = name.lower()
    for keys, tokens in _NAME_RULES.items():
        missing = [t for t in tokens if t not in vocab]
        if not missing or not any(k in lowered for k in keys):
            continue
        for k in keys:
            while k in lowered:
                i = lowered.index(k)
                name = name[:i] + name[i:i + len(k)].replace("-", "").replace("3", "_3") + name[i + len(k):]
                lowered = name.lower()
        log.warning("GGUF export: llama.cpp looks up %s in any model named like %s; this vocabulary lacks %s, so "
                    "the file is named %r", ", ".join(tokens), " or ".join(keys), ", ".join(missing), name)
    return name


def _hf_tokenizer(w: Any, tokenizer: Any) -> set[str]:
    import gguf

    with tempfile.TemporaryDirectory(prefix="torchslim-gguf-") as d:
        tokenizer.save_pretrained(d)
        path = Path(d)
        if (path / "tokenizer.model").is_file():
            vocab: Any = gguf.vocab.SentencePieceVocab(path)
            w.add_tokenizer_model("llama")
        else:
            vocab = gguf.vocab.BpeVocab(path)
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre("default")
            log.warning("GGUF export: llama.cpp's pre-tokenizer for this BPE tokenizer is not known; wrote 'default' "
                        "(llama.cpp may split text differently from transformers)")
        tokens, scores, types = zip(*vocab.all_tokens())
        w.add_token_list(list(tokens))
        w.add_token_scores(list(scores))
        w.add_token_types([int(t) for t in types])
        special = gguf.SpecialVocab(path, load_merges=not isinstance(vocab, gguf.vocab.SentencePieceVocab))
        if not isinstance(vocab, gguf.vocab.SentencePieceVocab) and not special.merges:
            special.merges = [_inert_merge(list(tokens))]
        if "bos" not in special.add_special_token:       # say it: llama.cpp's default differs by vocabulary type
            bos = getattr(tokenizer, "bos_token_id", None)
            special.add_special_token["bos"] = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
        special.add_to_gguf(w)
        return set(tokens)


def _inert_merge(tokens: list[str]) -> str:
    """llama.cpp refuses a BPE vocabulary without ``tokenizer.ggml.merges`` and GGUF cannot hold an empty array:
    a byte-level vocabulary with no merges (the tiny models') gets one merge whose result is no token, so
    llama.cpp falls back to the two single-byte tokens and tokenizes exactly as without it."""
    have = set(tokens)
    singles = [t for t in tokens if len(t) == 1 and t.isascii() and t.isalnum()]     # one UTF-8 byte each
    for a in singles:
        for b in singles:
            if a + b not in have and " " not in a + b:
                return f"{a} {b}"
    raise TorchSlimError("GGUF export: a BPE vocabulary without merges, and no inert merge to satisfy llama.cpp")


def _is_float(module: nn.Module) -> bool:
    """Whether the layer computes with float weights (plain, Conv1D, sparse, cast, AWQ-scaled), as opposed to packed
    integer codes (QuantLinear, SparseQuantLinear, PackedEmbedding, int8 layers), which are never rounded again."""
    return not hasattr(module, "fmt") and not type(module).__name__.startswith("Int8")


def describe(module: nn.Module) -> str:
    """A packed layer's format in words (``int4 symmetric g128``)."""
    fmt, gran = getattr(module, "fmt", None), getattr(module, "gran", None)
    if fmt is None:
        return type(module).__name__
    bits = getattr(fmt, "bits", None)
    kind = (f"int{bits} {'symmetric' if getattr(fmt, 'symmetric', True) else 'asymmetric'}" if bits
            else type(fmt).__name__)
    size = getattr(gran, "size", None)
    extra = " with an AWQ input scale" if getattr(module, "input_scale", None) is not None else ""
    return f"{kind} {'g' + str(size) if size else type(gran).__name__}{extra}"


class OffGridError(TorchSlimError):
    """Packed layers whose codes are not on the grid of the type they would be stored in: rounding them again
    (codes on codes) is refused; ``layers`` is ``[(gguf name, format in words, stored type)]``."""

    def __init__(self, name: str, layers: list[tuple[str, str, str]]):
        self.layers = layers
        gg, fmt, t = layers[0]
        super().__init__(f"{name}: {len(layers)} packed layer(s) (first {gg}: {fmt}) are not on the grid of the GGUF "
                         f"type they would be stored in ({t}); rounding codes onto another grid is refused")


def _plan(model: nn.Module, fam: Family, named: dict[str, nn.Module], tied: bool, name: str) -> None:
    """Refuse what the file cannot hold: an untied head the architecture has no tensor for, biases its graph does
    not read, and any weight the name map does not place (nothing is dropped without a word)."""
    head, placed = model.get_output_embeddings(), {id(m) for m in named.values()}
    if head is not None and not tied and id(head) not in placed:
        raise TorchSlimError(f"{name}: GGUF export: an untied output head, which llama.cpp's {fam.arch.lower()} "
                             "graph does not read (it reuses the token embedding)")
    inside = {p for p, m in model.named_modules() if id(m) in placed}
    for hf_name, module in model.named_modules():
        has_weight = isinstance(getattr(module, "weight", None), torch.Tensor) or hasattr(module, "packed")
        parents = {hf_name.rsplit(".", k)[0] for k in range(1, hf_name.count(".") + 1)}
        if has_weight and id(module) not in placed and module is not head and not parents & inside:
            raise TorchSlimError(f"{name}: GGUF export: {hf_name} ({type(module).__name__}) has no tensor in "
                                 f"llama.cpp's {fam.arch.lower()} architecture")
    for gg, module in named.items():
        base = gg.split(".")[-1]
        if getattr(module, "bias", None) is not None and base not in fam.biases and not _is_norm(module):
            raise TorchSlimError(f"{name}: GGUF export: {gg} has a bias, which llama.cpp's {fam.arch.lower()} "
                                 "graph does not read")


def _is_norm(module: nn.Module) -> bool:
    return "Norm" in type(module).__name__


def named_tensors(model: nn.Module, fam: Family, blocks: int) -> dict[str, nn.Module]:
    """``{gguf base name: module}`` through the gguf package's own name map for ``fam``'s architecture."""
    import gguf

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, fam.arch), blocks)
    out: dict[str, nn.Module] = {}
    for hf_name, module in model.named_modules():
        gg = names.get_name(hf_name) if hf_name else None
        if gg is None or gg in out:
            continue
        if isinstance(getattr(module, "weight", None), torch.Tensor) or hasattr(module, "packed"):
            out[gg] = module
    return out


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().contiguous().numpy()


def _tensors(model: nn.Module, fam: Family, f: dict[str, Any], named: dict[str, nn.Module], qtype: str,
             embed_type: str, tied: bool, counts: dict[str, int], name: str) -> list[tuple[str, np.ndarray, Any]]:
    out: list[tuple[str, np.ndarray, Any]] = []
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    fused = qkv_rows(fam, f)
    off: list[tuple[str, str, str]] = []
    for gg, module in named.items():
        base = gg.split(".")[-1]
        if module is head and tied and not fam.tied_output:
            continue
        if module is embed or module is head:
            source = head if tied and hasattr(head, "packed") else module      # a tied table read from a packed head
            t = _stored(embed_type, gg, source, f["blocks"], counts)
            try:
                out.append((gg + ".weight", *encode(source, t, None, counts)))
            except _NotOnGrid:
                off.append((gg, describe(source), t))
            continue
        if _is_norm(module) or base == "position_embd":
            w = module.weight.detach().float() + (1 if fam.norm_plus_one and _is_norm(module) else 0)
            out.append((gg + ".weight", _f32(w), None))
            if getattr(module, "bias", None) is not None:
                out.append((gg + ".bias", _f32(module.bias), None))
            continue
        rows = None
        if fam.rope_permute and base in ("attn_q", "attn_k"):
            rows = llama_rope_rows(_rows(module), f["n_head"] if base == "attn_q" else f["n_kv"])
        elif base == "attn_qkv":
            rows = fused
        t = _stored(qtype, gg, module, f["blocks"], counts)
        try:
            out.append((gg + ".weight", *encode(module, t, rows, counts)))
        except _NotOnGrid:
            off.append((gg, describe(module), t))
        if getattr(module, "bias", None) is not None:
            b = module.bias.detach().float()
            out.append((gg + ".bias", _f32(b[rows] if rows is not None else b), None))
    if off:
        raise OffGridError(name, off)
    if "rope_freqs" in f:
        out.append(("rope_freqs.weight", _f32(f["rope_freqs"]), None))
    return out


def _layout(model: nn.Module, name: str) -> tuple[Family, dict[str, nn.Module], bool, dict[str, Any]]:
    fam = family_of(model, name)
    blocks = int(getattr(model.config, "num_hidden_layers", None) or model.config.n_layer)
    named = named_tensors(model, fam, blocks)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is None or bool(getattr(model.config, "tie_word_embeddings", False)) or (
        getattr(head, "weight", None) is getattr(embed, "weight", False))
    _plan(model, fam, named, tied, name)
    return fam, named, tied, family_facts(model, fam, named, name)


def check_gguf(model: nn.Module, name: str = "model", qtype: str = "F32", embed_type: str = "F32") -> None:
    """Raise TorchSlimError (one line) when ``model`` has a family, setting or tensor a GGUF file cannot hold, or
    packed layers whose codes are off the grid they would be stored in (OffGridError), before any writing."""
    _fam, named, tied, f = _layout(model, name)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    off = []
    for gg, module in named.items():
        if module is head and tied:
            continue
        is_table = module is embed or module is head
        if module is embed and tied and hasattr(head, "packed"):
            module = head                                  # a tied table is written from the packed head's codes
        if _is_float(module) or _is_norm(module):
            continue
        t = tensor_type(embed_type if is_table else qtype, gg, f["blocks"], _cols(module))
        if t in TYPES and exact_codes(module, TYPES[t]) is None or t in K_TYPES:
            off.append((gg, describe(module), t))
    if off:
        raise OffGridError(name, off)


def write_gguf(model: nn.Module, out: str | Path, *, qtype: str = "Q4_0", embed_type: str = "Q8_0",
               tokenizer: Any = None, source_gguf: str | Path | None = None, name: str = "model") -> dict[str, Any]:
    """Write the decoder ``model`` as the GGUF file ``out``: tokenizer keys copied from ``source_gguf`` (the GGUF
    file the model came from) or built from ``tokenizer``. ``torchslim.exports.export_gguf`` loads a model first."""
    import gguf

    from torchslim.core.io import atomic_path

    for what, v, allowed in (("type", qtype, GGUF_TYPES), ("embedding type", embed_type,
                                                          tuple(t for t in GGUF_TYPES if t not in MIXES))):
        if v not in allowed:
            raise ConfigError(f"GGUF {what} {v!r} is not written here; use one of: {', '.join(allowed)}")
    source_gguf = Path(source_gguf) if source_gguf else None
    if source_gguf is None and tokenizer is None:
        raise TorchSlimError(f"{name}: no tokenizer to write into the GGUF file")
    fam, named, tied, facts = _layout(model, name)
    counts = {"exact": 0, "rounded": 0, "float": 0, "fallback": 0}
    tensors = _tensors(model, fam, facts, named, qtype, embed_type, tied, counts, name)
    with atomic_path(Path(out)) as tmp:
        w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, fam.arch)])
        write_metadata(w, fam, facts)
        w.add_file_type(int(_file_type(qtype)))
        w.add_quantization_version(2)
        vocab = _copy_tokenizer(w, source_gguf) if source_gguf is not None else _hf_tokenizer(w, tokenizer)
        w.add_name(llama_name(name, vocab))
        for tensor_name, data, raw in tensors:
            w.add_tensor(tensor_name, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    for warning in facts["warnings"]:
        log.warning("GGUF export: %s", warning)
    if counts["fallback"]:
        log.info("GGUF export: %d tensor(s) with rows that are not whole super-blocks of %d took llama.cpp's fallback "
                 "type (Q5_0 for Q4_K, Q8_0 for Q6_K)", counts["fallback"], QK)
    by_type = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("rounded:")}
    if counts["rounded"]:
        grids = ", ".join(f"{n} to the {t} grid" for t, n in sorted(by_type.items()))
        log.warning("GGUF export: %d float weight layer(s) were rounded (%s; round-to-nearest from their weights, as "
                    "llama-quantize without an importance matrix); %d packed layer(s) kept their codes exactly",
                    counts["rounded"], grids, counts["exact"])
    return {"file": str(out), "bytes": Path(out).stat().st_size, "type": qtype, "embed_type": embed_type,
            "tokenizer": "copied from " + source_gguf.name if source_gguf else "from the Hugging Face tokenizer",
            **{f"{k}_layers": v for k, v in counts.items() if ":" not in k}}
