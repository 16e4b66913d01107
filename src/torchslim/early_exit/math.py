"""Pure math of early exit: tensors in, tensors out (pooling an exit's input, confidence measures, the exit rules of
DeeBERT and PABEE, and the distillation loss that trains exit heads from the final layer)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POOLS = ("tokens", "first", "grid", "mean", "none")
GRID = 2


def pool(h: torch.Tensor, how: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, F]`` features of a block output: the mean over the tokens of ``[B, T, H]`` that ``mask`` ``[B, T]``
    keeps (``tokens``; all tokens without a mask), its first token (``first``, BERT's [CLS]), the spatial mean of
    ``[B, C, *spatial]`` (``grid``: the means of a 2x2 grid of a ``[B, C, H, W]`` map, which keeps where things
    are), or ``h`` itself (``none``, already ``[B, F]``)."""
    if how == "tokens":
        if mask is None or mask.dim() != 2 or mask.shape != h.shape[:2]:
            return h.mean(1)
        m = mask.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
    if how == "first":
        return h[:, 0]
    if how == "grid":
        return F.adaptive_avg_pool2d(h, GRID).flatten(1)
    if how == "mean":
        return h.flatten(2).mean(-1)
    return h


def pool_for(ndim: int) -> str:
    """The pooling for a block output of ``ndim`` dimensions (3: tokens, 4+: feature maps, 2: vectors)."""
    return {2: "none", 3: "tokens", 4: "grid"}.get(ndim, "mean")


def features(shape: tuple[int, ...]) -> int:
    """Width of :func:`pool`'s output for a block output of ``shape`` (with :func:`pool_for`'s pooling)."""
    how = pool_for(len(shape))
    return shape[1] * GRID * GRID if how == "grid" else shape[1] if how in ("mean", "none") else shape[-1]


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` divided by ``log(classes)``: 0 (certain) .. 1 (uniform), per row."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])


def confidence_features(logits: torch.Tensor) -> torch.Tensor:
    """``[B, 2]``: normalized entropy and top probability, extra inputs of the learned exit gate."""
    return torch.stack([normalized_entropy(logits), F.softmax(logits.float(), -1).amax(-1)], -1).to(logits.dtype)


def entropy_exit(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """DeeBERT (Xin et al. 2020): exit the rows whose normalized entropy is strictly below ``threshold``
    (0 never fires)."""
    return normalized_entropy(logits) < threshold


def patience_step(pred: torch.Tensor, last: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """PABEE (Zhou et al. 2020): the count of consecutive exits that agreed with the one before (``last`` = -1 at the
    first exit); a row exits when the count reaches the patience."""
    return torch.where(pred == last, count + 1, torch.zeros_like(count))


def gate_exit(gate_logit: torch.Tensor, threshold: float) -> torch.Tensor:
    """A learned exit: the gate's probability that the exit agrees with the final layer is above ``threshold``
    (1 never fires)."""
    return torch.sigmoid(gate_logit.float()) > threshold


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))`` averaged over rows (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                    reduction="batchmean", log_target=True) * t * t


def gate_loss(gate_logit: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the gate against 'this exit's prediction equals the final layer's'."""
    target = (student.argmax(-1) == teacher.argmax(-1)).to(gate_logit.dtype)
    return F.binary_cross_entropy_with_logits(gate_logit.float(), target.float())
