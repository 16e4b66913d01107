"""Architecture knowledge as data.

Each :class:`ArchSpec` says where a family keeps its transformer blocks and, inside a block,
its attention and MLP projections. Techniques ask :func:`arch_of` and :func:`find_blocks`
instead of writing ``isinstance`` chains. Adding an architecture means adding a row.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from torchslim.core.errors import TorchSlimError


@dataclass(frozen=True)
class ArchSpec:
    name: str
    model_types: tuple[str, ...]          # values of HF ``config.model_type``
    blocks: str                            # dotted path of the block ModuleList
    embeddings: tuple[str, ...] = ()
    head: str | None = None                # output projection, if any
    attention: str | None = None           # attention submodule inside a block
    q: str | None = None                   # projections, relative to the block
    k: str | None = None
    v: str | None = None
    o: str | None = None
    mlp_in: tuple[str, ...] = ()           # MLP input projections (gate/up, intermediate)
    mlp_out: str | None = None             # MLP output projection
    norms: tuple[str, ...] = ()            # norms inside a block
    final_norm: str | None = None
    num_heads_attr: str = "num_attention_heads"
    num_kv_heads_attr: str | None = None

    def projections(self) -> dict[str, str]:
        """Role -> path (relative to a block) of every linear projection this spec names."""
        roles = {"q": self.q, "k": self.k, "v": self.v, "o": self.o, "mlp_out": self.mlp_out}
        roles.update({f"mlp_in{i}": p for i, p in enumerate(self.mlp_in)})
        return {r: p for r, p in roles.items() if p}


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            name="llama",
            model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma", "gemma2"),
            blocks="model.layers",
            embeddings=("model.embed_tokens",),
            head="lm_head",
            attention="self_attn",
            q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
            mlp_in=("mlp.gate_proj", "mlp.up_proj"),
            mlp_out="mlp.down_proj",
            norms=("input_layernorm", "post_attention_layernorm"),
            final_norm="model.norm",
            num_kv_heads_attr="num_key_value_heads",
        ),
        ArchSpec(
            name="bert",
            model_types=("bert", "roberta", "xlm-roberta"),
            blocks="encoder.layer",
            embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings"),
            attention="attention",
            q="attention.self.query", k="attention.self.key", v="attention.self.value",
            o="attention.output.dense",
            mlp_in=("intermediate.dense",),
            mlp_out="output.dense",
            norms=("attention.output.LayerNorm", "output.LayerNorm"),
        ),
        ArchSpec(
            name="gpt2",
            model_types=("gpt2",),
            blocks="transformer.h",
            embeddings=("transformer.wte", "transformer.wpe"),
            head="lm_head",
            attention="attn",
            o="attn.c_proj",
            mlp_in=("mlp.c_fc",),
            mlp_out="mlp.c_proj",
            norms=("ln_1", "ln_2"),
            final_norm="transformer.ln_f",
            num_heads_attr="n_head",
        ),
    )
}


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def _block_path(model: nn.Module, spec: ArchSpec) -> str | None:
    """The block path of ``spec`` in ``model``, allowing a base-model prefix (``bert.encoder.layer``)."""
    if _has(model, spec.blocks):
        return spec.blocks
    for prefix, _ in model.named_children():
        if _has(model, f"{prefix}.{spec.blocks}"):
            return f"{prefix}.{spec.blocks}"
    return None


def arch_of(model: nn.Module) -> ArchSpec | None:
    """The spec for ``model``: by ``config.model_type`` first, else by structure. ``None`` if unknown."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for spec in ARCHS.values():
        if model_type in spec.model_types:
            return spec
    for spec in ARCHS.values():
        if _block_path(model, spec) is not None:
            return spec
    return None


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` for each transformer block of ``model``, in order."""
    spec = arch_of(model)
    path = _block_path(model, spec) if spec else None
    if spec is None or path is None:
        raise TorchSlimError(
            f"cannot find the transformer blocks of {type(model).__name__}; known architectures: {', '.join(ARCHS)}"
        )
    blocks = model.get_submodule(path)
    return [(f"{path}.{i}", b) for i, b in enumerate(blocks)]
