"""Pure-PyTorch reference of the sparse-matmul ops: the "default" kernels and the test oracle.

The compressed weight (sparsedistill/sparse/weight.py, SparseWeight) is CSR over the rows of an
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

from .checks import check_grad_input_args, check_grad_values_args, check_sparse_linear_args


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
    check_sparse_linear_args(input, values, row_ptr, col_idx, row_order, in_features, bias)
    acc = _acc_dtype(input.dtype)
    w = dense_weight(values, row_ptr, col_idx, in_features, acc)
    out = input.to(acc) @ w.T
    if bias is not None:
        out = out + bias.to(acc)
    return out.to(input.dtype)


def sparse_linear_grad_input(grad_out, values, row_ptr, col_idx, row_order, in_features: int):
    """grad_out (B, out) @ W -> (B, in)."""
    check_grad_input_args(grad_out, values, row_ptr, col_idx, row_order, in_features)
    acc = _acc_dtype(grad_out.dtype)
    w = dense_weight(values, row_ptr, col_idx, in_features, acc)
    return (grad_out.to(acc) @ w).to(grad_out.dtype)


def sparse_linear_grad_values(grad_out, input, row_ptr, col_idx, row_order):
    """d(loss)/d(values): for the nonzero (r, c), sum over b of grad_out[b, r] * input[b, c]."""
    check_grad_values_args(grad_out, input, row_ptr, col_idx, row_order)
    acc = _acc_dtype(input.dtype)
    nnz = col_idx.numel()
    rows = _row_of_each_nonzero(row_ptr, nnz)
    dense_grad = grad_out.to(acc).T @ input.to(acc)  # (out, in): d(loss)/dW
    return dense_grad[rows, col_idx.long()].to(input.dtype)
