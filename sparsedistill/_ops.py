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
    ctx.save_for_backward(grad)


def _distill_loss_backward(ctx, grad_loss_rows, _grad_soft, _grad_hard, _grad_grad):
    if not ctx.compute_grad:
        raise RuntimeError(
            "sparsedistill.distill_loss was called with compute_grad=False, so it has no "
            "gradient for student; call it with compute_grad=True when student requires grad"
        )
    (grad,) = ctx.saved_tensors
    # The per-row gradient was computed in the forward; the chain rule only scales each row.
    # Out of place, so the graph can be replayed (retain_graph) and traced by torch.compile.
    # Multiplied in float32 (the row scales are f32) and written once in the student's dtype.
    grad_student = torch.mul(grad, grad_loss_rows.unsqueeze(-1), out=torch.empty_like(grad))
    return grad_student, None, None, None, None, None, None, None, None


torch.library.register_autograd(
    "sparsedistill::distill_loss", _distill_loss_backward,
    setup_context=_distill_loss_setup_context,
)
