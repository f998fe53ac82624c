"""Argument checks of the sparse-matmul area, written once.

- `check_sparse_linear_args`, `check_grad_input_args`, `check_grad_values_args`: the op-level
  contract (shapes, dtypes, devices; no data read), used by the reference kernels and mirrored,
  message for message, by csrc/sparse/checks.h for the native kernels;
- `validate_structure`: the contents of a compressed weight (one pass over the indices);
- `check_input`: the arguments of the public sparse_linear.
"""
from __future__ import annotations

import re

import torch

from .._common import FLOAT_DTYPE_NAMES, FLOAT_DTYPES, op_check, shape_str

# Column indices 0..32767 fit a signed int16: int16 columns while in_features <= this.
# csrc/sparse/checks.h defines the same kInt16MaxColumns; a test reads the header to keep them equal.
INT16_MAX_COLUMNS = 32768
INT32_MAX = 2**31 - 1


def constant_in_header(text: str, name: str) -> int:
    return int(re.search(rf"\b{name}\s*=\s*(\d+)", text).group(1))


def column_index_dtype(in_features: int) -> torch.dtype:
    return torch.int16 if in_features <= INT16_MAX_COLUMNS else torch.int32


# ----------------------------------------------------------------------------- op arguments
def _same_device(op, t, name, like, like_name) -> None:
    op_check(t.device == like.device, ValueError, op, ": ", name, " must be on the device of ",
             like_name, " (", like.device, "), got ", t.device)


def _dense(op, t, name) -> None:
    op_check(t.dim() == 2, ValueError, op, ": ", name, " must be 2-D, got shape ", shape_str(t))
    op_check(t.dtype in FLOAT_DTYPES, TypeError, op, ": ", name,
             " must be float32, bfloat16, float16 or float64, got ", t.dtype)


def _structure(op, row_ptr, col_idx, row_order, in_features, like, like_name) -> int:
    op_check(row_ptr.dtype == torch.int64, TypeError, op, ": row_ptr must be int64, got ", row_ptr.dtype)
    op_check(row_ptr.dim() == 1 and row_ptr.shape[0] >= 1, ValueError, op,
             ": row_ptr must be 1-D of length out_features + 1 (>= 1), got shape ", shape_str(row_ptr))
    out = row_ptr.shape[0] - 1
    op_check(out <= INT32_MAX, ValueError, op, ": out_features must be at most ", INT32_MAX, ", got ", out)
    op_check(col_idx.dtype in (torch.int16, torch.int32), TypeError, op,
             ": col_idx must be int16 or int32, got ", col_idx.dtype)
    op_check(col_idx.dim() == 1, ValueError, op, ": col_idx must be 1-D, got shape ", shape_str(col_idx))
    op_check(col_idx.dtype == torch.int32 or in_features <= INT16_MAX_COLUMNS, TypeError, op,
             f": col_idx must be int32 when in_features > {INT16_MAX_COLUMNS} (int16 holds columns "
             f"< {INT16_MAX_COLUMNS}), got int16 with in_features ", in_features)
    op_check(row_order.dtype == torch.int32, TypeError, op, ": row_order must be int32, got ", row_order.dtype)
    op_check(row_order.dim() == 1 and row_order.shape[0] == out, ValueError, op,
             ": row_order must have shape (", out, ") (one entry per row), got ", shape_str(row_order))
    for name, t in (("row_ptr", row_ptr), ("col_idx", col_idx), ("row_order", row_order)):
        _same_device(op, t, name, like, like_name)
    return out


def _values(op, values, col_idx, like, like_name) -> None:
    op_check(values.dim() == 1, ValueError, op, ": values must be 1-D, got shape ", shape_str(values))
    op_check(values.dtype == like.dtype, TypeError, op, ": values must have the dtype of ", like_name,
             " (", like.dtype, "), got ", values.dtype)
    op_check(col_idx.shape[0] == values.shape[0], ValueError, op, ": col_idx must have the length of "
             "values (", values.shape[0], "), got ", col_idx.shape[0])
    _same_device(op, values, "values", like, like_name)


