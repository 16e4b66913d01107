"""Fully sharded data parallelism for the Trainer: ``TrainConfig.parallel = "fsdp"`` under ``torchrun``.

FSDP2 (``torch.distributed.fsdp.fully_shard``, the current API; nothing from the deprecated
``FullyShardedDataParallel`` wrapper) shards every parameter, its gradient and its optimizer state over
the processes: each rank keeps ``1 / world_size`` of them and all-gathers one group at a time around its
forward and backward. The groups are each transformer block the architecture table finds
(:func:`torchslim.core.archs.find_blocks`) and the root (embeddings, head, norms, added modules such as
distillation projections); a model without known blocks is one root group, with a warning.

What runs where, measured on torch 2.13:

* CPU: process group ``gloo`` (it has the reduce-scatter FSDP2 needs) and a ``cpu`` device mesh.
  ``CPUOffloadPolicy`` is *not* usable there: it pins memory and asks for an accelerator
  ("Cannot access accelerator device when none is available"); on CPU the parameters live in CPU memory anyway.
* CUDA: ``nccl`` and a ``cuda`` mesh (one GPU per process, ``cuda:LOCAL_RANK``).

Frozen parameters (a LoRA base, QAT's dynamic quantizers) are sharded like the others and get no gradient;
buffers (packed int4 codes and scales of torchslim's quantized layers, QAT's starting points) are not
parameters, so they stay whole on every rank. The teacher of a distillation is a separate model: it is not
sharded, every rank keeps a copy and runs it without gradients.

Checkpoints are the engine's usual files (:mod:`torchslim.train.checkpoint`): the full model and the
full optimizer state are gathered onto rank 0 (on the CPU) and written as safetensors + JSON, parameter
by parameter in the order of a 1-process run. So a checkpoint does not depend on the number of processes
nor on DDP versus FSDP: 2 processes resume on 1 and 1 on 2. Rank 0 needs CPU memory for one full copy of
the weights and optimizer state while saving.

After training :func:`unshard` puts whole ``nn.Parameter`` tensors back into the model and removes what
``fully_shard`` attached, so ``convert``, evaluation and ``torchslim.save`` see the plain model. FSDP2 has
no public inverse of ``fully_shard``; :func:`unshard` undoes the class swap, hooks and registry entries it
makes in torch 2.13 and then checks that nothing sharded is left.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from torchslim.core.archs import find_blocks
from torchslim.core.bounds import memory_budget
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.runtime.allocator import release_freed_memory
from torchslim.train.config import ParallelKind
from torchslim.train.distributed import DistContext, broadcast_json

log = logging.getLogger("torchslim.train")

# Bytes of training state per trainable parameter byte beyond the weights: gradient + two Adam moments.
_STATE_PER_TRAINABLE = 3
_AUTO_FRACTION = 0.5      # auto shards when whole replicas would take more than this share of the memory


@dataclass
class Sharded:
    """What :func:`shard` did: the modules given to ``fully_shard`` (blocks first, root last), and the scalar
    parameters it cannot shard, kept whole on every rank with their gradients averaged by :func:`sync_replicated`."""

    modules: list[tuple[str, nn.Module]] = field(default_factory=list)
    replicated: list[nn.Parameter] = field(default_factory=list)

    @property
    def root(self) -> nn.Module:
        return self.modules[-1][1]


def hooks_allow_sharding(hooks: list[Any]) -> list[str]:
    """Names of hooks that edit whole weights in place (pruning masks) and so cannot train sharded."""
    return [type(h).__name__ for h in hooks if not getattr(h, "supports_sharding", True)]


def replica_bytes(model: nn.Module) -> int:
    """Bytes one whole replica needs for training: the weights, plus gradients and two optimizer moments of
    the trainable ones."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel() * p.element_size()
        total += n + (_STATE_PER_TRAINABLE * n if p.requires_grad else 0)
    return total


def _device_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return memory_budget() // max(local, 1)       # the processes of one machine share its memory


