"""Block-wise reconstruction: train one transformer block at a time to reproduce the uncompressed block's output
(the approach of BRECQ, OmniQuant and EfficientQAT's block phase).

Both models' first-block inputs are caught once on calibration batches. For block ``k`` the teacher's block maps
its (uncompressed) inputs to the targets; the student's block, fed the outputs of the student blocks already
reconstructed, is trained on the relative mean squared error to those targets. Packed layers train in the form
their family registered (:mod:`torchslim.core.trainable`: latent weights with learned step sizes for int4/int8
layers) and pack back after the block; float layers (a structurally pruned block's smaller linears) and norms
train as they are. Only one block's activations and gradients exist at a time, and no step runs the whole model.

A block whose packed result is not better than it was on the calibration batches trains once more from where it
was at a quarter of the rates (a block whose error is already small can be overshot); if that fails too it is put
back as it was (and said). With ``checkpoint_dir`` every finished block is saved (safetensors) with a progress
file; a killed run resumes after the last finished block and, since each block's training is seeded by its
index, ends with the same weights as a run that was never interrupted.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.calibration.pipeline import Forward, block_output, catch_block_inputs
from torchslim.core.archs import chain_blocks
from torchslim.core.errors import ConfigError
from torchslim.core.progress import track
from torchslim.core.surgery import replace_module
from torchslim.core.trainable import form_of, trained_form_of

log = logging.getLogger("torchslim")
PROGRESS = "progress.json"


@dataclass(frozen=True)
class BlockPlan:
    """How each block trains: ``steps`` optimizer steps (one cached calibration batch each, in a seeded order),
    AdamW at ``lr`` for weights and norms and ``quantizer_lr`` for step sizes and offsets, cosine decay."""

    steps: int
    lr: float
    quantizer_lr: float
    seed: int = 0
    max_grad_norm: float = 1.0
    checkpoint_dir: str | None = None
    fingerprint: str = ""
    train_weights: bool = True      # False: packed layers keep their latent weights (step sizes, offsets, norms train)
    teacher_blocks: tuple[int, ...] | None = None   # the teacher block each student block learns (None: teacher_ends)


def relative_error(block: nn.Module, cache: list[tuple], targets: list[torch.Tensor],
                   outputs: list[torch.Tensor] | None = None) -> float:
    """Mean over batches of ``||block(x) - y||^2 / ||y||^2``; the block's outputs are appended to ``outputs`` when
    given (the next block's inputs, so the walk does not run the block again)."""
    total = 0.0
    with torch.no_grad():
        for (args, kwargs), y in zip(cache, targets):
            raw = block_output(block(*args, **kwargs))
            out = raw.float()
            total += float((out - y).pow(2).sum() / y.float().pow(2).sum().clamp_min(1e-12))
            if outputs is not None:
                outputs.append(raw)
    return total / max(len(cache), 1)


def _swap_in(block: nn.Module) -> dict[str, Any]:
    """Replace every packed layer that has a trainable form; returns ``{name: form}`` of those swapped."""
    swapped = {}
    for name, module in list(block.named_modules()):
        form = form_of(module) if name else None
        if form is not None:
            replace_module(block, name, form.to_train(module))
            swapped[name] = form
    return swapped


def _param_groups(block: nn.Module, swapped: dict[str, Any], plan: BlockPlan) -> list[dict[str, Any]]:
    """Every float parameter of the block trains; quantizer state at ``quantizer_lr``."""
    def is_quantizer(name: str) -> bool:
        return any(name.startswith(n + ".") and f.quantizer_params
                   and re.fullmatch(f.quantizer_params, name[len(n) + 1:]) for n, f in swapped.items())

    def is_latent(name: str) -> bool:
        return any(name.startswith(n + ".") for n in swapped) and not is_quantizer(name)

    weights, quantizers = [], []
    for name, p in block.named_parameters():
        if not p.is_floating_point() or (not plan.train_weights and is_latent(name)):
            continue
        p.requires_grad_(True)
        (quantizers if is_quantizer(name) else weights).append(p)
    groups = [{"params": weights, "lr": plan.lr}]
    if quantizers:
        groups.append({"params": quantizers, "lr": plan.quantizer_lr})
    return [g for g in groups if g["params"]]


def _pack_back(block: nn.Module, swapped: dict[str, Any], config: Any) -> None:
    for name, form in swapped.items():
        module = block.get_submodule(name)
        if trained_form_of(module) is form:
            replace_module(block, name, form.back(module, config))
    for p in block.parameters():
        p.requires_grad_(False)


RETRY_LR = 0.25     # a block that came out no better trains once more, from where it was, at this share of the rates


def _fit(k: int, block: nn.Module, cache: list[tuple], targets: list[torch.Tensor], plan: BlockPlan,
         config: Any) -> tuple[bool, int]:
    """Train ``block`` in place for ``plan.steps`` and pack it back; (whether anything trained, packed layers)."""
    swapped = _swap_in(block)
    groups = _param_groups(block, swapped, plan)
    if not groups or plan.steps == 0:
        _pack_back(block, swapped, config)
        return False, len(swapped)
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    peaks = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(plan.seed * 1_000_003 + k)
    order: list[int] = []
    block.eval()                                      # no dropout; autograd works the same
    for step in range(plan.steps):
        if not order:
            order = torch.randperm(len(cache), generator=gen).tolist()
        i = order.pop()
        (args, kwargs), y = cache[i], targets[i]
        out = block_output(block(*args, **kwargs)).float()
        loss = (out - y).pow(2).mean() / y.float().pow(2).mean().clamp_min(1e-12)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], plan.max_grad_norm)
        for g, peak in zip(opt.param_groups, peaks):
            g["lr"] = peak * 0.5 * (1 + math.cos(math.pi * step / plan.steps))
        opt.step()
    _pack_back(block, swapped, config)
    return True, len(swapped)


