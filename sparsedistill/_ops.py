"""Every op of sparsedistill, defined once: schema, default (reference) kernel, fake kernel and
autograd. Native kernels (csrc/) register for the CPU and CUDA keys of the same ops and override
the default when the extension is loaded; see sparsedistill/_backend.py.
"""
from __future__ import annotations

import torch

from . import _prune_reference, _reference, _sparse_reference

lib = torch.library.Library("sparsedistill", "DEF")

# ---------------------------------------------------------------------------------------------
# distill_loss: fused softened-softmax distillation loss, per row.
# Outputs: loss_rows (N,) f32, soft_rows (N,) f32, hard_rows (N,) f32, grad (N, V) student dtype
# (shape (0,) when compute_grad is false). grad is grad_scale * d(loss_row)/d(student_row):
# grad_scale (a 0-dim f32 tensor on the device, e.g. 1/count for a mean) is the weight the
# caller gives every row, folded in here so that backward usually has nothing left to do.
# The grad output is a workspace: in eager mode backward scales it in place and returns it as
# the student's gradient (one logits-sized buffer in all); read it before backward, if at all.
# ---------------------------------------------------------------------------------------------
lib.define(
    "distill_loss(Tensor student, Tensor teacher, Tensor? labels, Tensor grad_scale, float T, "
    "float alpha, "
    "float beta, int divergence, int ignore_index, bool compute_grad) "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)
lib.impl("distill_loss", _reference.distill_loss, "CompositeExplicitAutograd")


@torch.library.register_fake("sparsedistill::distill_loss")
def _distill_loss_fake(student, teacher, labels, grad_scale, T, alpha, beta, divergence,
                       ignore_index, compute_grad):
    rows = student.shape[0]
    row_vec = student.new_empty((rows,), dtype=torch.float32)
    grad = student.new_empty(student.shape) if compute_grad else student.new_empty((0,))
    return row_vec, row_vec.new_empty((rows,)), row_vec.new_empty((rows,)), grad


def _distill_loss_setup_context(ctx, inputs, output):
    compute_grad = inputs[-1]
    loss_rows, soft_rows, hard_rows, grad = output
    ctx.mark_non_differentiable(soft_rows, hard_rows, grad)
    # Unused output gradients stay None: materialising them would zero-fill an (N, V) tensor
    # for the grad output on every backward.
    ctx.set_materialize_grads(False)
    ctx.compute_grad = compute_grad
    ctx.grad_consumed = False
    ctx.save_for_backward(grad, inputs[3])


def _distill_loss_backward(ctx, grad_loss_rows, _grad_soft, _grad_hard, _grad_grad):
    if grad_loss_rows is None:
        return (None,) * 10
    if not ctx.compute_grad:
        raise RuntimeError(
            "sparsedistill.distill_loss was called with compute_grad=False, so it has no "
            "gradient for student; call it with compute_grad=True when student requires grad"
        )
    if ctx.grad_consumed:
        raise RuntimeError(
            "sparsedistill.distillation_loss: backward ran twice through the same loss; its "
            "gradient buffer is scaled in place, so retain_graph=True is not supported. "
            "Compute the loss again instead.")
    grad, grad_scale = ctx.saved_tensors
    # grad already holds grad_scale * d(loss_row)/ds; the chain rule asks for
    # grad_loss_rows * d(loss_row)/ds, so each row is multiplied by grad_loss_rows / grad_scale:
    # exactly 1 for loss.backward() on a mean or sum (then the native kernels skip the row).
    row_scale = grad_loss_rows / grad_scale
    # Traced (dynamo, AOTAutograd's fake/functional tensors) or a tensor subclass: out of place.
    if torch.compiler.is_compiling() or type(grad) is not torch.Tensor:
        return torch.mul(grad, row_scale.unsqueeze(-1), out=torch.empty_like(grad)), *([None] * 9)
    # Eager: scale the saved buffer in place, so the loss costs one logits-sized buffer in all.
    # The buffer is private to this graph node, which can therefore run backward only once.
    ctx.grad_consumed = True
    torch.ops.sparsedistill.scale_rows_(grad, row_scale)
    return grad, *([None] * 9)


torch.library.register_autograd(
    "sparsedistill::distill_loss", _distill_loss_backward,
    setup_context=_distill_loss_setup_context,
)


