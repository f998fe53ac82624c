"""The distillation ops, defined once: schema, default (reference) kernel, fake kernel and
autograd. The native kernels (csrc/distill/) register for the CPU and CUDA keys of the same ops
and override the default when the extension is loaded; see sparsedistill/_library.py.
"""
from __future__ import annotations

import torch

from .._library import define
from . import reference

# ---------------------------------------------------------------------------------------------
# distill_loss: fused softened-softmax distillation loss, per row.
# Outputs: loss_rows (N,) f32, soft_rows (N,) f32, hard_rows (N,) f32, grad (N, V) student dtype
# (shape (0,) when compute_grad is false). grad is grad_scale * d(loss_row)/d(student_row):
# grad_scale (a 0-dim f32 tensor on the device, e.g. 1/count for a mean) is the weight the
# caller gives every row, folded in here so that backward usually has nothing left to do.
# The grad output is a workspace: in eager mode backward scales it in place and returns it as
# the student's gradient (one logits-sized buffer in all); read it before backward, if at all.
# ---------------------------------------------------------------------------------------------
define("distill_loss(Tensor student, Tensor teacher, Tensor? labels, Tensor grad_scale, float T, "
       "float alpha, float beta, int divergence, int ignore_index, bool compute_grad) "
       "-> (Tensor, Tensor, Tensor, Tensor)", reference.distill_loss)


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
    if torch.is_grad_enabled():  # backward(create_graph=True): a second derivative is asked for
        raise RuntimeError(
            "sparsedistill.distillation_loss does not support double backward (create_graph=True, "
            "hessians, gradient penalties): its gradient is computed in the forward and is not "
            "differentiable. Use the stock composite for second derivatives.")
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
define("scale_rows_(Tensor(a!) grad, Tensor row_scale) -> ()", reference.scale_rows_)


@torch.library.register_fake("sparsedistill::scale_rows_")
def _scale_rows_fake(grad, row_scale):
    return None