def train_block(k: int, block: nn.Module, cache: list[tuple], targets: list[torch.Tensor], plan: BlockPlan,
                config: Any, outputs: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """Reconstruct one block in place; returns its row (errors before/after, steps, seconds, what trained).
    A block whose packed result is no better than before (its error is often already small next to the steps
    the rates take) trains once more from where it was at ``RETRY_LR`` times the rates, and is put back as it
    was if that fails too. ``outputs``, when given, receives the finished block's outputs on ``cache``."""
    start = time.perf_counter()
    before = relative_error(block, cache, targets)
    original = copy.deepcopy(block)
    trained, packed = _fit(k, block, cache, targets, plan, config)
    row: dict[str, Any] = {"block": k, "error_before": before, "packed_layers": packed, "steps": 0}
    if not trained:
        if outputs is not None:
            relative_error(block, cache, targets, outputs)
        return {**row, "error_after": before, "kept": "unchanged (nothing to train)", "s": time.perf_counter() - start}
    want = outputs is not None
    last: list[torch.Tensor] = []
    after = relative_error(block, cache, targets, last if want else None)
    row.update(steps=plan.steps, error_after=after, kept="trained")
    if not after < before:
        first = after
        load_block(block, original.state_dict())
        slower = dataclasses.replace(plan, lr=plan.lr * RETRY_LR, quantizer_lr=plan.quantizer_lr * RETRY_LR)
        _fit(k, block, cache, targets, slower, config)
        last.clear()
        after = relative_error(block, cache, targets, last if want else None)
        row.update(steps=2 * plan.steps, error_first_try=first, error_after=after,
                   kept=f"trained (second try, at {RETRY_LR:g}x the rates)")
        log.info("reconstruction: block %d did not improve (%.4g -> %.4g); second try at %gx the rates: %.4g",
                 k, before, first, RETRY_LR, after)
        if not after < before:                        # still no better: keep the block as it was
            load_block(block, original.state_dict())
            row.update(error_after=before, kept="as it was (training did not lower its error, twice)")
            log.warning("reconstruction: block %d did not improve (%.4g -> %.4g, then %.4g at %gx the rates): kept "
                        "as it was", k, before, first, after, RETRY_LR)
            last.clear()
            if want:                                  # the rare case: run the restored block once more
                relative_error(block, cache, targets, last)
    row["s"] = time.perf_counter() - start
    if want:
        outputs.extend(last)
    return row


# -- checkpoints -----------------------------------------------------------------------------------------------
def _done_rows(plan: BlockPlan, names: list[str]) -> list[dict[str, Any]]:
    """Rows of the blocks a previous run of the same plan finished (empty without checkpoints or on mismatch)."""
    if not plan.checkpoint_dir:
        return []
    path = Path(plan.checkpoint_dir) / PROGRESS
    if path.is_symlink() or not path.is_file():
        return []
    from torchslim.core.io import read_text

    try:
        st = json.loads(read_text(path, 1 << 20, "reconstruction progress file not found"))
    except (ValueError, OSError, ConfigError) as e:
        log.warning("reconstruction: %s unreadable (%s); starting from the first block", path, e)
        return []
    rows = st.get("rows") if isinstance(st, dict) else None
    if st.get("fingerprint") != plan.fingerprint or st.get("blocks") != names or not isinstance(rows, list):
        log.warning("reconstruction: %s belongs to another run; starting from the first block", path)
        return []
    return [r for r in rows if isinstance(r, dict)][: len(names)]


def _save(plan: BlockPlan, k: int, block: nn.Module, names: list[str], rows: list[dict[str, Any]]) -> None:
    from safetensors.torch import save_file

    from torchslim.core.io import atomic_file, atomic_path

    folder = Path(plan.checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"block-{k}.safetensors") as tmp:
        save_file({n: t.detach().contiguous() for n, t in block.state_dict().items()}, str(tmp))
    with atomic_file(folder / PROGRESS) as f:
        f.write(json.dumps({"fingerprint": plan.fingerprint, "blocks": names, "rows": rows}, indent=1))


def _load(plan: BlockPlan, k: int, block: nn.Module) -> None:
    from safetensors.torch import load_file

    path = Path(plan.checkpoint_dir) / f"block-{k}.safetensors"
    if path.is_symlink() or not path.is_file():
        raise ConfigError(f"reconstruction: {path} is missing; remove {Path(plan.checkpoint_dir) / PROGRESS} to "
                          "start over")
    expected = block.state_dict()
    got = load_file(str(path))
    if set(got) != set(expected) or any(got[n].shape != expected[n].shape or got[n].dtype != expected[n].dtype
                                        for n in expected):
        raise ConfigError(f"reconstruction: {path} does not hold this block's tensors")
    load_block(block, got)


def load_block(block: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``block`` and drop what packed layers derived from their old tensors (prepacked kernel
    weights are rebuilt from the loaded codes: ``.to()`` clears them, by this codebase's convention)."""
    block.load_state_dict(state)
    device = next((t.device for t in state.values()), torch.device("cpu"))
    block.to(device)


# -- the walk --------------------------------------------------------------------------------------------------
def teacher_ends(n_student: int, n_teacher: int) -> list[int]:
    """The teacher block whose output student block ``i`` learns: the same index for equal depths, else evenly
    spaced (``round((i + 1) * T / S) - 1``: a 3-block student of a 6-block teacher learns blocks 1, 3 and 5)."""
    if n_student > n_teacher:
        raise ConfigError(f"block-wise reconstruction: the student has {n_student} blocks, more than the teacher's "
                          f"{n_teacher}; each student block learns one or more teacher blocks")
    return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]


def _advance(blocks: list[tuple[str, nn.Module]], cache: list[tuple], start: int, end: int) -> list[tuple]:
    """``cache`` (inputs of block ``start``) carried through blocks ``start..end``: the inputs of block end + 1."""
    with torch.no_grad():
        for j in range(start, end + 1):
            cache = [((block_output(blocks[j][1](*a, **kw)),) + tuple(a[1:]), kw) for a, kw in cache]
    return cache


def reconstruct(student: nn.Module, teacher: nn.Module, batches: list[dict], forward: Forward, plan: BlockPlan,
                config: Any) -> list[dict[str, Any]]:
    """Reconstruct every block of ``student`` against the teacher's block output at the same depth
    (:func:`teacher_ends`); one row per block."""
    s_blocks, t_blocks = chain_blocks(student), chain_blocks(teacher)
    ends = teacher_ends(len(s_blocks), len(t_blocks))
    if plan.teacher_blocks is not None:
        ends = list(plan.teacher_blocks)
        if len(ends) != len(s_blocks) or ends[-1] >= len(t_blocks):
            raise ConfigError(f"block-wise reconstruction: teacher_blocks {ends} must name one of the teacher's "
                              f"{len(t_blocks)} blocks for each of the student's {len(s_blocks)}")
    names = [n for n, _ in s_blocks]
    done = _done_rows(plan, names)
    if done:
        log.info("reconstruction: resuming after block %d of %d", len(done) - 1, len(names))
    s_cache = catch_block_inputs(student, s_blocks[0][1], batches, forward)
    t_cache = catch_block_inputs(teacher, t_blocks[0][1], batches, forward)
    rows: list[dict[str, Any]] = []
    t_next = 0
    for k in track(range(len(names)), "reconstructing blocks"):
        sb = s_blocks[k][1]
        t_cache = _advance(t_blocks, t_cache, t_next, ends[k])
        t_next = ends[k] + 1
        targets = [a[0].float() for a, _ in t_cache]
        if k < len(done):
            _load(plan, k, sb)
            rows.append(done[k])
            s_cache = _advance(s_blocks, s_cache, k, k)
            continue
        outputs: list[torch.Tensor] = []
        rows.append({**train_block(k, sb, s_cache, targets, plan, config, outputs), "teacher_block": ends[k]})
        if plan.checkpoint_dir:
            _save(plan, k, sb, names, rows)
        s_cache = [((y,) + tuple(a[1:]), kw) for y, (a, kw) in zip(outputs, s_cache)]
    return rows
