"""``prune_`` handler of :class:`StructuredConfig`: dispatch to the dependency graph (conv nets,
``channels``) or to the architecture tables (transformer heads, neurons, blocks), then record
the new sizes in the Hugging Face config so the model reloads at its new shape."""
from __future__ import annotations

import dataclasses

import logging
from typing import Any

import torch
from torch import nn

from torchslim.calibration.pipeline import calibration_batches, run_basic
from torchslim.calibration.stats import InputNormStats
from torchslim.core.archs import ArchSpec, arch_of, config_problem, find_blocks, resolve
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.linear import out_in
from torchslim.core.registry import apply_, register_handler
from torchslim.pruning.config import StructuredConfig, Target
from torchslim.pruning.importance import Importance

log = logging.getLogger("torchslim.pruning")


def gradients(model: nn.Module, task: Any, n_samples: int, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Task-loss gradients summed over about ``n_samples`` training samples (Taylor importance)."""
    from torchslim.pruning.channels import accumulate_grads

    if task is None or not hasattr(task, "loss") or not hasattr(task, "train_batches"):
        raise ConfigError("Taylor importance needs a task with a loss: pass task=<task> (or calibration=<task>)")
    return accumulate_grads(model, task, None, n_samples=n_samples, batch_size=batch_size)


def input_norms(model: nn.Module, names: list[str], calibration: Any, n_samples: int) -> dict[str, torch.Tensor]:
    """``||x_j||`` of the inputs of layers ``names`` (Wanda-style structured importance)."""
    batches, forward = calibration_batches(calibration, n_samples)
    norms: dict[str, torch.Tensor] = {}
    run_basic(model, {n: model.get_submodule(n) for n in names}, batches, forward,
              lambda _n, m: InputNormStats(out_in(m)[1]),
              lambda measured: norms.update({n: s.norm for n, (_, s) in measured.items()}), "activation norms")
    return norms


def record_layer_sizes(model: nn.Module, spec: ArchSpec, infos: list) -> None:
    """Write the per-layer sizes into the HF config; uniform sizes also go to the family's standard fields
    (then ``from_pretrained`` rebuilds the pruned shapes by itself where the architecture allows)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    sizes = [{"num_attention_heads": i.heads, "num_key_value_heads": i.kv_heads, "intermediate_size": i.neurons}
             for i in infos]
    cfg.torchslim_layer_sizes = sizes
    if spec.encoder_decoder:
        return                              # per-stack fields: torchslim.load rebuilds them from its own record
    if len({s["intermediate_size"] for s in sizes}) == 1 and spec.config_mlp and hasattr(cfg, spec.config_mlp):
        setattr(cfg, spec.config_mlp, sizes[0]["intermediate_size"])
    heads = {(s["num_attention_heads"], s["num_key_value_heads"]) for s in sizes}
    if len(heads) != 1 or (infos[0].heads, infos[0].kv_heads) == _config_heads(cfg, spec):
        return
    hd = infos[0].head_dim
    if spec.config_head_dim is None and hd * infos[0].heads != getattr(cfg, "hidden_size", -1):
        log.warning("%s configs derive the head size from hidden_size / heads: after pruning heads the model "
                    "reloads with torchslim.load, not with from_pretrained", spec.name)
        return
    fields = {spec.num_heads_attr: infos[0].heads}
    if spec.config_head_dim is not None:             # explicit (read by the modeling code even where the config
        fields[spec.config_head_dim] = hd            # class has no field): no longer hidden_size // heads
    if spec.num_kv_heads_attr and hasattr(cfg, spec.num_kv_heads_attr):
        fields[spec.num_kv_heads_attr] = infos[0].kv_heads
    problem = _set_valid(cfg, fields)
    if problem:
        log.warning("%s configs cannot express %d heads of size %d (%s): the model reloads with torchslim.load, "
                    "not with from_pretrained", getattr(cfg, "model_type", spec.name), infos[0].heads, hd, problem)


def _set_valid(cfg: Any, fields: dict[str, Any]) -> str | None:
    """Set ``fields`` on a config if transformers' own validation accepts the result (else leave it unchanged and
    return the reason): a config it rejects would be written, and then neither loader could read it."""
    old = {k: getattr(cfg, k) for k in fields if hasattr(cfg, k)}
    for k, v in fields.items():
        setattr(cfg, k, v)
    problem = config_problem(cfg)
    if problem:
        for k in fields:
            if k in old:
                setattr(cfg, k, old[k])
            else:
                delattr(cfg, k)
    return problem


def _config_heads(cfg: Any, spec: ArchSpec) -> tuple[Any, Any]:
    heads = getattr(cfg, spec.num_heads_attr, None)
    kv = getattr(cfg, spec.num_kv_heads_attr, None) if spec.num_kv_heads_attr else heads
    return heads, kv if kv is not None else heads


def _transformer(model: nn.Module, config: StructuredConfig, ctx: ApplyContext) -> None:
    from torchslim.pruning import depth, transformer

    calibration = ctx.calibration_data

    spec = arch_of(model)
    if spec is None:
        raise ConfigError(f"cannot find attention/MLP blocks in {type(model).__name__}: "
                          "use targets=['channels'] (dependency graph) for other models")
    if Target.LAYERS in config.targets:
        depth.drop_blocks_(model, depth.blocks_to_drop(model, config, calibration))
    heads, neurons = Target.HEADS in config.targets, Target.NEURONS in config.targets
    if not (heads or neurons):
        return
    blocks = [(n, b) for n, b in find_blocks(model) if config.selector.matches(n, b)]
    if not blocks:
        raise ConfigError("StructuredConfig: the selector matched no transformer block")
    grads = norms = None
    if config.importance is Importance.TAYLOR:
        grads = gradients(model, ctx.training_task, config.n_samples)
    if config.importance is Importance.WANDA:
        if calibration is None:
            raise ConfigError("wanda importance needs calibration data: pass calibration=<task>")
        names = [f"{n}.{rel}" for n, b in blocks for rel in (resolve(b, spec.o), resolve(b, spec.mlp_out)) if rel]
        norms = input_norms(model, names, calibration, config.n_samples)
    transformer.prune_blocks_mlp_attn(model, spec, blocks, config, heads, neurons, grads, norms)
    record_layer_sizes(model, spec, [transformer.block_info(model, spec, n, b) for n, b in find_blocks(model)])


def _channels(model: nn.Module, config: StructuredConfig, ctx: ApplyContext) -> dict[str, Any]:
    from torchslim.pruning.channels import prune_channels_

    example_inputs = ctx.example_inputs
    if example_inputs is None:
        if ctx.calibration_data is None:
            raise ConfigError("channel pruning traces the model: pass calibration=<task> or example_inputs={...}")
        batches, _ = calibration_batches(ctx.calibration_data, 2, batch_size=2)  # batch > 1: unambiguous shapes
        example_inputs = batches[0]
    grads = gradients(model, ctx.training_task, config.n_samples) if config.importance is Importance.TAYLOR else None
    summary = prune_channels_(model, config, example_inputs, grads)
    groups = summary["groups"]
    return {"channel_groups": len(groups), "pruned_groups": sum(g["kept"] < g["size"] for g in groups)}


def with_importance(config: StructuredConfig, ctx: ApplyContext) -> StructuredConfig:
    """``config`` with its default importance resolved: Taylor when a task with a loss is given, else magnitude_l2
    (said loudly: magnitude alone can collapse a pretrained language model)."""
    if config.importance is not None:
        return config
    task = ctx.training_task
    if task is not None and callable(getattr(task, "loss", None)):
        chosen = Importance.TAYLOR
    else:
        chosen = Importance.MAGNITUDE_L2
        if set(config.targets) != {Target.LAYERS}:
            log.warning("StructuredConfig: no task given to take gradients from, so importance is magnitude_l2, "
                        "which can collapse a pretrained model's quality; pass task= (Taylor importance, as the "
                        "shipped recipes use) or set importance explicitly")
    ctx.record.details["importance"] = chosen.value
    return dataclasses.replace(config, importance=chosen)


@register_handler(StructuredConfig, uses=("calibration", "task", "example_inputs"))
def _structured(model: nn.Module, config: StructuredConfig, ctx: ApplyContext) -> nn.Module:
    config = with_importance(config, ctx)
    before = sum(p.numel() for p in model.parameters())
    if config.targets == (Target.CHANNELS,):
        ctx.record.details.update(_channels(model, config, ctx))
    else:
        _transformer(model, config, ctx)
    after = sum(p.numel() for p in model.parameters())
    log.info("structured pruning: %d -> %d parameters (%.1f%%)", before, after, 100 * after / max(before, 1))
    return model


def block_params(model: nn.Module) -> int:
    """Parameters inside the transformer blocks."""
    return sum(p.numel() for _, b in find_blocks(model) for p in b.parameters())


def prune_block_fraction_(model: nn.Module, fraction: float, *, importance: Importance | str = Importance.WANDA,
                          calibration: Any = None, n_samples: int = 32, head_share: float = 1.0) -> nn.Module:
    """Remove ``fraction`` of the transformer blocks' parameters: attention heads at ``fraction * head_share``
    (as near as GQA groups allow; 0 keeps every head), then as many MLP neurons as the rest needs."""
    spec = arch_of(model)
    if spec is None or not (spec.mlp_in or spec.mlp_in_fused):
        raise ConfigError(f"prune_block_fraction_ needs a transformer in the architecture tables, "
                          f"not {type(model).__name__}")
    total = block_params(model)
    mlp = sum(model.get_submodule(f"{n}.{rel}").weight.numel() for n, b in find_blocks(model)
              for rel in (resolve(b, p) for p in (*spec.mlp_in, spec.mlp_in_fused, spec.mlp_out)) if rel)
    if fraction * head_share > 0:
        apply_(model, StructuredConfig(targets=(Target.HEADS,), ratio=fraction * head_share, importance=importance,
                                       n_samples=n_samples), family="pruning", calibration=calibration)
    need = fraction * total - (total - block_params(model))
    ratio = min(max(need / mlp, 0.0), 0.95)
    if ratio > 0:
        apply_(model, StructuredConfig(targets=(Target.NEURONS,), ratio=ratio, importance=importance,
                                       n_samples=n_samples), family="pruning", calibration=calibration)
    return model
