"""SparseGPT (Frantar & Alistarh, 2023) as a pure function: weight + Hessian in, pruned weight out.

Columns are visited left to right in blocks. In each block the pruning mask is chosen
adaptively by the OBS saliency ``w**2 / [H^-1]_jj**2`` (for N:M, among every M columns), then
each column's pruned weights are zeroed and the error is spread over the not-yet-visited
columns through the upper Cholesky factor of ``H^-1``, which reconstructs the layer's output.
"""
from __future__ import annotations

import torch

from torchslim.core.errors import TorchSlimError


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag) * I)^-1``."""
    H = H.clone()
    diag = torch.arange(H.shape[0])
    H[diag, diag] += damp * torch.mean(torch.diag(H))
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.cholesky_inverse(L)
        return torch.linalg.cholesky(Hinv, upper=True)
    except torch.linalg.LinAlgError:
        raise TorchSlimError("SparseGPT: the Hessian is not positive definite even after dampening; "
                             "use more calibration samples or a larger damp") from None


def _block_mask(W1: torch.Tensor, d: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask of a column block: prune the ``sparsity`` fraction with the lowest OBS saliency."""
    sal = W1.pow(2) / d.reshape(1, -1).pow(2)
    k = int(sal.numel() * sparsity)
    keep = torch.ones_like(W1, dtype=torch.bool)
    if k:
        keep.view(-1)[torch.topk(sal.reshape(-1), k, largest=False, sorted=False).indices] = False
    return keep


def sparsegpt_prune(weight: torch.Tensor, H: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None,
                    block_size: int = 128, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pruned weight, keep mask)`` of ``weight [out, in]`` given the input Hessian ``H [in, in]``."""
    W = weight.detach().float().clone()
    H = H.float().clone()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = _inverse_cholesky(H, damp)
    keep = torch.ones_like(W, dtype=torch.bool)
    if nm is not None and cols % nm[1]:
        raise TorchSlimError(f"SparseGPT {nm[0]}:{nm[1]} needs in_features ({cols}) divisible by {nm[1]}")
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        keep1 = _block_mask(W1, d, sparsity) if nm is None else torch.ones_like(W1, dtype=torch.bool)
        err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                sal = W1[:, i:i + nm[1]].pow(2) / d[i:i + nm[1]].reshape(1, -1).pow(2)
                drop = torch.topk(sal, nm[1] - nm[0], dim=1, largest=False).indices
                keep1[:, i:i + nm[1]].scatter_(1, drop, False)
            w = W1[:, i]
            q = w * keep1[:, i]
            e = (w - q) / Hinv1[i, i]
            W1[:, i:] -= e.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            W1[:, i] = q
            err1[:, i] = e
        W[:, i1:i2] = W1
        keep[:, i1:i2] = keep1
        W[:, i2:] -= err1 @ Hinv[i1:i2, i2:]
    W[~keep] = 0
    return W.to(weight.dtype), keep
