"""Pure-PyTorch reference of the pruning ops: the "default" kernels and the test oracle.

Selection order, shared by every backend: elements are ranked by key ascending (key = |value|
for magnitude pruning, else the score itself), ties broken by position: tensor index in the
list first, then flat (row-major) index. The first k eligible elements in that order are pruned.
"""
from __future__ import annotations

import torch


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


_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_DTYPE_NAMES = "float32, bfloat16, float16, float64"


def _check_select_args(values, keep) -> None:
    """The checks of csrc/prune_checks.h (check_select_args), with the same messages."""
    if keep is not None and len(keep) != len(values):
        raise ValueError(f"sparsedistill: keep must hold one mask per tensor ({len(values)}), got {len(keep)}")
    for i, v in enumerate(values):
        if v.dtype not in _DTYPES:
            raise TypeError(f"sparsedistill: values[{i}] must be floating point ({_DTYPE_NAMES}), got {v.dtype}")
        if v.device != values[0].device:
            raise ValueError(f"sparsedistill: values[{i}] must be on {values[0].device}, got {v.device}")
        if keep is not None and (keep[i].dtype != torch.bool or keep[i].shape != v.shape
                                 or keep[i].device != v.device):
            raise ValueError(f"sparsedistill: keep[{i}] must be a bool tensor of the shape of values[{i}] "
                             f"{tuple(v.shape)} on its device")


def select_smallest(values: list[torch.Tensor], keep: list[torch.Tensor] | None, k: int,
                    magnitude: bool) -> list[torch.Tensor]:
    """Reference of ``sparsedistill::select_smallest``; returns one bool keep-mask per tensor."""
    _check_select_args(values, keep)
    keys, eligible = [], []
    for i, v in enumerate(values):
        if torch.isnan(v).any():
            raise ValueError(f"sparsedistill: tensors[{i}] (or its scores) holds NaN: magnitudes must be comparable")
        keys.append(order_keys(v, magnitude))
        eligible.append(keep[i].reshape(-1) if keep is not None
                        else torch.ones(v.numel(), dtype=torch.bool, device=v.device))
    flat_keys = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.int64)
    flat_eligible = torch.cat(eligible) if eligible else torch.zeros(0, dtype=torch.bool)
    n_eligible = int(flat_eligible.sum())
    if not 0 <= k <= n_eligible:
        raise ValueError(f"sparsedistill: k must lie in [0, {n_eligible}] (the eligible elements), got {k}")
    # Not-eligible elements sort last; a stable sort keeps position order among equal keys.
    rank_keys = torch.where(flat_eligible, flat_keys, torch.full_like(flat_keys, 1 << 33))
    order = torch.sort(rank_keys, stable=True).indices
    flat_keep = flat_eligible.clone()
    flat_keep[order[:k]] = False
    # Separate tensors (not views of one buffer): op outputs must not alias each other.
    return [m.view(v.shape).clone() for m, v in zip(flat_keep.split([v.numel() for v in values]), values)]


def check_nm_mask_args(values: torch.Tensor, n: int, m: int) -> None:
    """The checks of csrc/prune_checks.h (check_nm_mask_args), with the same messages. Reads
    metadata only, so the fake kernel uses it too."""
    if values.dtype not in _DTYPES:
        raise TypeError(f"sparsedistill: values must be floating point ({_DTYPE_NAMES}), got {values.dtype}")
    if values.dim() < 1:
        raise ValueError("sparsedistill: values must have at least one dim")
    if m < 1:
        raise ValueError(f"sparsedistill: m must be >= 1, got {m}")
    if not 0 <= n <= m:
        raise ValueError(f"sparsedistill: n must lie in [0, m] = [0, {m}], got {n}")
    if values.shape[-1] % m:
        raise ValueError(f"sparsedistill: the last dim of values (size {values.shape[-1]}) must be "
                         f"divisible by m = {m}")


def nm_mask(values: torch.Tensor, n: int, m: int, magnitude: bool) -> torch.Tensor:
    """Reference of ``sparsedistill::nm_mask``: bool keep-mask of values' shape that keeps, in
    every group of m consecutive elements along the last dim, the n largest keys (|value| if
    magnitude, else value), compared in values' dtype. Order within a group: key ascending, ties
    by index (the lower index is pruned first); the first m - n are pruned. NaN ranks above every
    number and NaNs tie (torch.sort's order); sparsedistill.nm_mask rejects NaN before this."""
    check_nm_mask_args(values, n, m)
    x = values.detach().abs() if magnitude else values.detach()
    groups = x.reshape(-1, m)
    order = torch.sort(groups, dim=-1, stable=True).indices
    keep = torch.ones(groups.shape, dtype=torch.bool, device=values.device)
    return keep.scatter_(-1, order[:, : m - n], False).reshape(values.shape)


def zero_smallest(tensors: list[torch.Tensor], masks: list[torch.Tensor],
                  scores: list[torch.Tensor] | None, keep: list[torch.Tensor] | None, k: int) -> None:
    """Reference of ``sparsedistill::zero_smallest``: masks[i] = the keep-masks of select_smallest
    (by |tensors|, or by scores), and every element of tensors whose mask is False set to zero."""
    if len(masks) != len(tensors) or any(m.dtype != torch.bool or m.shape != t.shape
                                         for m, t in zip(masks, tensors)):
        raise ValueError("sparsedistill: masks must hold one bool tensor of the shape of each tensor")
    if scores is not None and (len(scores) != len(tensors) or any(
            s.shape != t.shape or s.device != t.device for s, t in zip(scores, tensors))):
        raise ValueError("sparsedistill: scores must hold one tensor of the shape and device of each tensor")
    selected = torch.ops.sparsedistill.select_smallest(
        list(scores) if scores is not None else list(tensors), keep, k, scores is None)
    for t, m, sel in zip(tensors, masks, selected):
        m.copy_(sel)
        t.masked_fill_(~sel, 0)
