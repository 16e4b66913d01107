"""Architecture knowledge as data.

Each :class:`ArchSpec` row says where a family keeps its transformer blocks and, inside a block,
its attention and MLP projections (separate or fused), which attention attributes and config
fields hold head counts and widths, and what structured pruning cannot do for it (and why).
Techniques ask :func:`arch_of`, :func:`find_blocks` and :func:`chain_blocks` instead of writing
``isinstance`` chains. Adding an architecture means adding a row.

Paths are relative to a block; ``"a|b"`` means the first of ``a`` or ``b`` that exists (T5's
decoder keeps its feed-forward one sub-layer later than its encoder).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchslim.core.errors import TorchSlimError


@dataclass(frozen=True)
class ArchSpec:
    name: str
    model_types: tuple[str, ...]          # values of HF ``config.model_type``
    blocks: tuple[str, ...]               # dotted path(s) of the block ModuleList(s); encoder first
    embeddings: tuple[str, ...] = ()
    head: str | None = None               # output projection fed by final_norm(last block), if any
    attention: str | None = None          # module holding the attention's head counts, relative to the block
    q: str | None = None                  # separate projections, relative to the block
    k: str | None = None
    v: str | None = None
    o: str | None = None
    qkv: str | None = None                # a fused projection instead of q/k/v
    qkv_layout: str = ""                  # "concat": rows [q; k; v]; "per_head": rows [q_h; k_h; v_h] per head
    mlp_in: tuple[str, ...] = ()          # MLP input projections (gate/up, intermediate)
    mlp_in_fused: str | None = None       # fused [gate; up] rows (chunked in two by the model)
    mlp_out: str | None = None
    norms: tuple[str, ...] = ()
    final_norm: str | None = None
    num_heads_attr: str = "num_attention_heads"      # config fields
    num_kv_heads_attr: str | None = None
    config_mlp: str | None = "intermediate_size"     # config field of the MLP width (uniform pruning updates it)
    config_head_dim: str | None = None               # config field of an explicit head dim, where the family has one
    unsupported: dict[str, str] = field(default_factory=dict)   # structured target -> why not, for this family
    encoder_decoder: bool = False         # blocks = (encoder stack, decoder stack); otherwise alternatives

    def projections(self) -> dict[str, str]:
        """Role -> path (relative to a block) of every linear projection this spec names."""
        roles = {"q": self.q, "k": self.k, "v": self.v, "o": self.o, "qkv": self.qkv, "mlp_out": self.mlp_out,
                 "mlp_in_fused": self.mlp_in_fused}
        roles.update({f"mlp_in{i}": p for i, p in enumerate(self.mlp_in)})
        return {r: p for r, p in roles.items() if p}

    def check(self, target: str) -> None:
        """Raise a one-line error when structured pruning of ``target`` is not supported for this family."""
        if target in self.unsupported:
            raise TorchSlimError(f"{self.name}: structured pruning of {target} is not supported ({self.unsupported[target]})")


_LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma", "gemma2", "gemma3", "gemma3_text", "olmo",
               "olmo2", "granite", "helium", "cohere", "cohere2", "glm", "starcoder2_llama")
_ENC_DEC_DEPTH = "dropping blocks of an encoder-decoder model would need both stacks' configs rewritten"

ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            name="llama", model_types=_LLAMA_LIKE, blocks=("model.layers",), embeddings=("model.embed_tokens",),
            head="lm_head", attention="self_attn",
            q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
            mlp_in=("mlp.gate_proj", "mlp.up_proj"), mlp_out="mlp.down_proj",
            norms=("input_layernorm", "post_attention_layernorm"), final_norm="model.norm",
            num_kv_heads_attr="num_key_value_heads", config_head_dim="head_dim",
        ),
        ArchSpec(
            name="phi3", model_types=("phi3", "phimoe_dense"), blocks=("model.layers",),
            embeddings=("model.embed_tokens",), head="lm_head", attention="self_attn",
            qkv="self_attn.qkv_proj", qkv_layout="concat", o="self_attn.o_proj",
            mlp_in_fused="mlp.gate_up_proj", mlp_out="mlp.down_proj",
            norms=("input_layernorm", "post_attention_layernorm"), final_norm="model.norm",
            num_kv_heads_attr="num_key_value_heads",
            unsupported={"heads": "Phi-3 attention reads its head counts from the config every layer shares"},
        ),
        ArchSpec(
            name="gpt2", model_types=("gpt2",), blocks=("transformer.h",), embeddings=("transformer.wte", "transformer.wpe"),
            head="lm_head", attention="attn", qkv="attn.c_attn", qkv_layout="concat", o="attn.c_proj",
            mlp_in=("mlp.c_fc",), mlp_out="mlp.c_proj", norms=("ln_1", "ln_2"), final_norm="transformer.ln_f",
            num_heads_attr="n_head", config_mlp="n_inner",
        ),
        ArchSpec(
            name="opt", model_types=("opt",), blocks=("model.decoder.layers",),
            embeddings=("model.decoder.embed_tokens",), head="lm_head", attention="self_attn",
            q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj",
            mlp_in=("fc1",), mlp_out="fc2", norms=("self_attn_layer_norm", "final_layer_norm"),
            final_norm="model.decoder.final_layer_norm", config_mlp="ffn_dim",
        ),
        ArchSpec(
            name="gpt_neox", model_types=("gpt_neox",), blocks=("gpt_neox.layers",),
            embeddings=("gpt_neox.embed_in",), head="embed_out", attention="attention",
            qkv="attention.query_key_value", qkv_layout="per_head", o="attention.dense",
            mlp_in=("mlp.dense_h_to_4h",), mlp_out="mlp.dense_4h_to_h",
            norms=("input_layernorm", "post_attention_layernorm"), final_norm="gpt_neox.final_layer_norm",
        ),
        ArchSpec(
            name="falcon", model_types=("falcon",), blocks=("transformer.h",),
            embeddings=("transformer.word_embeddings",), head="lm_head", attention="self_attention",
            qkv="self_attention.query_key_value", o="self_attention.dense",
            mlp_in=("mlp.dense_h_to_4h",), mlp_out="mlp.dense_4h_to_h", final_norm="transformer.ln_f",
            config_mlp="ffn_hidden_size",
            unsupported={"heads": "Falcon fuses query, key and value in a multi-query/grouped layout"},
        ),
        ArchSpec(
            name="bert", model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra"),
            blocks=("encoder.layer",), embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings"),
            attention="attention.self",
            q="attention.self.query", k="attention.self.key", v="attention.self.value", o="attention.output.dense",
            mlp_in=("intermediate.dense",), mlp_out="output.dense",
            norms=("attention.output.LayerNorm", "output.LayerNorm"),
        ),
        ArchSpec(
            name="distilbert", model_types=("distilbert",), blocks=("transformer.layer",),
            embeddings=("embeddings.word_embeddings",), attention="attention",
            q="attention.q_lin", k="attention.k_lin", v="attention.v_lin", o="attention.out_lin",
            mlp_in=("ffn.lin1",), mlp_out="ffn.lin2", norms=("sa_layer_norm", "output_layer_norm"),
            num_heads_attr="n_heads", config_mlp="hidden_dim",
        ),
        ArchSpec(
            name="vit", model_types=("vit", "deit"), blocks=("layers", "encoder.layer"), attention="attention",
            q="attention.q_proj|attention.attention.query", k="attention.k_proj|attention.attention.key",
            v="attention.v_proj|attention.attention.value", o="attention.o_proj|attention.output.dense",
            mlp_in=("mlp.fc1|intermediate.dense",), mlp_out="mlp.fc2|output.dense",
            unsupported={"layers": "drop blocks of vision transformers with a fine-tuning stage instead"},
        ),
        ArchSpec(
            name="t5", model_types=("t5", "mt5", "umt5"), blocks=("encoder.block", "decoder.block"),
            embeddings=("shared",), attention="layer.0.SelfAttention",
            q="layer.0.SelfAttention.q", k="layer.0.SelfAttention.k", v="layer.0.SelfAttention.v",
            o="layer.0.SelfAttention.o",
            mlp_in=("layer.1.DenseReluDense.wi|layer.2.DenseReluDense.wi",
                    "layer.1.DenseReluDense.wi_0|layer.2.DenseReluDense.wi_0",
                    "layer.1.DenseReluDense.wi_1|layer.2.DenseReluDense.wi_1"),
            mlp_out="layer.1.DenseReluDense.wo|layer.2.DenseReluDense.wo", num_heads_attr="num_heads",
            config_mlp="d_ff",
            unsupported={"heads": "T5 shares one relative position bias, with one column per head, across blocks",
                         "layers": _ENC_DEC_DEPTH},
            encoder_decoder=True,
        ),
        ArchSpec(
            name="bart", model_types=("bart", "mbart", "marian", "pegasus", "blenderbot"),
            blocks=("model.encoder.layers", "model.decoder.layers"), embeddings=("model.shared",),
            attention="self_attn",
            q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj",
            mlp_in=("fc1",), mlp_out="fc2", norms=("self_attn_layer_norm", "final_layer_norm"),
            num_heads_attr="encoder_attention_heads", config_mlp=None,
            unsupported={"layers": _ENC_DEC_DEPTH}, encoder_decoder=True,
        ),
    )
}


def has_submodule(model: nn.Module, path: str) -> bool:
    """Whether ``model.get_submodule(path)`` would find a module."""
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def resolve(block: nn.Module, path: str | None) -> str | None:
    """The first alternative of ``path`` (``"a|b"``) that exists in ``block``, or ``None``."""
    if not path:
        return None
    return next((p for p in path.split("|") if has_submodule(block, p)), None)


def _block_paths(model: nn.Module, spec: ArchSpec) -> list[str]:
    """The block paths of ``spec`` present in ``model``, allowing a base-model prefix (``bert.encoder.layer``)."""
    found = []
    for blocks in spec.blocks:
        path = blocks if has_submodule(model, blocks) else next(
            (f"{prefix}.{blocks}" for prefix, _ in model.named_children() if has_submodule(model, f"{prefix}.{blocks}")), None)
        if path is not None and isinstance(model.get_submodule(path), (nn.ModuleList, nn.Sequential)):
            found.append(path)
            if not spec.encoder_decoder:
                break                      # alternatives (ViT in transformers 5 vs 4): the first that exists
    return found


def arch_of(model: nn.Module) -> ArchSpec | None:
    """The spec for ``model``: by ``config.model_type`` first, else by structure. ``None`` if unknown."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for spec in ARCHS.values():
        if model_type in spec.model_types and _block_paths(model, spec):
            return spec
    if model_type is not None and any(model_type in s.model_types for s in ARCHS.values()):
        return None
    for spec in ARCHS.values():
        if _block_paths(model, spec):
            return spec
    return None


