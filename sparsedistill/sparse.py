"""Sparse matmul for unstructured (magnitude-pruned) weights: the compressed weight format
SparseWeight, the sparse_linear function, the SparseLinear module and sparsify(model).

SparseWeight is CSR over the rows of an nn.Linear weight (out_features, in_features); the
layout is described in _sparse_reference.py. Bytes per nonzero: the value (4 for float32, 2 for
bfloat16/float16) plus the column index (2 while in_features <= 32768, else 4), plus 12 bytes
per row (row pointer and row order).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ._sparse_reference import _FLOATS, dense_weight
INT16_MAX_COLUMNS = 32768  # column indices 0..32767 fit a signed int16


def column_index_dtype(in_features: int) -> torch.dtype:
    return torch.int16 if in_features <= INT16_MAX_COLUMNS else torch.int32


def rows_by_length(row_ptr: torch.Tensor) -> torch.Tensor:
    """Row indices ordered by nonzero count, longest first, ties by index (int32)."""
    counts = row_ptr[1:] - row_ptr[:-1]
    return torch.sort(counts, descending=True, stable=True).indices.to(torch.int32)


@dataclass
class SparseWeight:
    """A CSR-compressed (out_features, in_features) weight; see the module docstring."""
    values: torch.Tensor
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    row_order: torch.Tensor
    in_features: int

    @property
    def out_features(self) -> int:
        return self.row_ptr.numel() - 1

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def density(self) -> float:
        total = self.out_features * self.in_features
        return self.nnz / total if total else 0.0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.values, self.row_ptr, self.col_idx, self.row_order))

    def bytes_per_nonzero(self) -> float:
        return self.values.element_size() + self.col_idx.element_size()

    @classmethod
    def empty(cls, out_features: int, in_features: int, *, device=None,
              dtype=torch.float32) -> "SparseWeight":
        """An all-zero weight (no nonzeros), without materialising the dense shape."""
        return cls(torch.empty(0, dtype=dtype, device=device),
                   torch.zeros(out_features + 1, dtype=torch.int64, device=device),
                   torch.empty(0, dtype=column_index_dtype(in_features), device=device),
                   torch.arange(out_features, dtype=torch.int32, device=device), in_features)

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> "SparseWeight":
        """Keeps the nonzeros of a 2-D floating-point weight (NaN counts as nonzero)."""
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
        if weight.dtype not in _FLOATS:
            raise TypeError(f"weight must be floating point (float32, bfloat16, float16, float64), got {weight.dtype}")
        w = weight.detach()
        out_features, in_features = w.shape
        nonzero = w != 0
        counts = nonzero.sum(1)
        row_ptr = torch.zeros(out_features + 1, dtype=torch.int64, device=w.device)
        torch.cumsum(counts, 0, out=row_ptr[1:])
        rows, cols = nonzero.nonzero(as_tuple=True)  # row-major: columns ascend within a row
        return cls(w[rows, cols].contiguous(), row_ptr, cols.to(column_index_dtype(in_features)),
                   rows_by_length(row_ptr), in_features)

    @classmethod
    def from_csr(cls, csr: torch.Tensor) -> "SparseWeight":
        """From a torch.sparse_csr_tensor (columns are sorted here if they are not)."""
        if not isinstance(csr, torch.Tensor) or csr.layout != torch.sparse_csr or csr.dim() != 2:
            raise TypeError("csr must be a 2-D torch.sparse_csr tensor, got "
                            f"{getattr(csr, 'layout', type(csr).__name__)}")
        return cls.from_dense(csr.to_dense())

    def to_dense(self) -> torch.Tensor:
        return dense_weight(self.values.detach(), self.row_ptr, self.col_idx, self.in_features)

    def to_sparse_csr(self) -> torch.Tensor:
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.row_ptr, self.col_idx.to(torch.int64),
                                           self.values.detach(), size=self.shape,
                                           check_invariants=False)  # validate() checked them

    def to(self, *args, **kwargs) -> "SparseWeight":
        """Moves to a device and/or casts the values to a dtype (indices keep theirs)."""
        values = self.values.to(*args, **kwargs)
        device = values.device
        return SparseWeight(values, self.row_ptr.to(device), self.col_idx.to(device),
                            self.row_order.to(device), self.in_features)

    def validate(self, name: str = "weight") -> None:
        """Raises ValueError/TypeError naming the part of the structure that is malformed."""
        validate_structure(self.values, self.row_ptr, self.col_idx, self.row_order,
                           self.in_features, name)


def validate_structure(values, row_ptr, col_idx, row_order, in_features: int, name: str) -> None:
    """Full check of a compressed weight (one pass over the indices; syncs on a GPU)."""
    if values.dim() != 1 or values.dtype not in _FLOATS:
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


def sparse_linear(input: torch.Tensor, weight: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``input @ W.T + bias`` for a compressed weight, in nn.Linear's layout: input
    (..., in_features) -> (..., out_features). Differentiable in input, weight.values and bias."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(weight, SparseWeight):
        raise TypeError(f"weight must be a sparsedistill.SparseWeight, got {type(weight).__name__}")
    if input.dtype not in _FLOATS:
        raise TypeError(f"input must be floating point, got {input.dtype}")
    if input.dim() < 1 or input.shape[-1] != weight.in_features:
        raise ValueError(f"input must have in_features={weight.in_features} as its last dimension, "
                         f"got shape {tuple(input.shape)}")
    if input.dtype != weight.dtype:
        raise TypeError(f"input must have the weight's dtype {weight.dtype}, got {input.dtype}")
    if input.device != weight.device:
        raise ValueError(f"input must be on the weight's device {weight.device}, got {input.device}")
    if bias is not None and (bias.shape != (weight.out_features,) or bias.dtype != weight.dtype
                             or bias.device != weight.device):
        raise ValueError(f"bias must be a ({weight.out_features},) tensor of dtype {weight.dtype} on "
                         f"{weight.device}, got {tuple(bias.shape)}, {bias.dtype}, {bias.device}")
    lead = input.shape[:-1]
    y = torch.ops.sparsedistill.sparse_linear(
        input.reshape(-1, weight.in_features), weight.values, weight.row_ptr, weight.col_idx,
        weight.row_order, weight.in_features, bias)
    return y.reshape(*lead, weight.out_features)
