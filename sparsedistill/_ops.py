"""Every op of sparsedistill, defined once: schema, default (reference) kernel, fake kernel and
autograd. Native kernels (csrc/) register for the CPU and CUDA keys of the same ops and override
the default when the extension is loaded; see sparsedistill/_backend.py.
"""
from __future__ import annotations

import torch

from . import _reference

lib = torch.library.Library("sparsedistill", "DEF")

# ---------------------------------------------------------------------------------------------
# distill_loss: fused softened-softmax distillation loss, per row.
# Outputs: loss_rows (N,) f32, soft_rows (N,) f32, hard_rows (N,) f32, grad (N, V) student dtype
# (shape (0,) when compute_grad is false). grad is d(loss_row)/d(student_row); backward scales
# it by the incoming per-row gradient, so no softmax is recomputed and no host sync happens.
# ---------------------------------------------------------------------------------------------
lib.define(
    "distill_loss(Tensor student, Tensor teacher, Tensor? labels, float T, float alpha, "
    "float beta, int divergence, int ignore_index, bool compute_grad) "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)
lib.impl("distill_loss", _reference.distill_loss, "CompositeExplicitAutograd")


@torch.library.register_fake("sparsedistill::distill_loss")
def _distill_loss_fake(student, teacher, labels, T, alpha, beta, divergence, ignore_index,
                       compute_grad):
    rows = student.shape[0]
    row_vec = student.new_empty((rows,), dtype=torch.float32)
    grad = student.new_empty(student.shape) if compute_grad else student.new_empty((0,))
    return row_vec, row_vec.new_empty((rows,)), row_vec.new_empty((rows,)), grad


def _distill_loss_setup_context(ctx, inputs, output):
    compute_grad = inputs[-1]
    loss_rows, soft_rows, hard_rows, grad = output
    ctx.mark_non_differentiable(soft_rows, hard_rows, grad)
    ctx.compute_grad = compute_grad
    ctx.grad_consumed = False
    ctx.save_for_backward(grad)


def _distill_loss_backward(ctx, grad_loss_rows, _grad_soft, _grad_hard, _grad_grad):
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
    (grad,) = ctx.saved_tensors
    scale = grad_loss_rows.unsqueeze(-1)
    # The per-row gradient was computed in the forward; the chain rule only scales each row
    # (in float32, the dtype of the row scales, written once in the student's dtype).
    # Traced (dynamo, AOTAutograd's fake/functional tensors) or a tensor subclass: out of place.
    if torch.compiler.is_compiling() or type(grad) is not torch.Tensor:
        return torch.mul(grad, scale, out=torch.empty_like(grad)), *([None] * 8)
    # Eager: scale the saved buffer in place, so the loss costs one logits-sized buffer in all.
    # The buffer is private to this graph node, which can therefore run backward only once.
    ctx.grad_consumed = True
    return grad.mul_(scale), *([None] * 8)


torch.library.register_autograd(
    "sparsedistill::distill_loss", _distill_loss_backward,
    setup_context=_distill_loss_setup_context,
)
