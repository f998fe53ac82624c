"""Pure-PyTorch reference of the pruning ops: the "default" kernels and the test oracle.

Selection order, shared by every backend: elements are ranked by key ascending (key = |value|
for magnitude pruning, else the score itself), ties broken by position: tensor index in the
list first, then flat (row-major) index. The first k eligible elements in that order are pruned.
"""
from __future__ import annotations

import torch

from .checks import (check_grouped_args, check_zero_grouped_args, check_grouped_k, check_grouped_no_nan,
                     check_histogram_args, check_nm_mask_args, check_prune_ties_arg, check_threshold_arg,
                     check_select_args, check_select_k, check_select_no_nan,
                     check_zero_smallest_args)


def order_keys(values: torch.Tensor, magnitude: bool) -> torch.Tensor:
    """int64 keys whose order is the order of the float values (|values| if magnitude)."""
    v = values.detach().reshape(-1).to(torch.float32)
    if magnitude:
        v = v.abs()
    bits = v.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    # IEEE order as unsigned: negatives flip all bits, non-negatives set the sign bit.
    # (-0.0 becomes +0.0 first, so that ties between them follow position; the keys equal
    # csrc/prune/order_keys.h's bit for bit, which the distributed steps rely on.)
    bits = torch.where(v == 0, torch.zeros_like(bits), bits)
    return torch.where(bits >= 0x80000000, bits ^ 0xFFFFFFFF, bits | 0x80000000)


