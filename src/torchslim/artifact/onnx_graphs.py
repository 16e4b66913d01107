"""The graphs an ONNX export writes, each a module with a fixed signature plus example inputs and names, laid out
as ONNX Runtime (and optimum's ``ORTModelFor*`` classes) expect:

* causal LM -> ``model.onnx``: ``input_ids, attention_mask[, position_ids], past_key_values.{i}.key/value ->
  logits, present.{i}.key/value`` (the first step passes a past of length 0);
* encoder-decoder (T5, BART) -> ``encoder_model.onnx`` (``input_ids, attention_mask -> last_hidden_state``),
  ``decoder_model.onnx`` (``input_ids, encoder_attention_mask, encoder_hidden_states -> logits,
  present.{i}.decoder/encoder.key/value``) and ``decoder_with_past_model.onnx`` (``input_ids,
  encoder_attention_mask, past_key_values.{i}.decoder/encoder.key/value -> logits, present.{i}.decoder.key/value``);
* anything else -> one graph of the task's or the caller's example inputs to the model's first output.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim.core.errors import ConfigError, TorchSlimError

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Graph:
    file: str
    module: nn.Module
    kwargs: dict[str, Any]
    input_names: list[str]
    output_names: list[str]
    dynamic: Any = field(default_factory=dict)
    args: tuple[Any, ...] = ()


def model_kind(model: nn.Module) -> str:
    """``"seq2seq"``, ``"causal-lm"`` or ``"other"``."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False) and callable(getattr(model, "get_encoder", None)):
        return "seq2seq"
    if type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    return "other"


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and out:
        return next(iter(out.values()))
    raise TorchSlimError(f"ONNX export: the model returns {type(out).__name__}, not a tensor")


def _dims() -> tuple[Any, Any]:
    return torch.export.Dim("batch"), torch.export.Dim("seq")


def _ids(model: nn.Module, b: int, s: int) -> torch.Tensor:
    vocab = int(getattr(model.config, "vocab_size", 100) or 100)
    return torch.randint(min(3, vocab - 1), min(vocab, 200), (b, s), generator=torch.Generator().manual_seed(0))


# -- causal LM ------------------------------------------------------------------------------------------------
class _CausalLM(nn.Module):
    def __init__(self, model: nn.Module, positions: bool) -> None:
        super().__init__()
        self.model, self.positions = model, positions

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                past: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(k, v) for k, v in past or []])
        kw = {"position_ids": position_ids} if self.positions else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                         **kw)
        return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])


