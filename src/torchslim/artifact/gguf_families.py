"""What each decoder family becomes in GGUF: llama.cpp's architecture, its metadata keys, and the tensor transforms
its converter (``convert_hf_to_gguf.py``) applies, with tensor names from the ``gguf`` package's own map
(``gguf.get_tensor_name_map``) and keys written by ``GGUFWriter.add_*``.

Per family: Llama/Mistral q/k rows are permuted into llama.cpp's rotary layout; Gemma norms are stored as ``1 + w``
(llama.cpp multiplies by the stored weight); GPT-2's Conv1D weights are stored transposed; GPT-NeoX's per-head fused
q/k/v rows and Falcon's per-group rows are regrouped as all q, all k, all v. Settings llama.cpp reads for the
architecture (sliding window, logit soft-capping, partial rotary, parallel residual, biases, tied heads) are
written; a setting it cannot express is refused in one line (:func:`facts` raises).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.core.errors import TorchSlimError

ALL = frozenset({"attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_up", "ffn_down", "ffn_gate"})


@dataclass(frozen=True)
class Family:
    arch: str                        # gguf.MODEL_ARCH member
    rms: bool = True                 # RMSNorm (else LayerNorm with bias)
    rope_permute: bool = False       # Llama: q/k rows into llama.cpp's interleaved rotary layout
    norm_plus_one: bool = False      # Gemma: norms stored as 1 + w
    fused_qkv: str | None = None     # "neox": [head, 3, dim] rows; "falcon": [kv group, q.. k v, dim] rows
    biases: frozenset[str] = frozenset()
    rope: bool = True
    sliding: str = "none"            # "none": refuse a window shorter than the context; "all" / "gemma2" / "gemma3"
    tied_output: bool = False        # GPT-2: llama.cpp's converter writes the tied head as output.weight too


FAMILIES: dict[str, Family] = {
    "llama": Family("LLAMA", rope_permute=True),
    "mistral": Family("LLAMA", rope_permute=True),
    "qwen2": Family("QWEN2", biases=frozenset({"attn_q", "attn_k", "attn_v"})),
    "qwen3": Family("QWEN3"),
    "gemma": Family("GEMMA", norm_plus_one=True),
    "gemma2": Family("GEMMA2", norm_plus_one=True, sliding="gemma2"),
    "gemma3_text": Family("GEMMA3", norm_plus_one=True, sliding="gemma3"),
    "phi3": Family("PHI3", sliding="all"),
    "gpt2": Family("GPT2", rms=False, biases=ALL, rope=False, tied_output=True),
    "gpt_neox": Family("GPTNEOX", rms=False, fused_qkv="neox", biases=ALL),
    "falcon": Family("FALCON", rms=False, fused_qkv="falcon"),
}
REFUSED = {"opt": "llama.cpp has no OPT architecture (its converter does not convert OPTForCausalLM)"}


def _get(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def _rope(cfg: Any, layer_type: str | None = None) -> dict[str, Any]:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    return params if isinstance(params, dict) else {}


def family_of(model: nn.Module, name: str) -> Family:
    mt = getattr(getattr(model, "config", None), "model_type", None)
    mt = "gemma3_text" if mt == "gemma3" else mt
    if mt in REFUSED:
        raise TorchSlimError(f"{name}: GGUF export of {mt!r}: {REFUSED[mt]}")
    if mt not in FAMILIES:
        raise TorchSlimError(f"{name}: GGUF export writes the decoder families llama.cpp runs "
                             f"({', '.join(sorted(FAMILIES))}); this is {mt or type(model).__name__!r}")
    return FAMILIES[mt]


def _rows(module: nn.Module) -> int:
    n = getattr(module, "out_features", None)
    if isinstance(n, int):
        return n
    w = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D":
        return int(w.shape[1])
    return int(w.shape[0])


def facts(model: nn.Module, fam: Family, named: dict[str, nn.Module], name: str) -> dict[str, Any]:
    """Dimensions and settings llama.cpp reads, from the weights where a pruned model's config may not say;
    raises TorchSlimError naming the first setting this architecture cannot express."""
    cfg, mt = model.config, model.config.model_type
    hidden = int(_get(cfg, "hidden_size", "n_embd"))
    n_head_cfg = int(_get(cfg, "num_attention_heads", "n_head"))
    head_dim = int(_get(cfg, "head_dim", default=hidden // n_head_cfg))
    blocks = int(_get(cfg, "num_hidden_layers", "n_layer"))
    ctx = int(_get(cfg, "max_position_embeddings", "n_positions"))
    if mt == "falcon":
        n_kv_cfg = int(cfg.num_kv_heads) if cfg.new_decoder_architecture else (1 if cfg.multi_query else n_head_cfg)
    else:
        n_kv_cfg = int(_get(cfg, "num_key_value_heads", default=n_head_cfg))
    per_block = []
    for i in range(blocks):
        q, k, qkv = named.get(f"blk.{i}.attn_q"), named.get(f"blk.{i}.attn_k"), named.get(f"blk.{i}.attn_qkv")
        up = named.get(f"blk.{i}.ffn_up")
        n_head = _rows(q) // head_dim if q is not None else n_head_cfg
        n_kv = _rows(k) // head_dim if k is not None else n_kv_cfg
        if qkv is not None and _rows(qkv) != (n_head + 2 * n_kv) * head_dim:
            raise TorchSlimError(f"{name}: GGUF export: block {i}'s fused q/k/v has {_rows(qkv)} rows, not the "
                                 f"config's {(n_head + 2 * n_kv) * head_dim} (a pruned fused projection is not written)")
        per_block.append((n_head, n_kv, _rows(up) // (2 if mt == "phi3" else 1)))
    if len(set(per_block)) != 1:
        raise TorchSlimError(f"{name}: GGUF export needs every block the same shape (llama.cpp reads one head count "
                             f"and one MLP width); blocks differ: {sorted(set(per_block))[:3]}")
    n_head, n_kv, n_ff = per_block[0]
    out = {"hidden": hidden, "head_dim": head_dim, "n_head": n_head, "n_kv": n_kv, "n_ff": n_ff, "blocks": blocks,
           "ctx": ctx, "vocab": int(cfg.vocab_size), "warnings": []}
    _settings(model, fam, out, name)
    return out


def _refuse(name: str, what: str) -> None:
    raise TorchSlimError(f"{name}: GGUF export cannot express {what}")


def _settings(model: nn.Module, fam: Family, out: dict[str, Any], name: str) -> None:
    cfg, mt, ctx = model.config, model.config.model_type, out["ctx"]
    layer_types = list(getattr(cfg, "layer_types", None) or [])
    rope = _rope(cfg, "full_attention" if fam.sliding == "gemma3" else None)
    kind = rope.get("rope_type", rope.get("type", "default"))
    out["rope_theta"] = float(rope.get("rope_theta", _get(cfg, "rope_theta", default=1e4)))
    if fam.rope and kind == "linear":
        out["rope_linear"] = float(rope["factor"])
    elif fam.rope and kind == "llama3" and fam.arch == "LLAMA":
        out["rope_freqs"] = llama3_rope_factors(rope, out["rope_theta"], out["head_dim"])
    elif fam.rope and kind not in ("default", None):
        _refuse(name, f"rope scaling {kind!r} (written: plain, linear, and Llama 3's as llama.cpp's rope_freqs)")
    partial = float(rope.get("partial_rotary_factor", _get(cfg, "partial_rotary_factor", "rotary_pct", default=1.0)))
    out["rope_dims"] = int(out["head_dim"] * partial)
    if partial != 1.0 and fam.arch in ("LLAMA", "FALCON"):
        _refuse(name, f"partial rotary ({partial}) in llama.cpp's {fam.arch.lower()} graph")
    out["eps"] = float(_get(cfg, "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"))
    window = _get(cfg, "sliding_window")
    if mt == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        window = None
    sliding = [t == "sliding_attention" for t in layer_types] if layer_types else [window is not None] * out["blocks"]
    if fam.sliding == "none":
        if window is not None and any(sliding) and int(window) < ctx:
            _refuse(name, f"the sliding window of {window} tokens ({mt}, context {ctx}): llama.cpp's "
                    f"{fam.arch.lower()} architecture has no sliding-window key and would attend past it")
    elif fam.sliding == "all":          # Phi-3: one window for every layer (none: the whole context)
        if any(sliding) and not all(sliding):
            _refuse(name, f"sliding attention on some layers only ({layer_types})")
        out["window"] = int(window) if window is not None and any(sliding) else ctx
        if out["window"] < ctx:
            out["warnings"].append(f"wrote Phi-3's sliding window ({out['window']} tokens, context {ctx}) under "
                                   "llama.cpp's key; llama.cpp builds that disable Phi-3 sliding-window attention "
                                   "(they log 'Phi SWA is currently disabled') attend past it")
    else:
        period = 2 if fam.sliding == "gemma2" else 6
        want = [(i + 1) % period != 0 for i in range(out["blocks"])]
        if sliding != want:
            _refuse(name, f"this layer pattern of sliding attention ({layer_types}); llama.cpp's {fam.arch.lower()} "
                    f"graph slides on all but every {period}th layer")
        out["window"] = int(window)
        scalar = getattr(cfg, "query_pre_attn_scalar", None)
        # llama.cpp scales queries by 1/sqrt(head_dim), or by 1/sqrt(hidden / heads) for its 27B size class
        big = out["blocks"] == (46 if fam.sliding == "gemma2" else 62)
        allowed = (out["hidden"] // out["n_head"],) if big else (out["head_dim"],)
        if scalar is not None and int(scalar) not in allowed:
            _refuse(name, f"query_pre_attn_scalar={scalar} (llama.cpp scales queries by 1/sqrt({allowed[0]}) for "
                    f"this {fam.arch.lower()} size)")
        if fam.sliding == "gemma3":
            local = _rope(cfg, "sliding_attention")
            out["rope_theta_swa"] = float(local.get("rope_theta", _get(cfg, "rope_local_base_freq", default=1e4)))
            if local.get("rope_type", "default") != "default":
                _refuse(name, f"rope scaling {local.get('rope_type')!r} on the sliding layers")
    caps = {k: getattr(cfg, k, None) for k in ("attn_logit_softcapping", "final_logit_softcapping")}
    if fam.arch != "GEMMA2" and any(v is not None for v in caps.values()):
        _refuse(name, f"logit soft-capping ({caps}) in llama.cpp's {fam.arch.lower()} graph")
    out.update({k: v for k, v in caps.items() if v is not None})
    if mt == "falcon":
        for flag, bad, why in (("alibi", True, "ALiBi positions"), ("parallel_attn", False, "a sequential block"),
                               ("bias", True, "linear biases")):
            if bool(getattr(cfg, flag, not bad)) == bad:
                _refuse(name, f"{why} in llama.cpp's falcon graph ({flag}={getattr(cfg, flag)})")
    if mt == "gpt_neox":
        out["parallel_residual"] = bool(getattr(cfg, "use_parallel_residual", True))
    act = _get(cfg, "hidden_act", "hidden_activation", "activation_function", "activation", default="")
    expected = {"LLAMA": "silu", "QWEN2": "silu", "QWEN3": "silu", "PHI3": "silu"}.get(fam.arch)
    if expected and act != expected:
        _refuse(name, f"activation {act!r} in llama.cpp's {fam.arch.lower()} graph (it applies {expected})")


def llama3_rope_factors(rope: dict[str, Any], theta: float, head_dim: int) -> torch.Tensor:
    """Llama 3's frequency-dependent rope scaling as llama.cpp's ``rope_freqs`` tensor (it divides each rotary
    frequency by its factor), computed as its converter does from the rope parameters."""
    import math

    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_ctx = float(rope["original_max_position_embeddings"])
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def write_metadata(w: Any, fam: Family, f: dict[str, Any]) -> None:
    """The architecture keys llama.cpp reads for ``fam``, through GGUFWriter.add_*."""
    w.add_context_length(f["ctx"])
    w.add_embedding_length(f["hidden"])
    w.add_block_count(f["blocks"])
    w.add_feed_forward_length(f["n_ff"])
    w.add_head_count(f["n_head"])
    w.add_head_count_kv(f["n_kv"])
    if f["head_dim"] != f["hidden"] // f["n_head"] or fam.arch in ("GEMMA2", "GEMMA3", "QWEN3"):
        w.add_key_length(f["head_dim"])
        w.add_value_length(f["head_dim"])
    if fam.rope:
        w.add_rope_dimension_count(f["rope_dims"])
        w.add_rope_freq_base(f["rope_theta"])
    if "rope_linear" in f:
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(f["rope_linear"])
    if "rope_theta_swa" in f:
        w.add_rope_freq_base_swa(f["rope_theta_swa"])
    (w.add_layer_norm_rms_eps if fam.rms else w.add_layer_norm_eps)(f["eps"])
    if "window" in f:
        w.add_sliding_window(f["window"])
    if "attn_logit_softcapping" in f:
        w.add_attn_logit_softcapping(float(f["attn_logit_softcapping"]))
    if "final_logit_softcapping" in f:
        w.add_final_logit_softcapping(float(f["final_logit_softcapping"]))
    if "parallel_residual" in f:
        w.add_parallel_residual(f["parallel_residual"])
    w.add_vocab_size(f["vocab"])


def qkv_rows(fam: Family, f: dict[str, Any]) -> torch.Tensor | None:
    """Row order that regroups a fused q/k/v projection as all q, all k, all v (llama.cpp's layout), or None."""
    hd, n_head, n_kv = f["head_dim"], f["n_head"], f["n_kv"]
    if fam.fused_qkv == "neox":                  # rows [head, (q, k, v), dim]
        return torch.arange(3 * n_head * hd).reshape(n_head, 3, hd).transpose(0, 1).reshape(-1)
    if fam.fused_qkv == "falcon":                # rows [kv group, (q * n_head / n_kv, k, v), dim]
        idx = torch.arange((n_head + 2 * n_kv) * hd).reshape(n_kv, n_head // n_kv + 2, hd)
        return torch.cat([idx[:, :-2].reshape(-1), idx[:, -2].reshape(-1), idx[:, -1].reshape(-1)])
    return None
