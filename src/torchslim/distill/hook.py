"""The training hook of :class:`~torchslim.distill.config.DistillConfig`: teacher taps, projections, loss terms."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.calibration.pipeline import block_output
from torchslim.core.archs import find_blocks
from torchslim.core.errors import ConfigError
from torchslim.core.resize import add_module, remove_added
from torchslim.distill import losses as L
from torchslim.train.hooks import TrainHook

PROJ = "distill_projections"
_WIDTH_ATTRS = ("hidden_size", "d_model", "n_embd", "dim")


def layer_pairs(n_student: int, n_teacher: int, how: str) -> list[tuple[int, int]]:
    """``(student block, teacher block)`` pairs: every student block to the teacher block at the same relative
    depth (``uniform``), or only the last ones (``last``)."""
    if how == "last":
        return [(n_student - 1, n_teacher - 1)]
    return [(i, max(0, round((i + 1) * n_teacher / n_student) - 1)) for i in range(n_student)]


def _width(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    for attr in _WIDTH_ATTRS:
        if isinstance(getattr(cfg, attr, None), int):
            return getattr(cfg, attr)
    raise ConfigError(f"hidden-state distillation needs the model width of {type(model).__name__} (a config "
                      f"with one of {', '.join(_WIDTH_ATTRS)})")


class _Taps:
    """Forward hooks keeping the output of chosen blocks of a model during its forward."""

    def __init__(self, model: nn.Module, indices: list[int]) -> None:
        blocks = find_blocks(model)
        self.out: dict[int, torch.Tensor] = {}
        self.handles = [blocks[i][1].register_forward_hook(lambda m, a, o, i=i: self.out.__setitem__(i, block_output(o)))
                        for i in sorted(set(indices))]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class DistillHook(TrainHook):
    name = "distill"

    def __init__(self, config: Any, student: nn.Module, teacher: Any) -> None:
        self.config, self.teacher = config, teacher
        self.pairs: list[tuple[int, int]] = []
        self.s_taps = self.t_taps = None
        if config.hidden_weight or config.relation_weight:
            if not isinstance(teacher, nn.Module):
                raise ConfigError("hidden-state and relation distillation need a teacher model (not a callable)")
            self.pairs = layer_pairs(len(find_blocks(student)), len(find_blocks(teacher)), config.layer_map)
            self.s_taps = _Taps(student, [s for s, _ in self.pairs])
            self.t_taps = _Taps(teacher, [t for _, t in self.pairs])
            sw, tw = _width(student), _width(teacher)
            if sw != tw and config.hidden_weight:
                add_module(student, PROJ, nn.ModuleList(nn.Linear(sw, tw) for _ in self.pairs))
        self.cache = Path(config.teacher_cache) if config.teacher_cache else None

    def detach(self, student: nn.Module) -> None:
        """Remove the taps and the training-only projections (``convert``)."""
        for taps in (self.s_taps, self.t_taps):
            if taps is not None:
                taps.remove()
        if hasattr(student, PROJ):
            remove_added(student, PROJ)

    # -- loss terms ----------------------------------------------------------------------
    def update_losses(self, trainer: Any, batch: dict[str, Any], terms: dict[str, torch.Tensor]) -> None:
        cfg = self.config
        if cfg.task_weight == 0:
            terms.pop("task", None)
        elif cfg.task_weight != 1:
            terms["task"] = terms["task"] * cfg.task_weight
        mask = batch.get("attention_mask")
        mask = mask.to(trainer.device) if isinstance(mask, torch.Tensor) else None
        if cfg.output_weight:
            terms["kd_output"] = cfg.output_weight * self._output_loss(trainer, batch, mask)
        if self.pairs and not (self.s_taps.out and self.t_taps.out):
            trainer.teacher_output(batch)                           # fills the teacher taps
        if cfg.hidden_weight:
            proj = getattr(trainer.model, PROJ, None)
            parts = [_relative_mse(proj[k](self.s_taps.out[s]) if proj is not None else self.s_taps.out[s],
                                   self.t_taps.out[t], mask) for k, (s, t) in enumerate(self.pairs)]
            terms["kd_hidden"] = cfg.hidden_weight * torch.stack(parts).mean()
        if cfg.relation_weight:
            s, t = self.pairs[-1]
            terms["kd_relation"] = cfg.relation_weight * L.relation_kl(
                self.s_taps.out[s], self.t_taps.out[t], cfg.relation_heads, mask)

    def _output_loss(self, trainer: Any, batch: dict[str, Any], mask: torch.Tensor | None) -> torch.Tensor:
        student = _main_tensor(trainer.last_output)
        cached = self._cached(batch, student) if self.cache is not None else None
        if cached is not None:
            return L.topk_kd_kl(student, cached["values"].to(student.device), cached["indices"].to(student.device),
                                self.config.temperature, mask)
        teacher = _main_tensor(trainer.teacher_output(batch)).to(student.device)
        if _has_logits(trainer.last_output):
            if self.cache is not None:
                self._store(batch, teacher)
            return L.kd_kl(student, teacher, self.config.temperature, mask)
        return L.cosine_loss(student, teacher, mask)

    # -- teacher cache (top-k logits on disk, keyed by the batch's inputs) ----------------------------
    def _key(self, batch: dict[str, Any]) -> Path:
        h = hashlib.sha1()
        for k in sorted(batch):
            v = batch[k]
            if isinstance(v, torch.Tensor):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return self.cache / f"{h.hexdigest()}.safetensors"

    def _cached(self, batch: dict[str, Any], student: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The cached top-k teacher logits of ``batch``, checked like a manifest: a regular file of a bounded
        size, exactly ``values`` (float32) and ``indices`` (int32) of the student's shape with k columns,
        finite values and indices within the vocabulary. An entry failing a check is a warning line and a
        miss (the teacher recomputes it and the entry is rewritten)."""
        from torchslim.distill.cache import read_entry

        path = self._key(batch)
        k = min(self.config.cache_topk, student.shape[-1])
        return read_entry(path, (*student.shape[:-1], k), student.shape[-1])

    def _store(self, batch: dict[str, Any], teacher: torch.Tensor) -> None:
        from torchslim.distill.cache import write_entry

        k = min(self.config.cache_topk, teacher.shape[-1])
        top = teacher.detach().float().topk(k, dim=-1)
        write_entry(self._key(batch), top.values, top.indices)


def _relative_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """MSE divided by the teacher's mean square: comparable across layers and models (LLM hidden states reach
    hundreds), 1.0 for a student that outputs zeros."""
    return L.hidden_mse(student, teacher, mask) / L.hidden_mse(torch.zeros_like(teacher), teacher, mask).clamp_min(1e-12)


def _has_logits(out: Any) -> bool:
    """Logits: an output's ``.logits``, or a plain ``[batch, classes]`` tensor (a classifier's)."""
    return getattr(out, "logits", None) is not None or (isinstance(out, torch.Tensor) and out.dim() == 2)


def _main_tensor(out: Any) -> torch.Tensor:
    for key in ("logits", "last_hidden_state"):
        v = getattr(out, key, None)
        if isinstance(v, torch.Tensor):
            return v
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ConfigError(f"cannot find logits or hidden states in a {type(out).__name__} output")
