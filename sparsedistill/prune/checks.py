"""Argument checks of the pruning area, written once. The op-level checks (select_smallest,
zero_smallest, nm_mask) are used by the reference kernels (and the fake kernels) and mirrored,
message for message, by csrc/prune/checks.h for the native kernels; the rest check the public
functions' arguments before anything is touched."""
from __future__ import annotations

import numbers

import torch

from .._common import FLOAT_DTYPE_NAMES, FLOAT_DTYPES, op_check, shape_str


# ----------------------------------------------------------------------------- public arguments
def check_int(name: str, value, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_float_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor ({FLOAT_DTYPE_NAMES}), got {t.dtype}")
    return t


def check_dim(dim, t: torch.Tensor) -> int:
    """`dim` as a non-negative index of one of t's dims."""
    dim = check_int("dim", dim)
    if not -t.dim() <= dim < t.dim():
        raise ValueError(f"dim must lie in [{-t.dim()}, {t.dim()}) for a {t.dim()}-D tensor, got {dim}")
    return dim % t.dim()


def check_norm_order(n) -> float:
    if isinstance(n, bool) or not isinstance(n, numbers.Real) or not n > 0:
        raise ValueError(f"n (the norm order) must be a positive number or inf, got {n!r}")
    return float(n)


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


def _check_like(name: str, x, like: torch.Tensor, dtypes) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)}, got {tuple(x.shape)}")
    if x.device != like.device:
        raise ValueError(f"{name} must be on {like.device}, got {x.device}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {dtypes}, got {x.dtype}")


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype)


def _byte_range(t: torch.Tensor) -> tuple[int, int]:
    span = 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))
    low = t.data_ptr() - sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()) if st < 0) * t.element_size()
    return low, low + span * t.element_size()


def unique_tensors(tensors: list, scores, masks) -> list[int]:
    """For each tensor, the index of its first occurrence. The same view listed twice (tied
    weights) is ranked once: its masks and scores must then be the same too. Tensors that share
    memory otherwise (overlapping views) are refused: their elements would be ranked twice."""
    index, by_storage = [], {}
    for i, t in enumerate(tensors):
        first = i
        if t.numel():
            for j in by_storage.setdefault(t.untyped_storage().data_ptr(), []):
                u = tensors[j]
                if _same_view(t, u):
                    first = j
                    for name, extra in (("scores", scores), ("masks", masks)):
                        if extra is not None and not _same_view(extra[i], extra[j]):
                            raise ValueError(f"tensors[{i}] is tensors[{j}] listed again (tied weights), "
                                             f"so {name}[{i}] must be {name}[{j}] too")
                    break
                (lo, hi), (ulo, uhi) = _byte_range(t), _byte_range(u)
                if lo < uhi and ulo < hi:
                    raise ValueError(f"tensors[{i}] overlaps tensors[{j}] in memory (views of one "
                                     "weight); pass each weight once, whole")
            if first == i:
                by_storage[t.untyped_storage().data_ptr()].append(i)
        index.append(first)
    return index


