"""Packed embedding tables: tied to a quantized output head, or quantized on their own.

Tied embeddings stay tied when the output head is quantized: the input embedding reads its rows from the
head's packed codes (one copy of the table, as llama.cpp's ``token_embd`` serves both).

A language model with ``tie_word_embeddings`` uses one ``vocab x hidden`` matrix twice. Quantizing the head
alone used to leave the embedding in float beside an int8 head: the table stored twice (SmolLM2: a 57 MB bf16
table beside a 28 MB int8 head). :func:`tie_packed_head_` replaces such an embedding by a
:class:`PackedEmbedding` whose buffers are the head's own tensors; artifacts store them once (aliases).

An untied table (an encoder's word embedding: half of MiniLM's bytes) is quantized when a
``WeightOnlyConfig`` selects it (``type:Embedding``): its rows are rounded to the config's grid, one scale per row
or per group of a row, and :meth:`PackedEmbedding.from_rows` owns the codes. A lookup unpacks only the rows it
reads.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.modules import StandIn, register_module_format
from torchslim.core.surgery import replace_module
from torchslim.quantization.formats import Format, Granularity, PerTensor
from torchslim.quantization.packing import from_unsigned, unpack_bits
from torchslim.quantization.qlinear import QuantLinear, signed_codes

log = logging.getLogger("torchslim.quantization")
SHARED = ("packed", "scale", "offset", "levels")


@register_module_format
class PackedEmbedding(StandIn, nn.Module):
    """An embedding whose table is a packed output head's weight (rows = tokens), looked up row by row."""

    def __init__(self, num_embeddings: int, embedding_dim: int, fmt: Format, gran: Granularity, n_groups: int,
                 padding_idx: int | None = None, config: BaseConfig | None = None) -> None:
        super().__init__()
        head = QuantLinear(embedding_dim, num_embeddings, False, fmt, gran, n_groups, config=config)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.fmt, self.gran, self.config, self.padded_in = fmt, gran, config, head.padded_in
        self.out_dtype = torch.float32        # the dtype of the rows it returns (a bf16 fast path sets bf16)
        self.shared = True                    # the codes are an output head's (False: this table's own)
        for name in SHARED:
            t = getattr(head, name, None)
            if isinstance(t, torch.Tensor):
                self.register_buffer(name, t)
            else:
                setattr(self, name, None)

    @classmethod
    def tied_to(cls, head: QuantLinear, emb: nn.Embedding) -> PackedEmbedding:
        """An embedding sharing ``head``'s tensors (no copy)."""
        with torch.device("meta"):
            m = cls(emb.num_embeddings, emb.embedding_dim, head.fmt, head.gran, head.scale.shape[1], emb.padding_idx,
                    head.config)
        for name in SHARED:
            if getattr(head, name, None) is not None:
                m._buffers[name] = head._buffers[name]
        return m

    @classmethod
    def from_rows(cls, head: QuantLinear, emb: nn.Embedding) -> PackedEmbedding:
        """An embedding owning ``head``'s tensors: ``emb``'s table quantized as a linear weight (rows = tokens).
        A ConfigError for a grid a row lookup cannot read (one scale for the whole table, rows not on whole
        bytes)."""
        from torchslim.core.errors import ConfigError

        if isinstance(head.gran, PerTensor) or head.scale.shape[0] != emb.num_embeddings:
            raise ConfigError("an embedding table is quantized per row (PerChannel) or per group of a row "
                              "(PerGroup), not PerTensor")
        if (head.padded_in * head.fmt.storage_bits) % 8:
            raise ConfigError(f"{head.fmt.name} rows of {emb.embedding_dim} values do not fill whole bytes: an "
                              "embedding lookup cannot read them (use 8 or 4 bits, or groups that pad the row)")
        m = cls.tied_to(head, emb)
        m.shared = False
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        bits = self.fmt.storage_bits
        row_bytes = self.padded_in * bits // 8
        flat = ids.reshape(-1)
        raw = self.packed.view(self.num_embeddings, row_bytes)[flat]
        codes = from_unsigned(unpack_bits(raw, bits, flat.numel() * self.padded_in), bits, signed_codes(self.fmt))
        vals = self.levels[codes.long()] if self.levels is not None else codes.float()
        vals = vals.reshape(flat.numel(), self.scale.shape[1], -1) * self.scale[flat].unsqueeze(-1)
        if self.offset is not None:
            vals = vals + self.offset[flat].unsqueeze(-1)
        out = vals.reshape(flat.numel(), self.padded_in)[:, : self.embedding_dim]
        return out.reshape(*ids.shape, self.embedding_dim).to(self.out_dtype)

    def dense_weight(self) -> torch.Tensor:
        return self.forward(torch.arange(self.num_embeddings, device=self.packed.device)).float()

    def extra_repr(self) -> str:
        whose = "the output head's codes" if self.shared else "row lookup"
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.fmt.name} ({whose})"

    def torchslim_layer_info(self) -> dict[str, Any]:
        storage = f"{self.fmt.name}, shared with the output head" if self.shared else f"{self.fmt.name} rows"
        return {"technique": "tied" if self.shared else "rtn", "shared": self.shared,
                "config": self.config.to_dict() if self.config is not None else None,
                "storage": storage, "format": self.fmt.to_dict(),
                "granularity": self.gran.to_dict(), "kernel": "row lookup", "slower_than_fp32": False,
                "shape": [self.num_embeddings, self.embedding_dim], "groups": int(self.scale.shape[1]),
                "padding_idx": self.padding_idx}

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> PackedEmbedding:
        config = config_from_dict(info["config"]) if info.get("config") else None
        num, dim = info["shape"]
        m = cls(num, dim, config_from_dict(info["format"]), config_from_dict(info["granularity"]),
                int(info["groups"]), info.get("padding_idx"), config)
        m.shared = bool(info.get("shared", True))
        return m


