"""Sparse matmul for unstructured (magnitude-pruned) weights: the compressed format SparseWeight
and sparse_linear (weight.py), the SparseLinear module and sparsify(model) (modules.py). ops.py
defines the ops and their autograd, reference.py holds their pure-PyTorch kernels, checks.py the
argument checks; the native kernels are in csrc/sparse/."""
from . import ops  # noqa: F401  (defines the ops)
from .modules import SparseLinear, SparsifyReport, sparsify
from .weight import SparseWeight, sparse_linear

__all__ = ["SparseWeight", "sparse_linear", "SparseLinear", "sparsify", "SparsifyReport"]
