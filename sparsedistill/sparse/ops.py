"""The sparse-matmul ops, defined once: schema, default (reference) kernel, fake kernel and
autograd. The native kernels (csrc/sparse/) register for the CPU and CUDA keys of the same ops
and override the default when the extension is loaded; see sparsedistill/_library.py.
"""
from __future__ import annotations

import torch

from .._library import define
from . import reference

# ---------------------------------------------------------------------------------------------
# sparse_linear: input (B, in_features) @ W.T + bias for a CSR-compressed weight W (layout in
# reference.py), and the two products its backward needs, with the same structure:
#   sparse_linear_grad_input:  grad_out (B, out) @ W -> (B, in_features)
#   sparse_linear_grad_values: per nonzero (r, c), sum_b grad_out[b, r] * input[b, c] -> (nnz,)
# The structure (row_ptr, col_idx, row_order) is fixed: gradients flow to input, values, bias.
# ---------------------------------------------------------------------------------------------
define("sparse_linear(Tensor input, Tensor values, Tensor row_ptr, Tensor col_idx, "
       "Tensor row_order, int in_features, Tensor? bias) -> Tensor", reference.sparse_linear)
define("sparse_linear_grad_input(Tensor grad_out, Tensor values, Tensor row_ptr, Tensor col_idx, "
       "Tensor row_order, int in_features) -> Tensor", reference.sparse_linear_grad_input)
define("sparse_linear_grad_values(Tensor grad_out, Tensor input, Tensor row_ptr, Tensor col_idx, "
       "Tensor row_order) -> Tensor", reference.sparse_linear_grad_values)


@torch.library.register_fake("sparsedistill::sparse_linear")
def _sparse_linear_fake(input, values, row_ptr, col_idx, row_order, in_features, bias):
    return input.new_empty((input.shape[0], row_ptr.shape[0] - 1))


@torch.library.register_fake("sparsedistill::sparse_linear_grad_input")
def _sparse_linear_grad_input_fake(grad_out, values, row_ptr, col_idx, row_order, in_features):
    return grad_out.new_empty((grad_out.shape[0], in_features))


@torch.library.register_fake("sparsedistill::sparse_linear_grad_values")
def _sparse_linear_grad_values_fake(grad_out, input, row_ptr, col_idx, row_order):
    return input.new_empty(col_idx.shape)


def _sparse_linear_setup_context(ctx, inputs, output):
    input, values, row_ptr, col_idx, row_order, in_features, bias = inputs
    ctx.in_features = in_features
    ctx.has_bias = bias is not None
    ctx.save_for_backward(input, values, row_ptr, col_idx, row_order)


def _sparse_linear_backward(ctx, grad_out):
    if torch.is_grad_enabled():  # backward(create_graph=True): a second derivative is asked for
        raise RuntimeError(
            "sparsedistill.sparse_linear does not support double backward (create_graph=True, "
            "hessians, gradient penalties); use the dense layer (SparseLinear.to_dense()) for "
            "second derivatives.")
    input, values, row_ptr, col_idx, row_order = ctx.saved_tensors
    grad_out = grad_out.contiguous()
    grad_input = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = torch.ops.sparsedistill.sparse_linear_grad_input(
            grad_out, values, row_ptr, col_idx, row_order, ctx.in_features)
    if ctx.needs_input_grad[1]:
        grad_values = torch.ops.sparsedistill.sparse_linear_grad_values(
            grad_out, input, row_ptr, col_idx, row_order)
    if ctx.has_bias and ctx.needs_input_grad[6]:
        grad_bias = grad_out.sum(0)
    return grad_input, grad_values, None, None, None, None, grad_bias


torch.library.register_autograd(
    "sparsedistill::sparse_linear", _sparse_linear_backward,
    setup_context=_sparse_linear_setup_context,
)
