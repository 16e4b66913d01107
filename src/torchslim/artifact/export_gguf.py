"""Export a Llama-family artifact as one GGUF file that llama.cpp runs and transformers reads (``gguf_file=``).

Weight layers go to the chosen block type (``Q8_0``, ``Q5_0``, ``Q4_0``, ``Q4_1``), a K-quant (``Q6_K``,
``Q4_K``), llama.cpp's ``Q4_K_M`` mix (per tensor, by llama.cpp's own rule: ``attn_v`` and ``ffn_down`` of a
third of the blocks in Q6_K, the rest Q4_K; rows that are not whole 256-weight super-blocks take llama.cpp's
fallback, Q5_0 for Q4_K and Q8_0 for Q6_K) or a float type (``F32``, ``F16``, ``BF16``). A packed layer whose
codes already lie on the chosen block type's grid (int8 / int5 / int4 symmetric per group of 32 for ``Q8_0`` /
``Q5_0`` / ``Q4_0``, int4 asymmetric per group of 32 for ``Q4_1``, no AWQ input scale) is written code for code,
so a GPTQ or AWQ+GPTQ result keeps its calibrated codes; every other layer is rounded to the grid from its float
weight, and the result counts both kinds. The token embedding (and an untied output head)
take ``embed_type`` (default ``Q8_0``); norms stay F32. q/k rows are permuted into llama.cpp's rotary layout.

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

from torchslim.artifact.gguf_blocks import TYPES, BlockType, llama_rope_rows, pack, round_to_grid
from torchslim.artifact.gguf_kquants import FALLBACK, QK, pack_rounded
from torchslim.core.errors import ConfigError, TorchSlimError

log = logging.getLogger("torchslim")
FLOAT_TYPES = ("F32", "F16", "BF16")
K_TYPES = ("Q4_K", "Q6_K")
MIXES = ("Q4_K_M",)
GGUF_TYPES = (*FLOAT_TYPES, *TYPES, *K_TYPES, *MIXES)
LLAMA_TYPES = ("llama", "mistral")


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
        t = "Q6_K" if more else "Q4_K"
    return FALLBACK[t] if t in K_TYPES and cols % QK else t


def exact_codes(module: nn.Module, t: BlockType) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(codes, scales, minimums) of a packed layer whose codes lie on ``t``'s grid, else None."""
    from torchslim.quantization.formats import IntFormat, PerGroup
    from torchslim.quantization.qlinear import QuantLinear

    if not isinstance(module, QuantLinear) or module.input_scale is not None:
        return None
    fmt, gran = module.fmt, module.gran
    if not (isinstance(fmt, IntFormat) and isinstance(gran, PerGroup) and gran.size == 32):
        return None
    if fmt.bits != t.bits or fmt.symmetric != t.signed or module.padded_in != module.in_features:
        return None
    return module.codes(), module.scale, module.offset


def weight_of(module: nn.Module) -> torch.Tensor:
    """The float weight ``[out, in]`` a (possibly packed) linear or embedding layer computes with."""
    from torchslim.artifact.export_hf import dense_linear

    if isinstance(module, nn.Embedding) or type(module).__name__ == "PackedEmbedding":
        return module.weight.detach().float()
    lin = dense_linear(module)
    w = lin.weight if lin is not None else getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise TorchSlimError(f"GGUF export: no weight in {type(module).__name__}")
    return w.detach().float()


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
        w = weight_of(module)
        counts["rounded"] += 1
        return pack_rounded(qtype, w[rows] if rows is not None else w), getattr(gguf.GGMLQuantizationType, qtype)
    t = TYPES[qtype]
    got = exact_codes(module, t)
    if got is None:
        w = weight_of(module)
        if w.shape[1] % 32:
            raise TorchSlimError(f"GGUF {qtype} needs rows of a multiple of 32 weights; a layer has {w.shape[1]}")
        got = round_to_grid(t, w)
        counts["rounded"] += 1
    else:
        counts["exact"] += 1
    codes, scale, minimum = got
    if rows is not None:
        codes, scale = codes[rows], scale[rows]
        minimum = minimum[rows] if minimum is not None else None
    return pack(t, codes, scale, minimum), getattr(gguf.GGMLQuantizationType, qtype)


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


def _shape_facts(model: nn.Module) -> dict[str, int]:
    """Block dimensions from the weights themselves (a pruned model's config may not say), checked uniform."""
    cfg, layers = model.config, model.model.layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    facts = [(_rows(b.self_attn.q_proj) // head_dim, _rows(b.self_attn.k_proj) // head_dim, _rows(b.mlp.gate_proj))
             for b in layers]
    if len(set(facts)) != 1:
        raise TorchSlimError("GGUF export needs every block the same shape (llama.cpp reads one head count and "
                             f"one MLP width); blocks differ: {sorted(set(facts))[:3]}")
    n_head, n_kv, n_ff = facts[0]
    return {"head_dim": head_dim, "n_head": n_head, "n_kv": n_kv, "n_ff": n_ff, "blocks": len(layers)}


def _write_metadata(w: Any, model: nn.Module, facts: dict[str, int], qtype: str, name: str) -> None:
    cfg = model.config
    scaling = getattr(cfg, "rope_scaling", None) or {}
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise TorchSlimError(f"GGUF export: rope scaling {scaling.get('rope_type')!r} is not written; only plain RoPE")
    theta = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 1e4)
    w.add_name(name)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(facts["blocks"])
    w.add_feed_forward_length(facts["n_ff"])
    w.add_rope_dimension_count(facts["head_dim"])
    w.add_head_count(facts["n_head"])
    w.add_head_count_kv(facts["n_kv"])
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_freq_base(float(theta))
    w.add_vocab_size(int(cfg.vocab_size))
    w.add_file_type(int(_file_type(qtype)))
    w.add_quantization_version(2)


