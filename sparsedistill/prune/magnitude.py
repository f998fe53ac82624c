"""Magnitude pruning with exact thresholds and no sort: the k smallest magnitudes (or scores) of
a tensor, or of a whole list of tensors at once, are found by radix selection over their float
bits (a few passes, memory the size of a histogram) and returned as bool masks.

Masks are True where a weight is kept (the convention of torch.nn.utils.prune). Exactly k
elements are pruned; ties at the threshold are broken by position: lowest flat index first
(and, across a list, earlier tensors first), the same on every backend.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import ops  # noqa: F401  (defines torch.ops.sparsedistill.select_smallest / zero_smallest)
from .checks import check_selection_args

__all__ = ["magnitude_mask", "magnitude_prune_", "global_magnitude_masks", "global_magnitude_prune_"]


def global_magnitude_masks(tensors: Sequence[torch.Tensor], amount, *, scores=None,
                           masks=None) -> list[torch.Tensor]:
    """One exact threshold across `tensors` (a whole model): prunes `amount` of all their
    elements together, without concatenating them. With `masks` (existing keep-masks),
    `amount` applies to the elements that remain and pruned ones stay pruned. With `scores`,
    the scores rank the elements instead of the magnitudes.

    The same tensor listed twice (tied weights) counts once and gets the same mask at both
    places; tensors that otherwise share memory are refused. All must be on one device."""
    tensors, scores, masks, k, index = check_selection_args(tensors, amount, scores, masks)
    values = scores if scores is not None else [t.detach() for t in tensors]
    keep = torch.ops.sparsedistill.select_smallest(values, masks, k, scores is None)
    return [keep[i] for i in index]


@torch.no_grad()
def global_magnitude_prune_(tensors: Sequence[torch.Tensor], amount, *, scores=None,
                            masks=None) -> list[torch.Tensor]:
    """global_magnitude_masks that also zeroes the pruned weights in place (in the same pass
    over memory on the CPU). Returns the keep-masks; nothing is modified on a bad argument.
    Expanded views and inference tensors (outside inference mode) are refused, as stock
    in-place ops refuse them; tied and overlapping tensors as in global_magnitude_masks."""
    tensors, scores, masks, k, index = check_selection_args(tensors, amount, scores, masks, writes=True)
    keep = [torch.empty_like(t, dtype=torch.bool, memory_format=torch.contiguous_format) for t in tensors]
    # .detach() shares the version counter: autograd still sees the write (the op bumps it).
    torch.ops.sparsedistill.zero_smallest([t.detach() for t in tensors], keep, scores, masks, k)
    return [keep[i] for i in index]


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
