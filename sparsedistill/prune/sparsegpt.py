"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning of a Linear that, column block by
column block, chooses the mask from w^2 / [H^-1]_cc^2 and updates the weights not yet visited by
the optimal-brain-surgeon step, so that the layer's outputs on the calibration inputs change as
little as possible. H = X^T X over the calibration rows (calibration.collect_statistics with
hessian=True), dampened by 1% of its mean diagonal.

The math is that of the published step (reference.sparsegpt_published is a line-by-line port,
the test oracle); the differences are the mask selection (exact counts by the selection op instead
of a sort and a `<=` threshold, which prunes one extra weight per block and more on ties) and
in-place rank-1 updates.
"""
from __future__ import annotations

import torch

from .checks import check_float_tensor
from .magnitude import magnitude_mask
from .nm import nm_mask

__all__ = ["sparsegpt_prune_", "inverse_hessian_factor"]


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float = 0.01):
    """(U, dead): the upper Cholesky factor of (H + damp I)^-1, computed in float32 or float64
    (the dtype of `hessian`), and the bool mask of input features never active (zero diagonal;
    their weights are zeroed, as in the published code)."""
    H = hessian.clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    damp = percdamp * torch.mean(torch.diagonal(H))
    torch.diagonal(H).add_(damp)
    L, info = torch.linalg.cholesky_ex(H)
    if int(info):
        raise ValueError("hessian is not positive definite even after dampening; raise percdamp "
                         "or use more calibration rows")
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True), dead


@torch.no_grad()
def sparsegpt_prune_(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, *,
                     pattern: tuple[int, int] | None = None, blocksize: int = 128,
                     percdamp: float = 0.01) -> torch.Tensor:
    """Prunes `weight` (out x in) in place by SparseGPT and returns its bool keep-mask.

    hessian: (in, in) X^T X of the layer's inputs (any positive scale). sparsity: the fraction
    pruned in every block of `blocksize` columns (unstructured); pattern=(n, m): keep n of every
    m consecutive weights of a row instead (sparsity is then ignored). The update runs in
    float32 (float64 if the hessian is float64) and the result is written back in weight's dtype.
    """
    check_float_tensor("weight", weight)
    check_float_tensor("hessian", hessian)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must have shape ({cols}, {cols}) (in_features squared), got "
                         f"{tuple(hessian.shape)}")
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    if pattern is not None:
        n, m = pattern
        if not 0 < n < m or cols % m:
            raise ValueError(f"pattern (n, m) = {pattern} needs 0 < n < m and in_features ({cols}) divisible by m")
        if blocksize % m:
            raise ValueError(f"blocksize ({blocksize}) must be a multiple of m = {m}")
    acc = torch.float64 if hessian.dtype == torch.float64 else torch.float32
    U, dead = inverse_hessian_factor(hessian.to(device=weight.device, dtype=acc), percdamp)
    W = weight.detach().to(acc).clone()
    W[:, dead] = 0
    keep = torch.ones(rows, cols, dtype=torch.bool, device=weight.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2]  # updated in place: a view of W
        U1 = U[i1:i2, i1:i2]
        d = torch.diagonal(U1)
        err = torch.empty_like(W1)
        if pattern is None:
            keep1 = magnitude_mask(W1.square() / d.square(), float(sparsity))
        else:
            keep1 = torch.ones_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if pattern is not None and i % m == 0:
                keep1[:, i:i + m] = nm_mask(W1[:, i:i + m].square() / d[i:i + m].square(), n, m)
            w = W1[:, i]
            q = w * keep1[:, i]
            e = (w - q) / d[i]
            W1[:, i] = q
            W1[:, i + 1:].addr_(e, U1[i, i + 1:], alpha=-1)  # the OBS update of the rest of the block
            err[:, i] = e
        keep[:, i1:i2] = keep1
        if i2 < cols:
            W[:, i2:].addmm_(err, U[i1:i2, i2:], alpha=-1)  # and of the columns after it
    weight.detach().copy_(W)
    return keep
