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


def select_smallest(values: list[torch.Tensor], keep: list[torch.Tensor] | None, k: int,
                    magnitude: bool) -> list[torch.Tensor]:
    """Reference of ``sparsedistill::select_smallest``; returns one bool keep-mask per tensor."""
    if keep is not None and len(keep) != len(values):
        raise ValueError(f"sparsedistill: keep must have one mask per tensor ({len(values)}), got {len(keep)}")
    keys, eligible = [], []
    for i, v in enumerate(values):
        if torch.isnan(v).any():
            raise ValueError(f"sparsedistill: tensors[{i}] (or its scores) holds NaN: magnitudes must be comparable")
        keys.append(order_keys(v, magnitude))
        eligible.append(keep[i].reshape(-1).bool() if keep is not None
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