def _unknown(model: nn.Module) -> TorchSlimError:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return TorchSlimError(f"cannot find the transformer blocks of {type(model).__name__}"
                          + (f" (model type {model_type!r})" if model_type else "")
                          + f"; architectures with table rows: {', '.join(ARCHS)}")


def config_problem(config: Any) -> str | None:
    """Why transformers' own validation rejects a (modified) Hugging Face config, or ``None`` when it passes: what
    ``from_pretrained`` (and torchslim.load) would refuse when reading the config back."""
    try:
        if callable(getattr(config, "validate", None)):
            config.validate()
        return None
    except Exception as e:  # noqa: BLE001 - transformers' validators raise their own error types
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return lines[-1].removeprefix("ValueError: ") if lines else type(e).__name__


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` for every transformer block of ``model``: all stacks, encoder first."""
    spec = arch_of(model)
    paths = _block_paths(model, spec) if spec else []
    if not paths:
        raise _unknown(model)
    return [(f"{p}.{i}", b) for p in paths for i, b in enumerate(model.get_submodule(p))]


def chain_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks one forward runs in sequence, each fed the previous one's output: the first stack only
    (an encoder-decoder's decoder blocks take the encoder's output as a side input instead)."""
    spec = arch_of(model)
    paths = _block_paths(model, spec) if spec else []
    if not paths:
        raise _unknown(model)
    return [(f"{paths[0]}.{i}", b) for i, b in enumerate(model.get_submodule(paths[0]))]