def check_sparse_linear_args(input, values, row_ptr, col_idx, row_order, in_features, bias) -> int:
    """sparse_linear(input (B, in), values, row_ptr, col_idx, row_order, in_features, bias?);
    returns out_features."""
    op = "sparse_linear"
    op_check(in_features >= 0, ValueError, op, ": in_features must be >= 0, got ", in_features)
    _dense(op, input, "input")
    op_check(input.shape[1] == in_features, ValueError, op, ": input must have shape (B, in_features=",
             in_features, "), got ", shape_str(input))
    out = _structure(op, row_ptr, col_idx, row_order, in_features, input, "input")
    _values(op, values, col_idx, input, "input")
    if bias is not None:
        op_check(bias.dim() == 1 and bias.shape[0] == out, ValueError, op, ": bias must have shape (",
                 out, ") (out_features), got ", shape_str(bias))
        op_check(bias.dtype == input.dtype, TypeError, op, ": bias must have the dtype of input (",
                 input.dtype, "), got ", bias.dtype)
        _same_device(op, bias, "bias", input, "input")
    return out


def check_grad_input_args(grad_out, values, row_ptr, col_idx, row_order, in_features) -> int:
    """sparse_linear_grad_input(grad_out (B, out), values, row_ptr, col_idx, row_order, in_features)."""
    op = "sparse_linear_grad_input"
    op_check(in_features >= 0, ValueError, op, ": in_features must be >= 0, got ", in_features)
    _dense(op, grad_out, "grad_out")
    out = _structure(op, row_ptr, col_idx, row_order, in_features, grad_out, "grad_out")
    op_check(grad_out.shape[1] == out, ValueError, op, ": grad_out must have shape (B, out_features=",
             out, "), got ", shape_str(grad_out))
    _values(op, values, col_idx, grad_out, "grad_out")
    return out


def check_grad_values_args(grad_out, input, row_ptr, col_idx, row_order) -> int:
    """sparse_linear_grad_values(grad_out (B, out), input (B, in), row_ptr, col_idx, row_order)."""
    op = "sparse_linear_grad_values"
    _dense(op, input, "input")
    _dense(op, grad_out, "grad_out")
    out = _structure(op, row_ptr, col_idx, row_order, input.shape[1], input, "input")
    op_check(grad_out.shape[0] == input.shape[0] and grad_out.shape[1] == out, ValueError, op,
             ": grad_out must have shape (B=", input.shape[0], ", out_features=", out, "), got ",
             shape_str(grad_out))
    op_check(grad_out.dtype == input.dtype, TypeError, op, ": grad_out must have the dtype of input (",
             input.dtype, "), got ", grad_out.dtype)
    _same_device(op, grad_out, "grad_out", input, "input")
    return out


