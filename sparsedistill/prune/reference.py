"""Pure-PyTorch reference of the pruning ops: the "default" kernels and the test oracle.

Selection order, shared by every backend: elements are ranked by key ascending (key = |value|
for magnitude pruning, else the score itself), ties broken by position: tensor index in the
list first, then flat (row-major) index. The first k eligible elements in that order are pruned.
"""
from __future__ import annotations

import torch

from .checks import (check_nm_mask_args, check_select_args, check_select_k, check_select_no_nan,
                     check_zero_smallest_args)


def order_keys(values: torch.Tensor, magnitude: bool) -> torch.Tensor:
    """int64 keys whose order is the order of the float values (|values| if magnitude)."""
    v = values.detach().reshape(-1).to(torch.float32)
    if magnitude:
        v = v.abs()
    bits = v.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    # IEEE order as unsigned: negatives flip all bits, non-negatives set the sign bit.
    # (-0.0 and +0.0 are made equal first, so that ties between them follow position.)
    bits = torch.where(v == 0, torch.full_like(bits, 0x80000000), bits)
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
