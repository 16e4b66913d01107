"""Distillation losses as pure functions (tensors in, a scalar out).

* :func:`kd_kl`: Hinton et al. 2015, ``T^2 * KL(softmax(t/T) || softmax(s/T))`` over the last dim,
  averaged over positions (optionally masked).
* :func:`topk_kd_kl`: the same against a teacher stored as its top-k logits (a cache on disk):
  both distributions are renormalised over the teacher's top-k classes.
* :func:`topk_kd_kl_rest`: the same against a teacher stored as the log-probabilities of its top-k classes:
  the KL over those classes plus one bucket holding the rest of each distribution's mass (exact when the top-k
  hold all the mass; never renormalised, so a student that moves mass outside the top-k pays for it).
* :func:`hidden_mse`: mean squared error between (projected) hidden states.
* :func:`cosine_loss`: ``1 - cos`` between embeddings (or hidden states), averaged.
* :func:`relation_kl`: MiniLM-v2 self-attention relations: for queries, keys or values ``x`` split in
  ``heads`` relation heads, ``softmax(x x^T / sqrt(d))`` of student and teacher compared by KL; this
  needs no equal widths or head counts.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _masked_mean(per_pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_pos.mean()
    m = mask.to(per_pos.dtype).reshape(per_pos.shape)
    return (per_pos * m).sum() / m.sum().clamp_min(1.0)


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 * KL(p_teacher || p_student)`` per position (last dim = classes), mean over positions."""
    t = temperature
    log_p_s = F.log_softmax(student.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=-1)
    per_pos = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return _masked_mean(per_pos, mask) * (t * t)


def topk_kd_kl(student: torch.Tensor, teacher_values: torch.Tensor, teacher_indices: torch.Tensor,
               temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`kd_kl` with the teacher known only by its top-k logits (values and class indices)."""
    s = student.float().gather(-1, teacher_indices.long())
    return kd_kl(s, teacher_values.float(), temperature, mask)


def topk_kd_kl_rest(student: torch.Tensor, teacher_logp: torch.Tensor, teacher_indices: torch.Tensor,
                    temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 * KL`` over the teacher's top-k classes and the bucket of all other classes; ``teacher_logp`` are the
    teacher's log-probabilities at temperature ``T`` (``log_softmax(t / T)``) of the classes ``teacher_indices``."""
    t = temperature
    log_q = F.log_softmax(student.float() / t, dim=-1).gather(-1, teacher_indices.long())
    log_p = teacher_logp.float()
    p = log_p.exp()
    p_rest = (1.0 - p.sum(-1)).clamp_min(0.0)
    q_rest = (1.0 - log_q.exp().sum(-1)).clamp_min(1e-12)
    rest = torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(1e-12).log() - q_rest.log()), torch.zeros_like(p_rest))
    per_pos = (p * (log_p - log_q)).sum(-1) + rest
    return _masked_mean(per_pos, mask) * (t * t)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per position (last dim = features), mean over positions."""
    per_pos = (student.float() - teacher.float()).pow(2).mean(-1)
    return _masked_mean(per_pos, mask)


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - cos(student, teacher)`` per position (last dim = features), mean over positions."""
    per_pos = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    return _masked_mean(per_pos, mask)


def _relations(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``log softmax(x_h x_h^T / sqrt(d_h))`` for ``x`` ``[batch, seq, width]`` split in ``heads`` relation heads."""
    b, n, w = x.shape
    if w % heads:
        raise ValueError(f"width {w} is not divisible by {heads} relation heads")
    xh = x.float().reshape(b, n, heads, w // heads).transpose(1, 2)
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(w // heads)
    return F.log_softmax(scores, dim=-1)


def relation_kl(student: torch.Tensor, teacher: torch.Tensor, heads: int,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM-v2 relation loss: KL between teacher and student self-relations of ``[batch, seq, width]``
    states (queries, keys, values or hidden states), ``heads`` relation heads each; widths may differ."""
    ls, lt = _relations(student, heads), _relations(teacher, heads)
    if mask is not None:       # padded keys get no probability, padded queries no weight
        key = mask[:, None, None, :].bool()
        ls, lt = ls.masked_fill(~key, -1e4).log_softmax(-1), lt.masked_fill(~key, -1e4).log_softmax(-1)
    per_row = (lt.exp() * (lt - ls)).sum(-1)                       # [batch, heads, seq]
    if mask is None:
        return per_row.mean()
    m = mask[:, None, :].to(per_row.dtype).expand_as(per_row)
    return (per_row * m).sum() / m.sum().clamp_min(1.0)
