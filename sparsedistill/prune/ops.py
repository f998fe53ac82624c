"""The pruning ops, defined once: schema, default (reference) kernel and fake kernel. The native
kernels (csrc/prune/) register for the CPU and CUDA keys of the same ops and override the
default when the extension is loaded; see sparsedistill/_library.py.
"""
from __future__ import annotations

import torch

from .._library import define
from . import reference
from .checks import check_grouped_args, check_nm_mask_args

# ---------------------------------------------------------------------------------------------
# select_smallest: exact k-smallest selection over a list of tensors (one threshold for all)
# without sorting. Returns one bool keep-mask per tensor: exactly k of the eligible elements
# (keep[i] True, or all when keep is None) are False, ranked by key ascending (|value| if
# magnitude, else value), ties by (tensor index, flat index); not-eligible elements stay False.
# ---------------------------------------------------------------------------------------------
define("select_smallest(Tensor[] values, Tensor[]? keep, int k, bool magnitude) -> Tensor[]",
       reference.select_smallest)


@torch.library.register_fake("sparsedistill::select_smallest")
def _select_smallest_fake(values, keep, k, magnitude):
    return [torch.empty_like(v, dtype=torch.bool) for v in values]


# zero_smallest: select_smallest by |tensors| (or by scores) that writes the keep-masks into
# `masks` and zeroes, in place, every element of tensors whose mask is False (the native CPU
# and CUDA kernels do it in their mask pass, so pruning costs no extra pass over the weights).
define("zero_smallest(Tensor(a!)[] tensors, Tensor(b!)[] masks, Tensor[]? scores, "
       "Tensor[]? keep, int k) -> ()", reference.zero_smallest)


@torch.library.register_fake("sparsedistill::zero_smallest")
def _zero_smallest_fake(tensors, masks, scores, keep, k):
    return None


# The steps of a select_smallest whose histograms are summed across processes (distributed.py;
# the one-process op does all three inside): select_histogram counts 16 key bits ((key >> shift)
# & 0xFFFF, keys as in select_smallest) over the eligible elements, all (prefix < 0) or those
# whose high 16 bits equal prefix; select_tie_counts counts per tensor the eligible elements
# whose key equals threshold; select_at_threshold writes keep-masks from a threshold and, per
# tensor, how many of its ties (by flat index) to prune.
define("select_histogram(Tensor[] values, Tensor[]? keep, int shift, int prefix, bool magnitude) -> Tensor",
       reference.select_histogram)
define("select_tie_counts(Tensor[] values, Tensor[]? keep, int threshold, bool magnitude) -> Tensor",
       reference.select_tie_counts)
define("select_at_threshold(Tensor[] values, Tensor[]? keep, int threshold, Tensor prune_ties, "
       "bool magnitude) -> Tensor[]", reference.select_at_threshold)


@torch.library.register_fake("sparsedistill::select_histogram")
def _select_histogram_fake(values, keep, shift, prefix, magnitude):
    return torch.empty(65536, dtype=torch.int64)


@torch.library.register_fake("sparsedistill::select_tie_counts")
def _select_tie_counts_fake(values, keep, threshold, magnitude):
    return torch.empty(len(values), dtype=torch.int64)


@torch.library.register_fake("sparsedistill::select_at_threshold")
def _select_at_threshold_fake(values, keep, threshold, prune_ties, magnitude):
    return [torch.empty_like(v, dtype=torch.bool) for v in values]


# ---------------------------------------------------------------------------------------------
# select_smallest_grouped: exact k-smallest selection in every group_rows x group_cols tile of a
# matrix, in one launch (per output row: group_rows=1, group_cols=C, as Wanda compares). k holds
# one count per tile (int64, shape (R / group_rows, C / group_cols)); ties: lowest row-major
# position inside the tile first; keep (optional) as in select_smallest.
# ---------------------------------------------------------------------------------------------
define("select_smallest_grouped(Tensor values, Tensor? keep, int group_rows, int group_cols, "
       "Tensor k, bool magnitude) -> Tensor", reference.select_smallest_grouped)


@torch.library.register_fake("sparsedistill::select_smallest_grouped")
def _select_smallest_grouped_fake(values, keep, group_rows, group_cols, k, magnitude):
    check_grouped_args(values, keep, group_rows, group_cols, k)
    return values.new_empty(values.shape, dtype=torch.bool)


# zero_smallest_grouped: select_smallest_grouped by |values| (times col_scale[j] per column when
# given: Wanda's |W_ij| * ||X_j|| without a scores tensor) that writes the keep-mask into `mask`
# (None: no mask is written, e.g. for one-shot pruning that keeps none) and zeroes the pruned
# values in place, in the mask pass of the native kernels.
define("zero_smallest_grouped(Tensor(a!) values, Tensor(b!)? mask, Tensor? keep, int group_rows, "
       "int group_cols, Tensor k, Tensor? col_scale) -> ()", reference.zero_smallest_grouped)


@torch.library.register_fake("sparsedistill::zero_smallest_grouped")
def _zero_smallest_grouped_fake(values, mask, keep, group_rows, group_cols, k, col_scale):
    return None


# ---------------------------------------------------------------------------------------------
# nm_mask: N:M keep-mask along the last dim. In every group of m consecutive elements the n
# largest keys (|value| if magnitude, else value) are kept; ties: the lower index is pruned
# first; NaN ranks above every number (sparsedistill.nm_mask rejects NaN before calling).
# Returns a contiguous bool tensor of values' shape.
# ---------------------------------------------------------------------------------------------
define("nm_mask(Tensor values, int n, int m, bool magnitude) -> Tensor", reference.nm_mask)


@torch.library.register_fake("sparsedistill::nm_mask")
def _nm_mask_fake(values, n, m, magnitude):
    check_nm_mask_args(values, n, m)
    return values.new_empty(values.shape, dtype=torch.bool)