def choose_parallel(kind: ParallelKind, model: nn.Module, ctx: DistContext, hooks: list[Any]) -> str:
    """``"none"`` (1 process), ``"ddp"`` or ``"fsdp"``; the same answer on every rank (rank 0 decides)."""
    if not ctx.is_distributed:
        if kind is ParallelKind.FSDP:
            log.info("parallel=fsdp with 1 process: nothing to shard, training the whole model")
        return "none"
    blocked = hooks_allow_sharding(hooks)
    if kind is ParallelKind.FSDP and blocked:
        raise ConfigError(f"parallel=fsdp: {', '.join(blocked)} edits whole weights in place and cannot train "
                          "sharded; use parallel=ddp")
    if kind is not ParallelKind.AUTO:
        return kind.value
    choice = None
    if ctx.is_main:
        need, have = replica_bytes(model), _device_memory(ctx.device)
        choice = "fsdp" if need > _AUTO_FRACTION * have and not blocked else "ddp"
        log.info("parallel=auto: %s (a replica needs %.2f GiB for training, %.2f GiB of memory per process%s)",
                 choice, need / 2**30, have / 2**30, f"; {', '.join(blocked)} needs DDP" if blocked else "")
    return str(broadcast_json(choice, ctx))


def _mesh(ctx: DistContext) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(ctx.device.type, (ctx.world_size,))


def shard(model: nn.Module, ctx: DistContext) -> Sharded:
    """``fully_shard`` each transformer block, then the root, on a 1-D mesh of all ranks (in place)."""
    from torch.distributed.fsdp import fully_shard

    try:
        blocks = find_blocks(model)
    except TorchSlimError:
        warnings.warn(f"parallel=fsdp: no transformer blocks of {type(model).__name__} in the architecture "
                      "table; the whole model is one FSDP group (sharded, but gathered whole around each "
                      "forward)", stacklevel=3)
        blocks = []
    _broadcast_from_rank0(model)
    mesh = _mesh(ctx)
    scalars = list({id(p): p for p in model.parameters() if p.dim() == 0}.values())   # fully_shard refuses them
    for _, block in blocks:
        fully_shard(block, mesh=mesh, ignored_params=set(scalars))
    fully_shard(model, mesh=mesh, ignored_params=set(scalars))
    if ctx.device.type == "cpu":
        release_freed_memory()              # the whole parameters just replaced by shards leave the process
    log.info("FSDP: %d blocks + root sharded over %d processes (%s)%s", len(blocks), ctx.world_size,
             ctx.device.type, f"; {len(scalars)} scalar parameters replicated" if scalars else "")
    return Sharded([*blocks, ("", model)], scalars)


def sync_replicated(sharded: Sharded, world_size: int) -> None:
    """Average the gradients of the replicated (scalar) parameters over the ranks, in one all-reduce."""
    params = [p for p in sharded.replicated if p.requires_grad]
    if not params:
        return
    flat = torch.stack([p.grad.reshape(()) if p.grad is not None else torch.zeros((), device=p.device)
                        for p in params]).float()
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for p, g in zip(params, flat / world_size):
        p.grad = g.to(p.dtype).reshape(p.shape)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over sharded (DTensor) and replicated gradients together (torch's
    stacks the per-group norms, which a mix of DTensors and tensors refuses)."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    zero = torch.zeros((), device=grads[0].device if grads else None)
    local = sum((g.to_local().float().pow(2).sum() for g in grads if isinstance(g, DTensor)), zero)
    dist.all_reduce(local, op=dist.ReduceOp.SUM)              # the shards' squares, summed over ranks
    whole = sum((g.float().pow(2).sum() for g in grads if not isinstance(g, DTensor)), zero)
    total = (local + whole).sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device, g.dtype))
    return total


