"""The training hook of :class:`~torchslim.distill.config.DistillConfig`: teacher taps, projections, loss terms."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.calibration.pipeline import block_output
from torchslim.core.archs import arch_of, find_blocks
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


def _stacks(model: nn.Module) -> list[list[int]]:
    """Block indices (of :func:`find_blocks`) per stack, in order: one stack, or an encoder's then a decoder's."""
    stacks: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(find_blocks(model)):
        stacks.setdefault(name.rsplit(".", 1)[0], []).append(i)
    return list(stacks.values())


def stack_pairs(student: nn.Module, teacher: nn.Module, how: str) -> list[tuple[int, int, str]]:
    """``(student block, teacher block, positions)`` pairs, within each stack (an encoder block only learns from an
    encoder block: a decoder's positions are not the encoder's); ``positions`` is ``"encoder"`` or ``"decoder"``
    (the decoder stack of an encoder-decoder model)."""
    s_stacks, t_stacks = _stacks(student), _stacks(teacher)
    if len(s_stacks) != len(t_stacks):
        raise ConfigError(f"hidden-state distillation pairs blocks within stacks, and the student has "
                          f"{len(s_stacks)} block stack(s) but the teacher {len(t_stacks)}")
    kinds = ["encoder"] + ["decoder"] * (len(s_stacks) - 1)
    return [(ss[s], ts[t], kind) for ss, ts, kind in zip(s_stacks, t_stacks, kinds)
            for s, t in layer_pairs(len(ss), len(ts), how)]


def is_encoder_decoder(model: nn.Module) -> bool:
    """Whether the model's main output (logits, last hidden state) is a decoder's, over the decoder's positions."""
    spec = arch_of(model)
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False) or
                (spec is not None and spec.encoder_decoder))


def position_masks(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor | None]:
    """The mask of real positions of each kind of output: the encoder's (and a decoder-only model's) is the batch's
    ``attention_mask``; an encoder-decoder's decoder positions use ``decoder_attention_mask``, else the labels that
    are not ignored (-100), else all positions count."""
    def to(x: Any) -> torch.Tensor | None:
        return x.to(device) if isinstance(x, torch.Tensor) else None

    dec = to(batch.get("decoder_attention_mask"))
    if dec is None and isinstance(batch.get("labels"), torch.Tensor) and batch["labels"].dim() == 2:
        dec = to(batch["labels"] != -100)
    return {"encoder": to(batch.get("attention_mask")), "decoder": dec}


def fitting(mask: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor | None:
    """``mask`` when it covers ``out``'s ``[batch, positions]``; a mask of other positions is a bug of its caller."""
    if mask is None or out.dim() < 3:
        return None
    if tuple(mask.shape) != tuple(out.shape[:2]):
        raise ConfigError(f"a position mask of shape {tuple(mask.shape)} does not match an output of "
                          f"{tuple(out.shape[:2])} positions (set decoder_attention_mask or labels in the batch)")
    return mask


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
        self.pairs: list[tuple[int, int, str]] = []
        self.s_taps = self.t_taps = None
        self.main_positions = "decoder" if is_encoder_decoder(student) else "encoder"
        if config.hidden_weight or config.relation_weight:
            if not isinstance(teacher, nn.Module):
                raise ConfigError("hidden-state and relation distillation need a teacher model (not a callable)")
            self.pairs = stack_pairs(student, teacher, config.layer_map)
            self.s_taps = _Taps(student, [s for s, _, _ in self.pairs])
            self.t_taps = _Taps(teacher, [t for _, t, _ in self.pairs])
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
        masks = position_masks(batch, trainer.device)
        if cfg.output_weight:
            terms["kd_output"] = cfg.output_weight * self._output_loss(trainer, batch, masks[self.main_positions])
        if self.pairs and not (self.s_taps.out and self.t_taps.out):
            trainer.teacher_output(batch)                           # fills the teacher taps
        if cfg.hidden_weight:
            proj = getattr(trainer.model, PROJ, None)
            parts = []
            for k, (s, t, where) in enumerate(self.pairs):
                out = self.s_taps.out[s]
                parts.append(_relative_mse(proj[k](out) if proj is not None else out, self.t_taps.out[t],
                                           fitting(masks[where], out)))
            terms["kd_hidden"] = cfg.hidden_weight * torch.stack(parts).mean()
        if cfg.relation_weight:
            s, t, where = self.pairs[-1]
            out = self.s_taps.out[s]
            terms["kd_relation"] = cfg.relation_weight * L.relation_kl(
                out, self.t_taps.out[t], cfg.relation_heads, fitting(masks[where], out))

    def _output_loss(self, trainer: Any, batch: dict[str, Any], mask: torch.Tensor | None) -> torch.Tensor:
        student = _main_tensor(trainer.last_output)
        mask = fitting(mask, student)
        cached = self._cached(batch, student) if self.cache is not None else None
        if cached is not None:
            return L.topk_kd_kl_rest(student, cached["values"].to(student.device),
                                     cached["indices"].to(student.device), self.config.temperature, mask)
        teacher = _main_tensor(trainer.teacher_output(batch)).to(student.device)
        if _has_logits(trainer.last_output):
            if self.cache is not None:
                self._store(batch, teacher)
            return L.kd_kl(student, teacher, self.config.temperature, mask)
        return L.cosine_loss(student, teacher, mask)

    # -- teacher cache (top-k logits on disk, keyed by the batch's inputs) ----------------------------
    def _key(self, batch: dict[str, Any]) -> Path:
        h = hashlib.sha1(f"top-k log-probabilities at T={self.config.temperature!r}".encode())
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
        logp = torch.log_softmax(teacher.detach().float() / self.config.temperature, dim=-1)
        top = logp.topk(k, dim=-1)
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