# ----------------------------------------------------------------------------- contents
def validate_structure(values, row_ptr, col_idx, row_order, in_features: int, name: str) -> None:
    """Full check of a compressed weight (one pass over the indices; syncs on a GPU)."""
    if values.dim() != 1 or values.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}.values must be a 1-D floating-point tensor, got {values.dtype} "
                        f"of shape {tuple(values.shape)}")
    if row_ptr.dim() != 1 or row_ptr.dtype != torch.int64 or row_ptr.numel() < 1:
        raise TypeError(f"{name}.row_ptr must be a 1-D int64 tensor of length out_features + 1, "
                        f"got {row_ptr.dtype} of shape {tuple(row_ptr.shape)}")
    if col_idx.dtype not in (torch.int16, torch.int32) or col_idx.shape != values.shape:
        raise TypeError(f"{name}.col_idx must be int16 or int32 with the shape of values "
                        f"{tuple(values.shape)}, got {col_idx.dtype} of shape {tuple(col_idx.shape)}")
    if col_idx.dtype == torch.int16 and in_features > INT16_MAX_COLUMNS:
        raise TypeError(f"{name}.col_idx must be int32 when in_features > {INT16_MAX_COLUMNS}")
    out_features = row_ptr.numel() - 1
    if row_order.dtype != torch.int32 or row_order.shape != (out_features,):
        raise TypeError(f"{name}.row_order must be int32 of shape ({out_features},), got "
                        f"{row_order.dtype} of shape {tuple(row_order.shape)}")
    if not (values.device == row_ptr.device == col_idx.device == row_order.device):
        raise ValueError(f"{name}: values, row_ptr, col_idx and row_order must share one device")
    if int(row_ptr[0]) != 0 or int(row_ptr[-1]) != values.numel():
        raise ValueError(f"{name}.row_ptr must start at 0 and end at nnz={values.numel()}, got "
                         f"{int(row_ptr[0])} and {int(row_ptr[-1])}")
    steps = row_ptr[1:] - row_ptr[:-1]
    if bool((steps < 0).any()):
        raise ValueError(f"{name}.row_ptr must be non-decreasing")
    cols = col_idx.long()
    if cols.numel() and bool(((cols < 0) | (cols >= in_features)).any()):
        raise ValueError(f"{name}.col_idx must lie in [0, in_features={in_features})")
    if cols.numel() > 1:
        # Within a row, columns strictly ascend; a row boundary may step down.
        ascending = cols[1:] > cols[:-1]
        boundary = torch.zeros(cols.numel() - 1, dtype=torch.bool, device=cols.device)
        starts = row_ptr[1:-1]
        starts = starts[(starts > 0) & (starts < cols.numel())]
        boundary[starts - 1] = True
        if bool((~ascending & ~boundary).any()):
            raise ValueError(f"{name}.col_idx must be strictly ascending within each row")
    if not torch.equal(torch.sort(row_order.long()).values,
                       torch.arange(out_features, device=row_order.device)):
        raise ValueError(f"{name}.row_order must be a permutation of the {out_features} rows")


class Stamp:
    """What a validated structure was: its tensors (held, so that their identity cannot be
    reused), their version counters (bumped by every in-place write), nnz and in_features.
    `matches` is a few attribute reads: the kernels read the structure unchecked (a column
    out of range reads past the input), so every entry point compares the stamp first and
    validates again only when something changed."""

    __slots__ = ("tensors", "versions", "nnz", "in_features")

    def __init__(self, values, row_ptr, col_idx, row_order, in_features: int):
        self.tensors = (row_ptr, col_idx, row_order)
        self.versions = (row_ptr._version, col_idx._version, row_order._version)
        self.nnz, self.in_features = values.shape[0], in_features

    def matches(self, values, row_ptr, col_idx, row_order, in_features: int) -> bool:
        t = self.tensors
        return (t[0] is row_ptr and t[1] is col_idx and t[2] is row_order
                and self.versions == (row_ptr._version, col_idx._version, row_order._version)
                and values.shape[0] == self.nnz and in_features == self.in_features)


# ----------------------------------------------------------------------------- public arguments
def check_input(input, weight, bias) -> None:
    """The arguments of sparse_linear(input, weight, bias) before reshaping."""
    from .weight import SparseWeight
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(weight, SparseWeight):
        raise TypeError(f"weight must be a sparsedistill.SparseWeight, got {type(weight).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"input must be floating point ({FLOAT_DTYPE_NAMES}), got {input.dtype}")
    if input.dim() < 1 or input.shape[-1] != weight.in_features:
        raise ValueError(f"input must have in_features={weight.in_features} as its last dimension, "
                         f"got shape {tuple(input.shape)}")
    if input.dtype != weight.dtype:
        raise TypeError(f"input must have the weight's dtype {weight.dtype}, got {input.dtype}")
    if input.device != weight.device:
        raise ValueError(f"input must be on the weight's device {weight.device}, got {input.device}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (weight.out_features,)
                             or bias.dtype != weight.dtype or bias.device != weight.device):
        raise ValueError(f"bias must be a ({weight.out_features},) tensor of dtype {weight.dtype} on "
                         f"{weight.device}, got {getattr(bias, 'shape', type(bias).__name__)}, "
                         f"{getattr(bias, 'dtype', '')}, {getattr(bias, 'device', '')}")