def check_selection_args(tensors, amount, scores, masks, *, writes: bool = False):
    """The arguments of the magnitude functions. Returns (tensors, scores, masks, k, index):
    the distinct tensors (and their scores and masks), k, and for each given tensor the
    position of its distinct one. `writes`: the tensors will be zeroed in place."""
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"tensors[{i}] must be a floating-point tensor ({FLOAT_DTYPE_NAMES}), got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.is_meta:
            raise ValueError(f"tensors[{i}] is a meta tensor: it holds no values to rank")
        if t.device != tensors[0].device:
            raise ValueError(f"tensors[{i}] must be on the device of tensors[0] ({tensors[0].device}), "
                             f"got {t.device}")
        if writes and any(st == 0 and n > 1 for n, st in zip(t.shape, t.stride())):
            raise ValueError(f"tensors[{i}] has elements that share memory (an expanded view): "
                             "it cannot be pruned in place; prune a contiguous copy")
        if writes and t.is_inference() and not torch.is_inference_mode_enabled():
            raise RuntimeError(f"tensors[{i}] is an inference tensor: it cannot be pruned in place "
                               "outside torch.inference_mode()")
    if scores is not None:
        scores = list(scores)
        if len(scores) != len(tensors):
            raise ValueError(f"scores must hold one tensor per tensor ({len(tensors)}), got {len(scores)}")
        for i, (s, t) in enumerate(zip(scores, tensors)):
            _check_like(f"scores[{i}]", s, t, FLOAT_DTYPES)
        scores = [s.detach() for s in scores]
    if masks is not None:
        masks = list(masks)
        if len(masks) != len(tensors):
            raise ValueError(f"masks must hold one mask per tensor ({len(tensors)}), got {len(masks)}")
        for i, (m, t) in enumerate(zip(masks, tensors)):
            _check_like(f"masks[{i}]", m, t, (torch.bool,))
    # (Not while torch.compile traces: storages are not traceable there.)
    if len(tensors) > 1 and not torch.compiler.is_compiling():
        index = unique_tensors(tensors, scores, masks)
    else:
        index = list(range(len(tensors)))
    keep = sorted(set(index))
    if len(keep) < len(tensors):
        tensors = [tensors[i] for i in keep]
        scores = None if scores is None else [scores[i] for i in keep]
        masks = None if masks is None else [masks[i] for i in keep]
        index = [keep.index(i) for i in index]
    n = sum(int(m.sum()) for m in masks) if masks is not None else sum(t.numel() for t in tensors)
    return tensors, scores, masks, resolve_amount(amount, n), index


# ----------------------------------------------------------------------------- op arguments
def check_select_args(values, keep) -> None:
    """select_smallest(values, keep, k, magnitude): csrc/prune/checks.h check_select_args."""
    op_check(keep is None or len(keep) == len(values), ValueError,
             "keep must hold one mask per tensor (", len(values), "), got ", len(keep or ()))
    for i, v in enumerate(values):
        op_check(v.dtype in FLOAT_DTYPES, TypeError,
                 f"values[{i}] must be floating point ({FLOAT_DTYPE_NAMES}), got ", v.dtype)
        op_check(v.device == values[0].device, ValueError,
                 f"values[{i}] must be on ", values[0].device, ", got ", v.device)
        if keep is not None:
            m = keep[i]
            op_check(m.dtype == torch.bool and m.shape == v.shape and m.device == v.device, ValueError,
                     f"keep[{i}] must be a bool tensor of the shape of values[{i}] ", shape_str(v),
                     " on its device")


def check_zero_smallest_args(tensors, masks, scores) -> None:
    """zero_smallest(tensors, masks, scores, keep, k): csrc/prune/checks.h check_zero_smallest_args."""
    op_check(len(masks) == len(tensors), ValueError,
             "masks must hold one mask per tensor (", len(tensors), "), got ", len(masks))
    for i, (t, m) in enumerate(zip(tensors, masks)):
        op_check(t.dtype in FLOAT_DTYPES, TypeError,
                 f"tensors[{i}] must be floating point ({FLOAT_DTYPE_NAMES}), got ", t.dtype)
        op_check(m.dtype == torch.bool and m.shape == t.shape and m.device == t.device, ValueError,
                 f"masks[{i}] must be a bool tensor of the shape and device of tensors[{i}] ", shape_str(t))
    if scores is None:
        return
    op_check(len(scores) == len(tensors), ValueError,
             "scores must hold one tensor per tensor (", len(tensors), "), got ", len(scores))
    for i, (s, t) in enumerate(zip(scores, tensors)):
        op_check(s.shape == t.shape and s.device == t.device, ValueError,
                 f"scores[{i}] must have the shape and device of tensors[{i}] ", shape_str(t))


def check_select_k(k: int, eligible: int) -> None:
    op_check(0 <= k <= eligible, ValueError, "k must lie in [0, ", eligible,
             "] (the eligible elements), got ", k)


def check_select_no_nan(has_nan: bool, tensor: int) -> None:
    op_check(not has_nan, ValueError, f"tensors[{tensor}] (or its scores) holds NaN: "
             "magnitudes must be comparable")


def check_histogram_args(shift: int, prefix: int) -> None:
    """select_histogram's shift and prefix: csrc/prune/checks.h check_histogram_args."""
    op_check(shift in (0, 16), ValueError, "shift must be 0 or 16, got ", shift)
    op_check(prefix < 65536, ValueError, "prefix must be < 65536 (16 key bits) or negative (all "
             "elements), got ", prefix)