@torch.no_grad()
def _broadcast_from_rank0(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank, as DDP does when it wraps: modules a technique added with
    a random start (projections, adapters, exit heads) would otherwise be a mix of each rank's own draws once
    every rank keeps its slice."""
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            data = t.data.view(torch.uint8) if t.dtype == torch.bool else t.data     # gloo has no bool
            dist.broadcast(data, src=0)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


# -- after training -------------------------------------------------------------------------------
def unshard(model: nn.Module, sharded: Sharded) -> None:
    """Make ``model`` a plain module again: whole parameters on every rank, no FSDP class, hooks or state."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for _, m in sharded.modules:
        if isinstance(m, FSDPModule):
            m.reshard()                          # the registered parameters are the sharded ones again
    _gather_parameters(model)
    for _, m in sharded.modules:
        state = fully_shard.state(m)
        _remove_fsdp_hooks(state)
        if isinstance(m, FSDPModule):
            m.__class__ = type(m).__mro__[type(m)._orig_cls_mro_index]
        _forget_composable_state(m)
    for m in model.modules():
        for attr in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            m.__dict__.pop(attr, None)
    left = [n for n, m in model.named_modules() if isinstance(m, FSDPModule)]
    if left or is_sharded(model):
        raise TorchSlimError(f"could not undo FSDP on {type(model).__name__} (left: {left[:3]}); this torch "
                             f"version ({torch.__version__}) changed fully_shard's internals")


def _gather_parameters(model: nn.Module) -> None:
    """Replace each DTensor parameter by an ``nn.Parameter`` of its whole value (tied ones stay tied)."""
    from torch.distributed.tensor import DTensor

    whole: dict[int, nn.Parameter] = {}
    for m in model.modules():                    # the same order on every rank: collectives line up
        for name, p in list(m._parameters.items()):
            if isinstance(p, DTensor):
                if id(p) not in whole:
                    whole[id(p)] = nn.Parameter(p.full_tensor().detach().clone(), requires_grad=p.requires_grad)
                m._parameters[name] = whole[id(p)]


def _remove_fsdp_hooks(state: Any) -> None:
    for attr in ("_pre_forward_hook_handle", "_post_forward_hook_handle"):
        handle = getattr(state, attr, None)
        if handle is not None:
            handle.remove()
    group = getattr(state, "_fsdp_param_group", None)
    if group is None:
        return
    for attr in ("_module_to_pre_save_state_dict_hook_handle", "_module_to_pre_load_state_dict_hook_handle"):
        for handle in getattr(group, attr, {}).values():
            handle.remove()
    for fsdp_param in group.fsdp_params:
        handle = getattr(fsdp_param, "_post_load_hook_handle", None)
        if handle is not None:
            handle.remove()


def _forget_composable_state(module: nn.Module) -> None:
    import importlib

    from torch.distributed import _composable_state

    contract = importlib.import_module("torch.distributed._composable.contract")   # the package shadows it
    module.__dict__.pop(contract.STATE_KEY, None)
    module.__dict__.pop(contract.REGISTRY_KEY, None)
    _composable_state._module_state_mapping.pop(module, None)


# -- checkpoints: whole tensors in the 1-process layout --------------------------------------------
def _aliases(model: nn.Module) -> dict[str, list[str]]:
    """State-dict names sharing one tensor (tied embeddings): the first name -> the others."""
    first: dict[int, str] = {}
    groups: dict[str, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            groups.setdefault(first[id(t)], []).append(name)
        else:
            first[id(t)] = name
    return groups


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in the order ``optimizer.state_dict()`` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def gather_state(model: nn.Module, optimizer: torch.optim.Optimizer
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Whole model tensors (one name per tied group) and the whole optimizer state dict in the numbered
    layout of a 1-process ``optimizer.state_dict()``, on rank 0 (CPU); ``None`` on the other ranks.
    Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, \
        get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    tensors = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts)
    if dist.get_rank() != 0:
        return None
    for others in _aliases(model).values():
        for name in others:
            tensors.pop(name, None)
    order = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    state = {order[n]: dict(st) for n, st in osd["state"].items()}
    groups = [{**g, "params": [order[n] for n in g["params"]]} for g in osd["param_groups"]]
    return {k: v.contiguous() for k, v in tensors.items()}, {"state": state, "param_groups": groups}


def load_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, tensors: dict[str, torch.Tensor],
               optim_sd: dict[str, Any] | None) -> None:
    """Load whole tensors (as :func:`gather_state` gives them, or a 1-process checkpoint) into the sharded
    ``model`` and ``optimizer``; every rank passes the same values and keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, \
        set_optimizer_state_dict

    tensors = dict(tensors)
    for first, others in _aliases(model).items():
        for name in others:
            if first in tensors:
                tensors.setdefault(name, tensors[first])
    opts = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(model, tensors, options=opts)
    if optimizer is None or optim_sd is None:
        return
    names = _param_names(model, optimizer)
    state = {names[int(i)]: st for i, st in optim_sd["state"].items()}
    groups = [{**g, "params": [names[int(i)] for i in g["params"]]} for g in optim_sd["param_groups"]]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=opts)