def _why_not(emb: nn.Module, head: nn.Module) -> str | None:
    if type(emb) not in (nn.Embedding, PackedEmbedding):
        return f"{type(emb).__name__} computes more than a lookup (e.g. Gemma scales its rows)"
    if not isinstance(head, QuantLinear):
        return "the head is not a packed layer"
    if head.input_scale is not None:
        return "the head's weights are scaled for its inputs (AWQ)"
    if isinstance(head.gran, PerTensor) or head.scale.shape[0] != head.out_features:
        return "the head is not quantized per row"
    if (head.padded_in * head.fmt.storage_bits) % 8:
        return "the head's rows do not start on whole bytes"
    if (head.out_features, head.in_features) != (emb.num_embeddings, emb.embedding_dim):
        return "the head and the embedding differ in shape"
    return None


def tie_packed_head_(model: nn.Module) -> int:
    """If ``model`` ties its input embedding to a head that is now packed, make the embedding read the head's
    codes (or re-point a :class:`PackedEmbedding` at a replaced head). Returns 1 if it did, else 0."""
    config = getattr(model, "config", None)
    if not (getattr(config, "tie_word_embeddings", False) and hasattr(model, "get_input_embeddings")):
        return 0
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if isinstance(emb, PackedEmbedding) and isinstance(head, QuantLinear) and emb.packed is head.packed:
        return 0
    if not isinstance(emb, (nn.Embedding, PackedEmbedding)) or not isinstance(head, QuantLinear):
        return 0
    why = _why_not(emb, head)
    name = next(n for n, m in model.named_modules() if m is emb)
    if why is not None:
        log.warning("the input embedding stays apart from the quantized head (stored twice): %s", why)
        return 0
    replace_module(model, name, PackedEmbedding.tied_to(head, emb))
    log.info("%s now reads the output head's %s codes: the tied table is stored once", name, head.fmt.name)
    return 1


def head_is_shared(model: nn.Module, module: nn.Module) -> bool:
    """Whether ``module`` (a packed head) also serves a :class:`PackedEmbedding` (then it is not retrained)."""
    packed = getattr(module, "packed", None)
    return packed is not None and any(isinstance(m, PackedEmbedding) and m.packed is packed for m in model.modules())