def prune_lowest(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask that prunes, along the last dim, the k lowest keys; equal keys are pruned
    lowest index first (a stable ascending sort). The one tie rule of every pruning function."""
    order = torch.sort(keys, dim=-1, stable=True).indices
    keep = torch.ones(keys.shape, dtype=torch.bool, device=keys.device)
    return keep.scatter_(-1, order[..., :k], False)


def select_smallest(values: list[torch.Tensor], keep: list[torch.Tensor] | None, k: int,
                    magnitude: bool) -> list[torch.Tensor]:
    """Reference of ``sparsedistill::select_smallest``; returns one bool keep-mask per tensor."""
    check_select_args(values, keep)
    eligible = [keep[i].reshape(-1) if keep is not None
                else torch.ones(v.numel(), dtype=torch.bool, device=v.device) for i, v in enumerate(values)]
    flat_eligible = torch.cat(eligible) if eligible else torch.zeros(0, dtype=torch.bool)
    check_select_k(k, int(flat_eligible.sum()))  # before the NaN check, as the native kernels
    for i, v in enumerate(values):
        check_select_no_nan(bool(torch.isnan(v).any()), i)
    keys = [order_keys(v, magnitude) for v in values]
    flat_keys = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.int64)
    # Not-eligible elements sort last (and stay False).
    rank_keys = torch.where(flat_eligible, flat_keys, torch.full_like(flat_keys, 1 << 33))
    flat_keep = prune_lowest(rank_keys, k) & flat_eligible
    # Separate tensors (not views of one buffer): op outputs must not alias each other.
    return [m.view(v.shape).clone() for m, v in zip(flat_keep.split([v.numel() for v in values]), values)]


def _eligible_keys(values, keep, magnitude):
    """(keys, eligible) of each tensor, flat."""
    return [(order_keys(v, magnitude), None if keep is None else keep[i].reshape(-1))
            for i, v in enumerate(values)]


def select_histogram(values, keep, shift: int, prefix: int, magnitude: bool) -> torch.Tensor:
    """Reference of ``sparsedistill::select_histogram``: int64 counts (65536) of the 16 key bits
    (key >> shift) & 0xFFFF over the eligible elements, all of them (prefix < 0; NaN raises) or
    those whose high 16 bits equal prefix."""
    check_select_args(values, keep)
    check_histogram_args(shift, prefix)
    device = values[0].device if values else torch.device("cpu")
    hist = torch.zeros(65536, dtype=torch.int64, device=device)
    for i, (keys, eligible) in enumerate(_eligible_keys(values, keep, magnitude)):
        if prefix < 0:
            check_select_no_nan(bool(torch.isnan(values[i]).any()), i)
        sel = torch.ones_like(keys, dtype=torch.bool) if eligible is None else eligible
        if prefix >= 0:
            sel = sel & ((keys >> 16) == prefix)
        hist += torch.bincount((keys[sel] >> shift) & 0xFFFF, minlength=65536)
    return hist.cpu()


def select_tie_counts(values, keep, threshold: int, magnitude: bool) -> torch.Tensor:
    """Reference of ``sparsedistill::select_tie_counts``: per tensor, the eligible elements
    whose key equals threshold (int64, CPU)."""
    check_select_args(values, keep)
    check_threshold_arg(threshold)
    out = [int((((keys == threshold) & eligible) if eligible is not None else (keys == threshold)).sum())
           for keys, eligible in _eligible_keys(values, keep, magnitude)]
    return torch.tensor(out, dtype=torch.int64)


def select_at_threshold(values, keep, threshold: int, prune_ties: torch.Tensor,
                        magnitude: bool) -> list[torch.Tensor]:
    """Reference of ``sparsedistill::select_at_threshold``: keep-masks that keep the eligible
    elements whose key is above threshold and prune those below; of the ties (key ==
    threshold) of tensor i the first prune_ties[i] by flat index are pruned, the rest kept."""
    check_select_args(values, keep)
    check_threshold_arg(threshold)
    check_prune_ties_arg(prune_ties, len(values))
    out = []
    for i, (keys, eligible) in enumerate(_eligible_keys(values, keep, magnitude)):
        tie = keys == threshold
        if eligible is not None:
            tie = tie & eligible
        rank = torch.cumsum(tie, 0) - 1  # the tie's position among the tensor's ties
        m = (keys > threshold) | (tie & (rank >= int(prune_ties[i])))
        if eligible is not None:
            m = m & eligible
        out.append(m.view(values[i].shape).clone())
    return out


def nm_mask(values: torch.Tensor, n: int, m: int, magnitude: bool) -> torch.Tensor:
    """Reference of ``sparsedistill::nm_mask``: bool keep-mask of values' shape that keeps, in
    every group of m consecutive elements along the last dim, the n largest keys (|value| if
    magnitude, else value), compared in values' dtype. Order within a group: key ascending, ties
    by index (the lower index is pruned first); the first m - n are pruned. NaN ranks above every
    number and NaNs tie (torch.sort's order); sparsedistill.nm_mask rejects NaN before this."""
    check_nm_mask_args(values, n, m)
    x = values.detach().abs() if magnitude else values.detach()
    return prune_lowest(x.reshape(-1, m), m - n).reshape(values.shape)


def zero_smallest(tensors: list[torch.Tensor], masks: list[torch.Tensor],
                  scores: list[torch.Tensor] | None, keep: list[torch.Tensor] | None, k: int) -> None:
    """Reference of ``sparsedistill::zero_smallest``: masks[i] = the keep-masks of select_smallest
    (by |tensors|, or by scores), and every element of tensors whose mask is False set to zero."""
    check_zero_smallest_args(tensors, masks, scores)
    selected = select_smallest(list(scores) if scores is not None else list(tensors), keep, k,
                               scores is None)
    for t, m, sel in zip(tensors, masks, selected):
        m.copy_(sel)
        t.masked_fill_(~sel, 0)


def group_view(x: torch.Tensor, group_rows: int, group_cols: int) -> torch.Tensor:
    """(R, C) -> (groups, group_rows * group_cols): one row per group, its elements row-major,
    groups ordered row-major over the (R / group_rows, C / group_cols) grid."""
    r, c = x.shape
    g = x.reshape(r // group_rows, group_rows, c // group_cols, group_cols).permute(0, 2, 1, 3)
    return g.reshape(-1, group_rows * group_cols)


def ungroup(g: torch.Tensor, shape, group_rows: int, group_cols: int) -> torch.Tensor:
    """Inverse of group_view."""
    r, c = shape
    x = g.reshape(r // group_rows, c // group_cols, group_rows, group_cols).permute(0, 2, 1, 3)
    return x.reshape(r, c)


def select_smallest_grouped(values: torch.Tensor, keep: torch.Tensor | None, group_rows: int,
                            group_cols: int, k: torch.Tensor, magnitude: bool) -> torch.Tensor:
    """Reference of ``sparsedistill::select_smallest_grouped``: a bool keep-mask of values' shape
    that prunes, in every group_rows x group_cols tile, its k[i, j] smallest eligible keys (ties:
    lowest row-major position in the tile first); not-eligible elements stay False."""
    check_grouped_args(values, keep, group_rows, group_cols, k)
    eligible = (torch.ones(values.shape, dtype=torch.bool, device=values.device) if keep is None else keep)
    eg = group_view(eligible, group_rows, group_cols)
    counts, kf = eg.sum(1), k.reshape(-1)
    bad = ((kf < 0) | (kf > counts)).nonzero()
    if bad.numel():
        g = int(bad[0])
        check_grouped_k(g, int(counts[g]), int(kf[g]))
    check_grouped_no_nan(bool(torch.isnan(values).any()))
    keys = group_view(order_keys(values, magnitude).view(values.shape), group_rows, group_cols)
    keys = torch.where(eg, keys, torch.full_like(keys, 1 << 33))  # not eligible: ranked last
    order = torch.sort(keys, dim=-1, stable=True).indices
    rank_pruned = torch.arange(keys.shape[1], device=keys.device) < kf.unsqueeze(1)
    keep_g = torch.ones_like(eg).scatter_(1, order, ~rank_pruned) & eg
    return ungroup(keep_g, values.shape, group_rows, group_cols).contiguous()


@torch.no_grad()
def sparsegpt_published(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, prune_n: int = 0,
                        prune_m: int = 0, blocksize: int = 128, percdamp: float = 0.01,
                        exact: bool = False) -> torch.Tensor:
    """A line-by-line torch port of the published SparseGPT step (SparseGPT.fasterprune of
    IST-DASLab/sparsegpt, without quantisation): the oracle of sparsegpt.sparsegpt_prune_.
    Returns the pruned weight (float32). prune_n of every prune_m pruned for N:M (0: unstructured).
    exact=True replaces the block threshold (`tmp <= sorted[int(numel * sparsity)]`, which
    prunes one more weight per block, and more on ties) by exactly round(numel * sparsity),
    lowest index first on ties: the selection of sparsegpt_prune_."""
    W = weight.detach().clone().float()
    columns = W.shape[1]
    H = hessian.clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns, device=W.device)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prune_n == 0:
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            if exact:
                mask1 = ~prune_lowest(order_keys(tmp, False).view(1, -1),
                                      int(round(tmp.numel() * sparsity))).view(tmp.shape)
            else:
                thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prune_n != 0 and i % prune_m == 0:
                tmp = W1[:, i:(i + prune_m)] ** 2 / (torch.diag(Hinv1)[i:(i + prune_m)].reshape((1, -1))) ** 2
                if exact:
                    mask1[:, i:(i + prune_m)] = ~prune_lowest(order_keys(tmp, False).view(tmp.shape), prune_n)
                else:
                    mask1.scatter_(1, i + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def zero_smallest_grouped(values: torch.Tensor, mask: torch.Tensor | None, keep: torch.Tensor | None, group_rows: int,
                          group_cols: int, k: torch.Tensor, col_scale: torch.Tensor | None) -> None:
    """Reference of ``sparsedistill::zero_smallest_grouped``: mask = select_smallest_grouped of
    |values| (times col_scale[j], a float32 product, when given; mask None: not written), and the
    pruned values zeroed."""
    check_zero_grouped_args(values, mask, keep, group_rows, group_cols, k, col_scale)
    if col_scale is None:
        sel = select_smallest_grouped(values, keep, group_rows, group_cols, k, True)
    else:
        scores = values.detach().float().abs() * col_scale
        sel = select_smallest_grouped(scores, keep, group_rows, group_cols, k, False)
    if mask is not None:
        mask.copy_(sel)
    values.masked_fill_(~sel, 0)
