"""Magnitude pruning with exact thresholds and no sort: the k smallest magnitudes (or scores) of
a tensor, or of a whole list of tensors at once, are found by radix selection over their float
bits (a few passes, memory the size of a histogram) and returned as bool masks.

Masks are True where a weight is kept (the convention of torch.nn.utils.prune). Exactly k
elements are pruned; ties at the threshold are broken by position: lowest flat index first
(and, across a list, earlier tensors first), the same on every backend.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def resolve_amount(amount, n: int, name: str = "amount") -> int:
    """How many of n elements to prune: a fraction in [0, 1] (rounded, as torch.nn.utils.prune
    does) or an integer count in [0, n]."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"{name} must be a float fraction in [0, 1] or an int count, got {amount!r}")
    if isinstance(amount, numbers.Integral):
        if not 0 <= amount <= n:
            raise ValueError(f"{name} as a count must lie in [0, {n}] (the prunable elements), got {amount}")
        return int(amount)
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"{name} as a fraction must lie in [0, 1], got {amount}")
    return int(round(amount * n))


def _check_same(name: str, x, like: torch.Tensor, dtypes) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)}, got {tuple(x.shape)}")
    if x.device != like.device:
        raise ValueError(f"{name} must be on {like.device}, got {x.device}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {dtypes}, got {x.dtype}")


def _selection_args(tensors, amount, scores, masks):
    """Checks the arguments of the magnitude functions; returns (tensors, scores, masks, k)."""
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or t.dtype not in _FLOATS:
            raise TypeError(f"tensors[{i}] must be a floating-point tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
    if scores is not None:
        scores = list(scores)
        if len(scores) != len(tensors):
            raise ValueError(f"scores must hold one tensor per tensor ({len(tensors)}), got {len(scores)}")
        for i, (s, t) in enumerate(zip(scores, tensors)):
            _check_same(f"scores[{i}]", s, t, _FLOATS)
        scores = [s.detach() for s in scores]
    if masks is not None:
        masks = list(masks)
        if len(masks) != len(tensors):
            raise ValueError(f"masks must hold one mask per tensor ({len(tensors)}), got {len(masks)}")
        for i, (m, t) in enumerate(zip(masks, tensors)):
            _check_same(f"masks[{i}]", m, t, (torch.bool,))
        n = sum(int(m.sum()) for m in masks)
    else:
        n = sum(t.numel() for t in tensors)
    return tensors, scores, masks, resolve_amount(amount, n)


def global_magnitude_masks(tensors: Sequence[torch.Tensor], amount, *, scores=None,
                           masks=None) -> list[torch.Tensor]:
    """One exact threshold across `tensors` (a whole model): prunes `amount` of all their
    elements together, without concatenating them. With `masks` (existing keep-masks),
    `amount` applies to the elements that remain and pruned ones stay pruned. With `scores`,
    the scores rank the elements instead of the magnitudes."""
    tensors, scores, masks, k = _selection_args(tensors, amount, scores, masks)
    values = scores if scores is not None else [t.detach() for t in tensors]
    return list(torch.ops.sparsedistill.select_smallest(values, masks, k, scores is None))


@torch.no_grad()
def global_magnitude_prune_(tensors: Sequence[torch.Tensor], amount, *, scores=None,
                            masks=None) -> list[torch.Tensor]:
    """global_magnitude_masks that also zeroes the pruned weights in place (in the same pass
    over memory on the CPU). Returns the keep-masks; nothing is modified on a bad argument."""
    tensors, scores, masks, k = _selection_args(tensors, amount, scores, masks)
    keep = [torch.empty_like(t, dtype=torch.bool, memory_format=torch.contiguous_format) for t in tensors]
    torch.ops.sparsedistill.zero_smallest([t.detach() for t in tensors], keep, scores, masks, k)
    return keep


def magnitude_mask(tensor: torch.Tensor, amount, *, scores=None, mask=None) -> torch.Tensor:
    """Bool keep-mask that prunes `amount` (fraction or count) of `tensor` by magnitude (or by
    `scores`, e.g. |W| * ||X|| as in Wanda). With an existing `mask`, `amount` applies to the
    weights that remain (torch.nn.utils.prune's iterative semantics)."""
    return global_magnitude_masks(
        [tensor], amount, scores=None if scores is None else [scores],
        masks=None if mask is None else [mask])[0]


def magnitude_prune_(tensor: torch.Tensor, amount, *, scores=None, mask=None) -> torch.Tensor:
    """Zeroes the pruned weights of `tensor` in place and returns the keep-mask. Nothing is
    modified if an argument is rejected."""
    return global_magnitude_prune_(
        [tensor], amount, scores=None if scores is None else [scores],
        masks=None if mask is None else [mask])[0]