def _copy_tokenizer(w: Any, source_gguf: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(source_gguf)
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), vtype, sub)


def _hf_tokenizer(w: Any, tokenizer: Any) -> None:
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
        gguf.SpecialVocab(path, load_merges=not isinstance(vocab, gguf.vocab.SentencePieceVocab)).add_to_gguf(w)


def _tensors(model: nn.Module, facts: dict[str, int], qtype: str, embed_type: str,
             counts: dict[str, int]) -> list[tuple[str, np.ndarray, Any]]:
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, facts["blocks"])
    out: list[tuple[str, np.ndarray, Any]] = []
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) or (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    for hf_name, module in model.named_modules():
        is_head = module is model.get_output_embeddings()
        if is_head and tied:
            continue
        gg = names.get_name(hf_name)
        if gg is None or gg.endswith(".rotary_emb") or not hasattr(module, "weight") and not hasattr(module, "packed"):
            continue
        if module is model.get_input_embeddings() or is_head:
            packed_head = model.get_output_embeddings()       # a tied table read from a packed head: its codes
            source = packed_head if tied and hasattr(packed_head, "packed") else module
            out.append((gg + ".weight", *encode(source, _stored(embed_type, gg, source, facts["blocks"], counts),
                                                 None, counts)))
        elif type(module).__name__.endswith("RMSNorm"):
            out.append((gg + ".weight", module.weight.detach().float().numpy(), None))
        else:
            rows = None
            if gg.endswith("attn_q"):
                rows = llama_rope_rows(_rows(module), facts["n_head"])
            elif gg.endswith("attn_k"):
                rows = llama_rope_rows(_rows(module), facts["n_kv"])
            if getattr(module, "bias", None) is not None:
                raise TorchSlimError(f"GGUF export: {hf_name} has a bias, which llama.cpp's Llama graph does not read")
            out.append((gg + ".weight", *encode(module, _stored(qtype, gg, module, facts["blocks"], counts), rows,
                                                 counts)))
    return out


def write_gguf(model: nn.Module, out: str | Path, *, qtype: str = "Q4_0", embed_type: str = "Q8_0",
               tokenizer: Any = None, source_gguf: str | Path | None = None, name: str = "model") -> dict[str, Any]:
    """Write the Llama-family ``model`` as the GGUF file ``out``: tokenizer keys copied from ``source_gguf`` (the GGUF
    file the model came from) or built from ``tokenizer``. ``torchslim.exports.export_gguf`` loads a model first."""
    import gguf

    from torchslim.core.io import atomic_path

    for what, v, allowed in (("type", qtype, GGUF_TYPES), ("embedding type", embed_type,
                                                          tuple(t for t in GGUF_TYPES if t not in MIXES))):
        if v not in allowed:
            raise ConfigError(f"GGUF {what} {v!r} is not written here; use one of: {', '.join(allowed)}")
    if getattr(getattr(model, "config", None), "model_type", None) not in LLAMA_TYPES:
        raise TorchSlimError(f"{name}: GGUF export writes Llama-family models ({', '.join(LLAMA_TYPES)}); this "
                             f"is {getattr(getattr(model, 'config', None), 'model_type', type(model).__name__)!r}")
    source_gguf = Path(source_gguf) if source_gguf else None
    if source_gguf is None and tokenizer is None:
        raise TorchSlimError(f"{name}: no tokenizer to write into the GGUF file")
    facts = _shape_facts(model)
    counts = {"exact": 0, "rounded": 0, "float": 0, "fallback": 0}
    tensors = _tensors(model, facts, qtype, embed_type, counts)
    with atomic_path(Path(out)) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        _write_metadata(w, model, facts, qtype, name)
        if source_gguf is not None:
            _copy_tokenizer(w, source_gguf)
        else:
            _hf_tokenizer(w, tokenizer)
        for name, data, raw in tensors:
            w.add_tensor(name, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    if counts["fallback"]:
        log.info("GGUF export: %d tensor(s) with rows that are not whole super-blocks of %d took llama.cpp's fallback "
                 "type (Q5_0 for Q4_K, Q8_0 for Q6_K)", counts["fallback"], QK)
    if counts["rounded"]:
        log.warning("GGUF export: %d weight layer(s) were not on the %s grid and were rounded to it "
                    "(round-to-nearest from their weights); %d kept their codes exactly", counts["rounded"], qtype,
                    counts["exact"])
    return {"file": str(out), "bytes": Path(out).stat().st_size, "type": qtype, "embed_type": embed_type,
            "tokenizer": "copied from " + source_gguf.name if source_gguf else "from the Hugging Face tokenizer",
            **{f"{k}_layers": v for k, v in counts.items()}}