# ---------------------------------------------------------------------------------------------
# scale_rows_: grad[r, :] *= row_scale[r] in place (row_scale f32 of shape (N,)). The native
# kernels skip rows whose scale is exactly 1, so an unscaled backward reads no memory at all.
# ---------------------------------------------------------------------------------------------
lib.define("scale_rows_(Tensor(a!) grad, Tensor row_scale) -> ()")
lib.impl("scale_rows_", _reference.scale_rows_, "CompositeExplicitAutograd")


@torch.library.register_fake("sparsedistill::scale_rows_")
def _scale_rows_fake(grad, row_scale):
    return None


# ---------------------------------------------------------------------------------------------
# select_smallest: exact k-smallest selection over a list of tensors (one threshold for all)
# without sorting. Returns one bool keep-mask per tensor: exactly k of the eligible elements
# (keep[i] True, or all when keep is None) are False, ranked by key ascending (|value| if
# magnitude, else value), ties by (tensor index, flat index); not-eligible elements stay False.
# ---------------------------------------------------------------------------------------------
lib.define("select_smallest(Tensor[] values, Tensor[]? keep, int k, bool magnitude) -> Tensor[]")
lib.impl("select_smallest", _prune_reference.select_smallest, "CompositeExplicitAutograd")


@torch.library.register_fake("sparsedistill::select_smallest")
def _select_smallest_fake(values, keep, k, magnitude):
    return [torch.empty_like(v, dtype=torch.bool) for v in values]


# zero_smallest: select_smallest by |tensors| (or by scores) that writes the keep-masks into
# `masks` and zeroes, in place, every element of tensors whose mask is False (the native CPU
# kernel does it in its mask pass, so pruning costs no extra pass over the weights).
lib.define("zero_smallest(Tensor(a!)[] tensors, Tensor(b!)[] masks, Tensor[]? scores, "
           "Tensor[]? keep, int k) -> ()")
lib.impl("zero_smallest", _prune_reference.zero_smallest, "CompositeExplicitAutograd")


@torch.library.register_fake("sparsedistill::zero_smallest")
def _zero_smallest_fake(tensors, masks, scores, keep, k):
    return None


# ---------------------------------------------------------------------------------------------
# nm_mask: N:M keep-mask along the last dim. In every group of m consecutive elements the n
# largest keys (|value| if magnitude, else value) are kept; ties: the lower index is pruned
# first; NaN ranks above every number (sparsedistill.nm_mask rejects NaN before calling).
# Returns a contiguous bool tensor of values' shape.
# ---------------------------------------------------------------------------------------------
lib.define("nm_mask(Tensor values, int n, int m, bool magnitude) -> Tensor")
lib.impl("nm_mask", _prune_reference.nm_mask, "CompositeExplicitAutograd")


@torch.library.register_fake("sparsedistill::nm_mask")
def _nm_mask_fake(values, n, m, magnitude):
    _prune_reference.check_nm_mask_args(values, n, m)
    return values.new_empty(values.shape, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------
# sparse_linear: input (B, in_features) @ W.T + bias for a CSR-compressed weight W (layout in
# _sparse_reference.py), and the two products its backward needs, with the same structure:
#   sparse_linear_grad_input:  grad_out (B, out) @ W -> (B, in_features)
#   sparse_linear_grad_values: per nonzero (r, c), sum_b grad_out[b, r] * input[b, c] -> (nnz,)
# The structure (row_ptr, col_idx, row_order) is fixed: gradients flow to input, values, bias.
# ---------------------------------------------------------------------------------------------
lib.define(
    "sparse_linear(Tensor input, Tensor values, Tensor row_ptr, Tensor col_idx, "
    "Tensor row_order, int in_features, Tensor? bias) -> Tensor")
lib.impl("sparse_linear", _sparse_reference.sparse_linear, "CompositeExplicitAutograd")
lib.define(
    "sparse_linear_grad_input(Tensor grad_out, Tensor values, Tensor row_ptr, Tensor col_idx, "
    "Tensor row_order, int in_features) -> Tensor")
lib.impl("sparse_linear_grad_input", _sparse_reference.sparse_linear_grad_input,
         "CompositeExplicitAutograd")
lib.define(
    "sparse_linear_grad_values(Tensor grad_out, Tensor input, Tensor row_ptr, Tensor col_idx, "
    "Tensor row_order) -> Tensor")
lib.impl("sparse_linear_grad_values", _sparse_reference.sparse_linear_grad_values,
         "CompositeExplicitAutograd")


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