def _past_from_run(model: nn.Module, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    return [(layer.keys.detach().clone(), layer.values.detach().clone()) for layer in out.past_key_values.layers]


def causal_graphs(model: nn.Module) -> list[Graph]:
    b, s, p = 2, 3, 4
    positions = "position_ids" in inspect.signature(model.forward).parameters
    past = _past_from_run(model, _ids(model, b, p))
    n = len(past)
    batch, seq = _dims()
    plen, total = torch.export.Dim("past_sequence_length"), torch.export.Dim("total_sequence_length")
    kwargs: dict[str, Any] = {"input_ids": _ids(model, b, s), "attention_mask": torch.ones(b, p + s, dtype=torch.long)}
    dyn: dict[str, Any] = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total}}
    names = ["input_ids", "attention_mask"]
    if positions:
        kwargs["position_ids"] = torch.arange(p, p + s).expand(b, s).contiguous()
        dyn["position_ids"] = {0: batch, 1: seq}
        names.append("position_ids")
    kwargs["past"] = past
    dyn["past"] = [({0: batch, 2: plen}, {0: batch, 2: plen}) for _ in range(n)]
    names += [f"past_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    outs = ["logits"] + [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    return [Graph("model.onnx", _CausalLM(model, positions), kwargs, names, outs, dyn)]


# -- encoder-decoder ------------------------------------------------------------------------------------------
class _Encoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _Decoder(nn.Module):
    def __init__(self, model: nn.Module, with_past: bool) -> None:
        super().__init__()
        self.model, self.with_past = model, with_past

    def forward(self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None,
                past: list[tuple[torch.Tensor, ...]] | None = None) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache, EncoderDecoderCache

        if past:
            cache = EncoderDecoderCache(DynamicCache(ddp_cache_data=[(p[0], p[1]) for p in past]),
                                        DynamicCache(ddp_cache_data=[(p[2], p[3]) for p in past]))
            # the cross-attention keys/values come from the cache; the encoder states only give their shape
            d = self.model.config.d_model
            encoder_hidden_states = (encoder_attention_mask[:, :, None] * 0).to(past[0][2].dtype).expand(-1, -1, d)
        else:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.model(decoder_input_ids=input_ids, attention_mask=encoder_attention_mask,
                         encoder_outputs=(encoder_hidden_states,), past_key_values=cache, use_cache=True)
        kv = out.past_key_values
        res = [out.logits]
        for i, layer in enumerate(kv.self_attention_cache.layers):
            res += [layer.keys, layer.values]
            if not self.with_past:
                cross = kv.cross_attention_cache.layers[i]
                res += [cross.keys, cross.values]
        return tuple(res)


def seq2seq_graphs(model: nn.Module) -> list[Graph]:
    b, s, t, p = 2, 5, 3, 4
    batch, seq = _dims()
    enc_seq, plen = torch.export.Dim("encoder_sequence_length"), torch.export.Dim("past_decoder_sequence_length")
    ids, mask = _ids(model, b, s), torch.ones(b, s, dtype=torch.long)
    mask[1, -1] = 0
    with torch.no_grad():
        hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        first = _Decoder(model, False)(_ids(model, b, p), mask, hidden)
    n = (len(first) - 1) // 4
    past = [tuple(first[1 + 4 * i + j].detach().clone() for j in range(4)) for i in range(n)]
    enc = Graph("encoder_model.onnx", _Encoder(model), {"input_ids": ids, "attention_mask": mask},
                ["input_ids", "attention_mask"], ["last_hidden_state"],
                {"input_ids": {0: batch, 1: enc_seq}, "attention_mask": {0: batch, 1: enc_seq}})
    kinds = ("decoder.key", "decoder.value", "encoder.key", "encoder.value")
    dec = Graph("decoder_model.onnx", _Decoder(model, False),
                {"input_ids": _ids(model, b, t), "encoder_attention_mask": mask, "encoder_hidden_states": hidden},
                ["input_ids", "encoder_attention_mask", "encoder_hidden_states"],
                ["logits"] + [f"present.{i}.{k}" for i in range(n) for k in kinds],
                {"input_ids": {0: batch, 1: seq}, "encoder_attention_mask": {0: batch, 1: enc_seq},
                 "encoder_hidden_states": {0: batch, 1: enc_seq}})
    past_dyn = [({0: batch, 2: plen}, {0: batch, 2: plen}, {0: batch, 2: enc_seq}, {0: batch, 2: enc_seq})
                for _ in range(n)]
    with_past = Graph("decoder_with_past_model.onnx", _Decoder(model, True),
                      {"input_ids": _ids(model, b, t), "encoder_attention_mask": mask, "past": past},
                      ["input_ids", "encoder_attention_mask"]
                      + [f"past_key_values.{i}.{k}" for i in range(n) for k in kinds],
                      ["logits"] + [f"present.{i}.{k}" for i in range(n) for k in kinds[:2]],
                      {"input_ids": {0: batch, 1: seq}, "encoder_attention_mask": {0: batch, 1: enc_seq},
                       "past": past_dyn})
    return [enc, dec, with_past]


# -- anything else --------------------------------------------------------------------------------------------
class _Plain(nn.Module):
    def __init__(self, model: nn.Module, names: list[str], positional: bool) -> None:
        super().__init__()
        self.model, self.names, self.positional = model, names, positional

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if self.positional:
            return _first(self.model(*args))
        return _first(self.model(**dict(zip(self.names, args))))


def _param_names(model: nn.Module, n: int) -> list[str]:
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in params[:n]]
    return names + [f"input_{i}" for i in range(len(names), n)]


def plain_graph(model: nn.Module, example: Any, task_names: bool) -> Graph:
    """One graph of ``example`` (a tensor, a tuple of tensors, or a dict of named tensors) to the model's first
    output; the first dimension of every input of rank >= 2 is the dynamic batch (text inputs: also the length)."""
    if isinstance(example, torch.Tensor):
        example = (example,)
    if isinstance(example, dict):
        items = [(k, v) for k, v in example.items() if isinstance(v, torch.Tensor)]
        if not items:
            raise ConfigError(f"ONNX export: no tensor among the example inputs {sorted(example)}")
        if task_names:
            items = [(k, v) for k, v in items if k in (*TEXT_INPUTS, "x", "pixel_values")] or items
        names, tensors, positional = [k for k, _ in items], [v for _, v in items], False
    elif isinstance(example, (tuple, list)) and example and all(isinstance(t, torch.Tensor) for t in example):
        tensors, positional = list(example), True
        names = _param_names(model, len(tensors))
    else:
        raise ConfigError("ONNX export: example_inputs must be a tensor, a tuple of tensors or a dict of tensors")
    batch, seq = _dims()
    dyn, args = [], []
    for name, t in zip(names, tensors):
        if t.dim() >= 2 and t.shape[0] == 1:     # a batch of 1 would be traced as a constant 1
            t = t.expand(2, *t.shape[1:]).contiguous()
        args.append(t)
        d: dict[int, Any] = {0: batch} if t.dim() >= 2 else {}
        if name in TEXT_INPUTS and t.dim() == 2 and t.shape[1] > 1:
            d[1] = seq
        dyn.append(d)
    return Graph("model.onnx", _Plain(model, names, positional), {}, names, ["output"], (tuple(dyn),), tuple(args))
