"""Sparse matmul for unstructured (magnitude-pruned) weights: the compressed format SparseWeight
and sparse_linear (weight.py), the SparseLinear module (modules.py), sparsify(model) and its
plans (sparsify.py), saving and loading sparse models (checkpoint.py). ops.py defines the ops
and their autograd, reference.py holds their pure-PyTorch kernels, checks.py the argument
checks; the native kernels are in csrc/sparse/."""
from . import ops  # noqa: F401  (defines the ops)
from .checkpoint import from_pretrained, load_sparse_state_dict, save_pretrained
from .modules import SparseLinear
from .sparsify import DEFAULT_EXCLUDE, SparsifyPlan, SparsifyReport, apply_plan, sparsify
from .weight import SparseWeight, sparse_linear

__all__ = ["SparseWeight", "sparse_linear", "SparseLinear", "sparsify", "SparsifyReport",
           "SparsifyPlan", "apply_plan", "DEFAULT_EXCLUDE", "save_pretrained", "from_pretrained",
           "load_sparse_state_dict"]
