"""Which layers IA3 scales by default, as data.

:data:`PEFT_DEFAULTS` holds Hugging Face peft's IA3 defaults (``peft.utils.constants``, 0.21) by
``config.model_type``: the targets, and the feed-forward ones among them that scale their input. They are
matched as peft matches them, so a default IA3 adapter here has exactly peft's layers and parameter count: a
module is a target when its name is the target or ends with ``"." + target`` (BERT's ``output.dense`` is then
both the feed-forward output and the attention output projection, as in peft). A model type peft has no row
for falls back to its architecture's row in :mod:`torchslim.core.archs` (:data:`ROLE_DEFAULTS`: the key and
value projections, or the fused query-key-value one, and the feed-forward output projection).
"""
from __future__ import annotations

import re

from torch import nn

from torchslim.core.archs import ArchSpec, arch_of, find_blocks, resolve
from torchslim.core.errors import TorchSlimError

# model_type -> (targets, feed-forward targets among them)
PEFT_DEFAULTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "t5": (("k", "v", "wo"), ("wo",)),
    "mt5": (("k", "v", "wi_1"), ()),
    "gpt2": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
    "bloom": (("query_key_value", "mlp.dense_4h_to_h"), ("mlp.dense_4h_to_h",)),
    "roberta": (("key", "value", "output.dense"), ("output.dense",)),
    "opt": (("q_proj", "k_proj", "fc2"), ("fc2",)),
    "gptj": (("q_proj", "v_proj", "fc_out"), ("fc_out",)),
    "gpt_neox": (("query_key_value", "dense_4h_to_h"), ("dense_4h_to_h",)),
    "gpt_neo": (("q_proj", "v_proj", "c_proj"), ("c_proj",)),
    "bart": (("q_proj", "v_proj", "fc2"), ("fc2",)),
    "gpt_bigcode": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "llama4": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "mistral": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "mixtral": (("k_proj", "v_proj", "w2"), ("w2",)),
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
    "deberta-v2": (("key_proj", "value_proj", "output.dense"), ("output.dense",)),
    "deberta": (("in_proj", "output.dense"), ("output.dense",)),
    "falcon": (("query_key_value", "dense_4h_to_h"), ("dense_4h_to_h",)),
    "phi": (("q_proj", "v_proj", "fc2"), ("fc2",)),
    "gemma": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma3_text": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "qwen3": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
}

# architecture roles (core.archs.ArchSpec fields) for model types peft has no row for
ROLE_DEFAULTS: tuple[tuple[str, ...], tuple[str, ...]] = (("k", "v", "qkv", "mlp_out"), ("mlp_out",))


def suffix_rule(target: str) -> str:
    """peft's matching of a target name as a selector rule: the name itself or a name ending in ``.target``."""
    return rf"re:(.*\.)?{re.escape(target)}"


def default_rules(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """``(target rules, feed-forward rules)`` for ``model``, or None when neither table knows it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in PEFT_DEFAULTS:
        targets, feedforward = PEFT_DEFAULTS[model_type]
        return tuple(map(suffix_rule, targets)), tuple(map(suffix_rule, feedforward))
    spec = arch_of(model)
    if spec is None:
        return None
    try:
        blocks = find_blocks(model)
    except TorchSlimError:
        return None
    targets, feedforward = (_role_names(blocks, spec, roles) for roles in ROLE_DEFAULTS)
    return (targets, feedforward) if targets else None


def _role_names(blocks: list[tuple[str, nn.Module]], spec: ArchSpec, roles: tuple[str, ...]) -> tuple[str, ...]:
    """Exact names of the layers that play ``roles`` in every block."""
    return tuple(f"{b}.{p}" for b, block in blocks for r in roles if (p := resolve(block, getattr(spec, r))) is not None)
