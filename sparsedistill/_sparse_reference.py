"""Pure-PyTorch reference of the sparse-matmul ops: the "default" kernels and the test oracle.

The compressed weight (see sparsedistill/sparse.py, SparseWeight) is CSR over the rows of an
nn.Linear weight W (out_features, in_features):
  values   (nnz,)     the nonzeros, row by row, columns ascending within a row; W's dtype
  row_ptr  (out+1,)   int64; row r holds values[row_ptr[r] : row_ptr[r+1]]
  col_idx  (nnz,)     int16 when in_features <= 32768 (6 bytes per fp32 nonzero), else int32
  row_order (out,)    int32; the rows by nnz descending (ties by index): the order in which
                      kernels hand out rows, so long rows start first (Sputnik's row swizzle)
The kernels accumulate in float32 (float64 for float64 weights).
"""
from __future__ import annotations

import torch


_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_structure(op, row_ptr, col_idx, row_order, in_features, like, like_name) -> int:
    """The checks of csrc/sparse_linear_checks.h, with its messages; returns out_features."""
    if in_features < 0:
        raise ValueError(f"sparsedistill: {op}: in_features must be >= 0, got {in_features}")
    if row_ptr.dtype != torch.int64 or row_ptr.dim() != 1 or row_ptr.numel() < 1:
        raise TypeError(f"sparsedistill: {op}: row_ptr must be int64 and 1-D of length out_features + 1, "
                        f"got {row_ptr.dtype} of shape {tuple(row_ptr.shape)}")
    if col_idx.dtype not in (torch.int16, torch.int32) or col_idx.dim() != 1:
        raise TypeError(f"sparsedistill: {op}: col_idx must be int16 or int32 and 1-D, got {col_idx.dtype}")
    if col_idx.dtype == torch.int16 and in_features > 32768:
        raise TypeError(f"sparsedistill: {op}: col_idx must be int32 when in_features > 32768 "
                        f"(int16 holds columns < 32768), got int16 with in_features {in_features}")
    out = row_ptr.numel() - 1
    if row_order.dtype != torch.int32 or row_order.shape != (out,):
        raise TypeError(f"sparsedistill: {op}: row_order must be int32 of shape ({out},), got "
                        f"{row_order.dtype} of shape {tuple(row_order.shape)}")
    for name, t in (("row_ptr", row_ptr), ("col_idx", col_idx), ("row_order", row_order)):
        if t.device != like.device:
            raise ValueError(f"sparsedistill: {op}: {name} must be on the device of {like_name} "
                             f"({like.device}), got {t.device}")
    return out


def check_dense(op, t, name, rows_name, cols) -> None:
    if t.dim() != 2:
        raise ValueError(f"sparsedistill: {op}: {name} must be 2-D, got shape {tuple(t.shape)}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"sparsedistill: {op}: {name} must be float32, bfloat16, float16 or "
                        f"float64, got {t.dtype}")
    if t.shape[1] != cols:
        raise ValueError(f"sparsedistill: {op}: {name} must have shape (B, {rows_name}={cols}), "
                         f"got {tuple(t.shape)}")


def check_values(op, values, col_idx, like, like_name) -> None:
    if values.dim() != 1:
        raise ValueError(f"sparsedistill: {op}: values must be 1-D, got shape {tuple(values.shape)}")
    if values.dtype != like.dtype:
        raise TypeError(f"sparsedistill: {op}: values must have the dtype of {like_name} ({like.dtype}), "
                        f"got {values.dtype}")
    if col_idx.numel() != values.numel():
        raise ValueError(f"sparsedistill: {op}: col_idx must have the length of values "
                         f"({values.numel()}), got {col_idx.numel()}")
    if values.device != like.device:
        raise ValueError(f"sparsedistill: {op}: values must be on the device of {like_name} "
                         f"({like.device}), got {values.device}")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_of_each_nonzero(row_ptr: torch.Tensor, nnz: int) -> torch.Tensor:
    counts = row_ptr[1:] - row_ptr[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=row_ptr.device), counts,
                                   output_size=nnz)


def dense_weight(values, row_ptr, col_idx, in_features: int, dtype=None) -> torch.Tensor:
    """The dense (out, in) weight of a compressed one."""
    out_features = row_ptr.numel() - 1
    rows = _row_of_each_nonzero(row_ptr, values.numel())
    w = torch.zeros(out_features, in_features, dtype=dtype or values.dtype, device=values.device)
    w[rows, col_idx.long()] = values.to(w.dtype)
    return w


def sparse_linear(input, values, row_ptr, col_idx, row_order, in_features: int, bias=None):
    """input (B, in) @ W.T (+ bias) -> (B, out), in input's dtype."""
    op = "sparse_linear"
    check_dense(op, input, "input", "in_features", in_features)
    out = check_structure(op, row_ptr, col_idx, row_order, in_features, input, "input")
    check_values(op, values, col_idx, input, "input")
    if bias is not None and (bias.shape != (out,) or bias.dtype != input.dtype or bias.device != input.device):
        raise ValueError(f"sparsedistill: {op}: bias must have shape ({out},) (out_features) and the "
                         f"dtype and device of input, got {tuple(bias.shape)}, {bias.dtype}, {bias.device}")
    acc = _acc_dtype(input.dtype)
    w = dense_weight(values, row_ptr, col_idx, in_features, acc)
    out = input.to(acc) @ w.T
    if bias is not None:
        out = out + bias.to(acc)
    return out.to(input.dtype)


def sparse_linear_grad_input(grad_out, values, row_ptr, col_idx, row_order, in_features: int):
    """grad_out (B, out) @ W -> (B, in)."""
    op = "sparse_linear_grad_input"
    out = check_structure(op, row_ptr, col_idx, row_order, in_features, grad_out, "grad_out")
    check_dense(op, grad_out, "grad_out", "out_features", out)
    check_values(op, values, col_idx, grad_out, "grad_out")
    acc = _acc_dtype(grad_out.dtype)
    w = dense_weight(values, row_ptr, col_idx, in_features, acc)
    return (grad_out.to(acc) @ w).to(grad_out.dtype)


def sparse_linear_grad_values(grad_out, input, row_ptr, col_idx, row_order):
    """d(loss)/d(values): for the nonzero (r, c), sum over b of grad_out[b, r] * input[b, c]."""
    op = "sparse_linear_grad_values"
    if input.dim() != 2:
        raise ValueError(f"sparsedistill: {op}: input must be 2-D, got shape {tuple(input.shape)}")
    out = check_structure(op, row_ptr, col_idx, row_order, input.shape[1], input, "input")
    check_dense(op, grad_out, "grad_out", "out_features", out)
    if grad_out.shape[0] != input.shape[0] or grad_out.dtype != input.dtype or grad_out.device != input.device:
        raise ValueError(f"sparsedistill: {op}: grad_out must have shape (B={input.shape[0]}, "
                         f"out_features={out}) and the dtype and device of input")
    acc = _acc_dtype(input.dtype)
    nnz = col_idx.numel()
    rows = _row_of_each_nonzero(row_ptr, nnz)
    dense_grad = grad_out.to(acc).T @ input.to(acc)  # (out, in): d(loss)/dW
    return dense_grad[rows, col_idx.long()].to(input.dtype)
