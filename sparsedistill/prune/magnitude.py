"""Magnitude pruning with exact thresholds and no sort: the k smallest magnitudes (or scores) of
a tensor, or of a whole list of tensors at once, are found by radix selection over their float
bits (a few passes, memory the size of a histogram) and returned as bool masks.

Masks are True where a weight is kept (the convention of torch.nn.utils.prune). Exactly k
elements are pruned; ties at the threshold are broken by position: lowest flat index first
(and, across a list, earlier tensors first), the same on every backend.

magnitude_mask / magnitude_prune_ also compare within groups (``group=``): each output row (as
Wanda prunes), each column, or tiles of rows x columns, all in one launch of the op
select_smallest_grouped; every group prunes `amount` of its own (remaining) weights.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from . import ops  # noqa: F401  (defines torch.ops.sparsedistill.select_smallest / zero_smallest)
from .checks import check_int, check_selection_args
from .distributed import distributed_masks, dtensor_types, is_dtensor
from .reference import group_view

__all__ = ["magnitude_mask", "magnitude_prune_", "global_magnitude_masks", "global_magnitude_prune_"]


def _distributed(tensors, process_group) -> bool:
    return process_group is not None or any(is_dtensor(t) for t in tensors)


def global_magnitude_masks(tensors: Sequence[torch.Tensor], amount, *, scores=None,
                           masks=None, process_group=None) -> list[torch.Tensor]:
    """One exact threshold across `tensors` (a whole model): prunes `amount` of all their
    elements together, without concatenating them. With `masks` (existing keep-masks),
    `amount` applies to the elements that remain and pruned ones stay pruned. With `scores`,
    the scores rank the elements instead of the magnitudes.

    The same tensor listed twice (tied weights) counts once and gets the same mask at both
    places; tensors that otherwise share memory are refused. All must be on one device.

    Across processes: with `process_group` (torch.distributed), each rank passes its own
    tensors and `amount` applies to all ranks' tensors together, as if rank 0's list, then
    rank 1's, ... were one list; with DTensor parameters (FSDP2 shards) the group is their
    mesh's and the masks (DTensors) equal those of the unsharded model. No weight is gathered:
    see sparsedistill/prune/distributed.py."""
    tensors = list(tensors)
    if _distributed(tensors, process_group):
        return distributed_masks(tensors, amount, scores=scores, masks=masks, process_group=process_group)
    tensors, scores, masks, k, index = check_selection_args(tensors, amount, scores, masks)
    values = scores if scores is not None else [t.detach() for t in tensors]
    keep = torch.ops.sparsedistill.select_smallest(values, masks, k, scores is None)
    return [keep[i] for i in index]


@torch.no_grad()
def global_magnitude_prune_(tensors: Sequence[torch.Tensor], amount, *, scores=None,
                            masks=None, process_group=None) -> list[torch.Tensor]:
    """global_magnitude_masks that also zeroes the pruned weights in place (in the same pass
    over memory on the CPU). Returns the keep-masks; nothing is modified on a bad argument.
    Expanded views and inference tensors (outside inference mode) are refused, as stock
    in-place ops refuse them; tied and overlapping tensors, process groups and DTensors as in
    global_magnitude_masks."""
    tensors = list(tensors)
    if _distributed(tensors, process_group):
        return distributed_masks(tensors, amount, scores=scores, masks=masks, process_group=process_group,
                                 zero=True)
    tensors, scores, masks, k, index = check_selection_args(tensors, amount, scores, masks, writes=True)
    keep = [torch.empty_like(t, dtype=torch.bool, memory_format=torch.contiguous_format) for t in tensors]
    # .detach() shares the version counter: autograd still sees the write (the op bumps it).
    torch.ops.sparsedistill.zero_smallest([t.detach() for t in tensors], keep, scores, masks, k)
    return [keep[i] for i in index]


def group_shape(group, shape) -> tuple[int, int] | None:
    """`group` of magnitude_mask as (rows, cols) tiles of the tensor viewed as (shape[0], -1), or
    None for "tensor" (one threshold for the whole tensor)."""
    if isinstance(group, str) and group == "tensor":
        return None
    rows = shape[0] if len(shape) else 1
    cols = math.prod(shape[1:])
    if group in ("row", "column"):
        if len(shape) == 0:
            raise ValueError(f"group={group!r} needs a tensor with at least one dim, got a 0-d tensor")
        return (1, cols) if group == "row" else (rows, 1)
    if isinstance(group, str) or not isinstance(group, (tuple, list)) or len(group) != 2:
        raise ValueError(f"group must be 'tensor', 'row', 'column' or a (rows, cols) tile, got {group!r}")
    gr, gc = (check_int(f"group[{i}]", g, low=1) for i, g in enumerate(group))
    if rows % gr or cols % gc:
        raise ValueError(f"group tiles of {gr} x {gc} must tile the tensor viewed as ({rows}, {cols}) "
                         "(its first dim by the rest) exactly")
    return gr, gc


def group_counts(values: torch.Tensor, keep, amount, tile: tuple[int, int]) -> torch.Tensor:
    """k of the grouped ops for a 2-D values: amount (a fraction, or a count per group) of each
    tile's eligible elements, shape (R / rows, C / cols)."""
    gr, gc = tile
    size = gr * gc
    if keep is None:
        counts = torch.full(((values.shape[0] // gr) * (values.shape[1] // gc),), size,
                            dtype=torch.int64, device=values.device)
    else:
        counts = group_view(keep, gr, gc).sum(1)
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be a float fraction in [0, 1] or an int count, got {amount!r}")
    if isinstance(amount, numbers.Integral):
        least = int(counts.min()) if counts.numel() else 0
        if not 0 <= amount <= least:
            raise ValueError(f"amount as a count per group must lie in [0, {least}] (the fewest "
                             f"prunable elements of a group), got {amount}")
        k = torch.full_like(counts, int(amount))
    else:
        amount = float(amount)
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"amount as a fraction must lie in [0, 1], got {amount}")
        k = torch.round(counts.double() * amount).long()  # half to even, as Python's round
    return k.reshape(values.shape[0] // gr, values.shape[1] // gc)


def _rows_cols(tensor: torch.Tensor) -> tuple[int, int]:
    """The (shape[0], rest) view of the grouped selection; explicit, so that empty tensors view too."""
    return (tensor.shape[0], math.prod(tensor.shape[1:])) if tensor.dim() else (1, 1)


def grouped_mask(tensor: torch.Tensor, amount, scores, mask, tile: tuple[int, int]) -> torch.Tensor:
    """The keep-mask of magnitude_mask(group=...) for (rows, cols) tiles; arguments checked."""
    rows, cols = _rows_cols(tensor)
    view = lambda x: x.reshape(rows, cols)  # noqa: E731
    values = view(tensor.detach() if scores is None else scores)
    keep = None if mask is None else view(mask)
    k = group_counts(values, keep, amount, tile)
    # Non-negative scores (Wanda's, any importance) select the same by magnitude, and the
    # magnitude keys take the kernels' faster paths (guided per-row selection).
    magnitude = scores is None or (not torch.compiler.is_compiling() and values.numel() > 0
                                   and bool(values.min() >= 0))
    out = torch.ops.sparsedistill.select_smallest_grouped(values, keep, *tile, k, magnitude)
    return out.view(tensor.shape)


@torch.no_grad()
def grouped_prune_(tensor: torch.Tensor, amount, mask, tile: tuple[int, int], col_scale=None, *,
                   return_mask: bool = True) -> torch.Tensor | None:
    """magnitude_prune_(group=...) by |tensor| (times col_scale per column of the (shape[0], -1)
    view, float32) in one op that zeroes in its mask pass; arguments checked. Returns the mask
    (return_mask=False: None, and no mask is written)."""
    rows, cols = _rows_cols(tensor)
    values = tensor.detach().view(rows, cols) if tensor.is_contiguous() else None
    keep = None if mask is None else mask.reshape(rows, cols)
    out = torch.empty((rows, cols), dtype=torch.bool, device=tensor.device) if return_mask else None
    k = group_counts(tensor.detach().reshape(rows, cols), keep, amount, tile)
    if values is None:  # a strided weight: prune a contiguous copy, then write it back
        values = tensor.detach().reshape(rows, cols).clone()
        torch.ops.sparsedistill.zero_smallest_grouped(values, out, keep, *tile, k, col_scale)
        tensor.detach().copy_(values.view(tensor.shape))
    else:
        torch.ops.sparsedistill.zero_smallest_grouped(values, out, keep, *tile, k, col_scale)
    return None if out is None else out.view(tensor.shape)


def _local_grouped(fn, tensor, amount, scores, mask, group):
    """A per-row (or row-tile) selection of a Shard(0) DTensor: rows never straddle shards, so
    each rank selects in its own shard; the result is a DTensor of the same placement."""
    DTensor, Shard = dtensor_types()
    local = lambda x: x.to_local() if isinstance(x, DTensor) else x  # noqa: E731
    tile = group_shape(group, tuple(tensor.shape))
    if len(tensor.placements) != 1 or not isinstance(tensor.placements[0], Shard) or tensor.placements[0].dim != 0 \
            or tile[0] != 1:
        raise NotImplementedError(f"group={group!r} on a DTensor with placements {tensor.placements}: only "
                                  "groups within rows (group='row' or (1, c) tiles) of Shard(0) DTensors "
                                  "(FSDP2), which each rank selects in its own shard; per-tensor selection "
                                  "(group='tensor') works on any Shard(0) DTensor")
    keep = fn(local(tensor), amount, scores=local(scores), mask=local(mask), group=group)
    return DTensor.from_local(keep, tensor.device_mesh, tensor.placements, run_check=False,
                              shape=tensor.shape, stride=tensor.stride())


def _one_tensor_args(tensor, scores, mask, group, writes: bool):
    """(tile or None, tensor, [scores] or None, [mask] or None) of the one-tensor functions;
    with a group, the tensor's arguments are checked here (without one, by the global form)."""
    scores = None if scores is None else [scores]
    mask = None if mask is None else [mask]
    tile = group_shape(group, tuple(tensor.shape)) if isinstance(tensor, torch.Tensor) else None
    if tile is not None:
        tensors, scores, mask, _, _ = check_selection_args([tensor], 0, scores, mask, writes=writes)
        tensor = tensors[0]
    return tile, tensor, scores, mask


def magnitude_mask(tensor: torch.Tensor, amount, *, scores=None, mask=None, group="tensor") -> torch.Tensor:
    """Bool keep-mask that prunes `amount` (fraction or count) of `tensor` by magnitude (or by
    `scores`, e.g. |W| * ||X|| as in Wanda). With an existing `mask`, `amount` applies to the
    weights that remain (torch.nn.utils.prune's iterative semantics).

    group: where the weights compete. "tensor" (default): one threshold for the whole tensor;
    "row": each slice along dim 0 separately (an output row of a Linear, a filter of a conv: the
    comparison group of Wanda); "column": each column of the tensor viewed as (shape[0], -1);
    (rows, cols): tiles of that view. A fraction applies to each group's own elements (rounded
    per group), an int count to each group.

    A DTensor (an FSDP2 shard) is selected across its ranks: group="tensor" by the
    distributed selection (the mask equals the unsharded tensor's), row groups within each
    rank's shard."""
    if group != "tensor" and _distributed([tensor], None):
        return _local_grouped(magnitude_mask, tensor, amount, scores, mask, group)
    tile, tensor, scores, mask = _one_tensor_args(tensor, scores, mask, group, writes=False)
    if tile is None:
        return global_magnitude_masks([tensor], amount, scores=scores, masks=mask)[0]
    return grouped_mask(tensor, amount, scores and scores[0], mask and mask[0], tile)


def magnitude_prune_(tensor: torch.Tensor, amount, *, scores=None, mask=None, group="tensor") -> torch.Tensor:
    """Zeroes the pruned weights of `tensor` in place and returns the keep-mask (`group` as in
    magnitude_mask, DTensors too). Nothing is modified if an argument is rejected."""
    if group != "tensor" and _distributed([tensor], None):
        return _local_grouped(magnitude_prune_, tensor, amount, scores, mask, group)
    tile, tensor, scores, mask = _one_tensor_args(tensor, scores, mask, group, writes=True)
    if tile is None:
        return global_magnitude_prune_([tensor], amount, scores=scores, masks=mask)[0]
    if scores is None:  # by magnitude: one op that zeroes in its mask pass
        return grouped_prune_(tensor, amount, mask and mask[0], tile)
    keep = grouped_mask(tensor, amount, scores[0], mask and mask[0], tile)
    with torch.no_grad():
        tensor.detach().masked_fill_(~keep, 0)  # shares the version counter: autograd sees it
    return keep