def check_threshold_arg(threshold: int) -> None:
    op_check(0 <= threshold <= 0xFFFFFFFF, ValueError,
             "threshold must be a 32-bit order key in [0, 4294967295], got ", threshold)


def check_prune_ties_arg(prune_ties: torch.Tensor, n: int) -> None:
    op_check(prune_ties.dtype == torch.int64 and prune_ties.dim() == 1 and prune_ties.shape[0] == n
             and prune_ties.device.type == "cpu", ValueError,
             "prune_ties must be a CPU int64 vector of one count per tensor (", n, ")")


def check_nm_mask_args(values: torch.Tensor, n: int, m: int) -> None:
    """nm_mask(values, n, m, magnitude): csrc/prune/checks.h check_nm_mask_args. Reads metadata
    only, so the fake kernel uses it too."""
    op_check(values.dtype in FLOAT_DTYPES, TypeError,
             f"values must be floating point ({FLOAT_DTYPE_NAMES}), got ", values.dtype)
    op_check(values.dim() >= 1, ValueError, "values must have at least one dim")
    op_check(m >= 1, ValueError, "m must be >= 1, got ", m)
    op_check(0 <= n <= m, ValueError, "n must lie in [0, m] = [0, ", m, "], got ", n)
    op_check(values.shape[-1] % m == 0, ValueError, "the last dim of values (size ", values.shape[-1],
             ") must be divisible by m = ", m)


def check_grouped_args(values: torch.Tensor, keep, group_rows: int, group_cols: int, k: torch.Tensor) -> None:
    """select_smallest_grouped(values, keep, group_rows, group_cols, k, magnitude):
    csrc/prune/checks.h check_grouped_args. Metadata only (the fake kernel uses it too)."""
    op_check(values.dtype in FLOAT_DTYPES, TypeError,
             f"values must be floating point ({FLOAT_DTYPE_NAMES}), got ", values.dtype)
    op_check(values.dim() == 2, ValueError, "values must be 2-D (rows, columns), got shape ", shape_str(values))
    op_check(group_rows >= 1 and group_cols >= 1, ValueError,
             "group_rows and group_cols must be >= 1, got ", group_rows, " and ", group_cols)
    op_check(values.shape[0] % group_rows == 0 and values.shape[1] % group_cols == 0, ValueError,
             "groups of ", group_rows, " x ", group_cols, " must tile values ", shape_str(values),
             " exactly (rows divisible by group_rows, columns by group_cols)")
    if keep is not None:
        op_check(keep.dtype == torch.bool and keep.shape == values.shape and keep.device == values.device,
                 ValueError, "keep must be a bool tensor of the shape of values ", shape_str(values),
                 " on its device")
    groups = (values.shape[0] // group_rows, values.shape[1] // group_cols)
    op_check(k.dtype == torch.int64 and tuple(k.shape) == groups and k.device == values.device, ValueError,
             "k must be an int64 tensor of shape (", groups[0], ", ", groups[1],
             ") (one count per group) on the device of values")


def check_grouped_k(group: int, eligible: int, k: int) -> None:
    """k of one group (flat index) must lie in [0, its eligible elements]."""
    op_check(0 <= k <= eligible, ValueError, "k[", group, "] (flat group index) must lie in [0, ", eligible,
             "] (the eligible elements of the group), got ", k)


def check_grouped_no_nan(has_nan: bool) -> None:
    op_check(not has_nan, ValueError, "values holds NaN: magnitudes (or scores) must be comparable")


def check_zero_grouped_args(values, mask, keep, group_rows: int, group_cols: int, k, col_scale) -> None:
    """zero_smallest_grouped: csrc/prune/checks.h check_zero_grouped_args."""
    check_grouped_args(values, keep, group_rows, group_cols, k)
    op_check(mask is None or (mask.dtype == torch.bool and mask.shape == values.shape
                              and mask.device == values.device),
             ValueError, "mask must be None or a bool tensor of the shape of values ", shape_str(values),
             " on its device")
    if col_scale is not None:
        op_check(col_scale.dtype == torch.float32 and col_scale.dim() == 1 and col_scale.shape[0] == values.shape[1]
                 and col_scale.device == values.device, ValueError, "col_scale must be a float32 vector of ",
                 values.shape[1], " factors (one per column of values) on its device")
