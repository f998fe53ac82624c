"""The compressed weight format SparseWeight and the sparse_linear function.

SparseWeight is CSR over the rows of an nn.Linear weight (out_features, in_features); the
layout is described in reference.py. Bytes per nonzero: the value (4 for float32, 2 for
bfloat16/float16) plus the column index (2 while in_features <= 32768, else 4), plus 12 bytes
per row (row pointer and row order).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .._common import FLOAT_DTYPE_NAMES, FLOAT_DTYPES
from . import ops  # noqa: F401  (defines torch.ops.sparsedistill.sparse_linear)
from .checks import Stamp, check_input, column_index_dtype, validate_structure
from .reference import dense_weight

__all__ = ["SparseWeight", "sparse_linear"]


def rows_by_length(row_ptr: torch.Tensor) -> torch.Tensor:
    """Row indices ordered by nonzero count, longest first, ties by index (int32)."""
    counts = row_ptr[1:] - row_ptr[:-1]
    return torch.sort(counts, descending=True, stable=True).indices.to(torch.int32)


@dataclass(frozen=True, eq=False)
class SparseWeight:
    """A CSR-compressed (out_features, in_features) weight; see the module docstring.

    Built from parts, the structure is validated whole (validate(); ValueError/TypeError naming
    the part). The fields are read-only, and a part written in place after that is validated
    again before any kernel reads it, so a malformed structure never reaches a kernel."""
    values: torch.Tensor
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    row_order: torch.Tensor
    in_features: int

    def __post_init__(self):
        if isinstance(self.in_features, bool) or not isinstance(self.in_features, int):
            raise TypeError(f"in_features must be an int, got {self.in_features!r}")
        for name in ("values", "row_ptr", "col_idx", "row_order"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        self.validate()

    @classmethod
    def _trusted(cls, values, row_ptr, col_idx, row_order, in_features: int) -> "SparseWeight":
        """A SparseWeight whose structure is valid by construction (from_dense, empty, to)."""
        w = object.__new__(cls)
        for name, value in (("values", values), ("row_ptr", row_ptr), ("col_idx", col_idx),
                            ("row_order", row_order), ("in_features", in_features)):
            object.__setattr__(w, name, value)
        object.__setattr__(w, "_stamp", Stamp(values, row_ptr, col_idx, row_order, in_features))
        return w

    def ensure_valid(self, name: str = "weight") -> None:
        """validate() again if a part was written since it last passed (a few attribute reads
        when nothing changed)."""
        if not torch.compiler.is_compiling() and not self._stamp.matches(
                self.values, self.row_ptr, self.col_idx, self.row_order, self.in_features):
            self.validate(name)

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
    @torch.inference_mode(False)  # inference tensors have no version counter for the stamp
    def empty(cls, out_features: int, in_features: int, *, device=None,
              dtype=torch.float32) -> "SparseWeight":
        """An all-zero weight (no nonzeros), without materialising the dense shape."""
        return cls._trusted(torch.empty(0, dtype=dtype, device=device),
                            torch.zeros(out_features + 1, dtype=torch.int64, device=device),
                            torch.empty(0, dtype=column_index_dtype(in_features), device=device),
                            torch.arange(out_features, dtype=torch.int32, device=device), in_features)

    @classmethod
    @torch.inference_mode(False)
    def from_dense(cls, weight: torch.Tensor) -> "SparseWeight":
        """Keeps the nonzeros of a 2-D floating-point weight (NaN counts as nonzero)."""
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
        if weight.dtype not in FLOAT_DTYPES:
            raise TypeError(f"weight must be floating point ({FLOAT_DTYPE_NAMES}), got {weight.dtype}")
        w = weight.detach()
        out_features, in_features = w.shape
        nonzero = w != 0
        counts = nonzero.sum(1)
        row_ptr = torch.zeros(out_features + 1, dtype=torch.int64, device=w.device)
        torch.cumsum(counts, 0, out=row_ptr[1:])
        rows, cols = nonzero.nonzero(as_tuple=True)  # row-major: columns ascend within a row
        return cls._trusted(w[rows, cols].contiguous(), row_ptr, cols.to(column_index_dtype(in_features)),
                            rows_by_length(row_ptr), in_features)

    @classmethod
    def from_csr(cls, csr: torch.Tensor) -> "SparseWeight":
        """From a torch.sparse_csr_tensor, through its dense form: columns come out sorted and
        stored zeros are dropped."""
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
                                           check_invariants=False)  # validate() checks the structure

    @torch.inference_mode(False)
    def to(self, *args, **kwargs) -> "SparseWeight":
        """Moves to a device and/or casts the values to a dtype (indices keep theirs)."""
        self.ensure_valid()
        values = self.values.to(*args, **kwargs)
        device = values.device
        return SparseWeight._trusted(values, self.row_ptr.to(device), self.col_idx.to(device),
                                     self.row_order.to(device), self.in_features)

    def validate(self, name: str = "weight") -> None:
        """Raises ValueError/TypeError naming the part of the structure that is malformed."""
        validate_structure(self.values, self.row_ptr, self.col_idx, self.row_order,
                           self.in_features, name)
        object.__setattr__(self, "_stamp", Stamp(self.values, self.row_ptr, self.col_idx,
                                                 self.row_order, self.in_features))


def sparse_linear(input: torch.Tensor, weight: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``input @ W.T + bias`` for a compressed weight, in nn.Linear's layout: input
    (..., in_features) -> (..., out_features). Differentiable in input, weight.values and bias."""
    check_input(input, weight, bias)
    weight.ensure_valid()
    lead = input.shape[:-1]
    y = torch.ops.sparsedistill.sparse_linear(
        input.reshape(math.prod(lead), weight.in_features), weight.values, weight.row_ptr,
        weight.col_idx, weight.row_order, weight.in_features, bias)
    return y.reshape(*lead, weight.out_features)
