"""The fused linear + distillation op, defined once: schema, default (reference) kernel, fake
kernel and autograd. Native kernels: csrc/distill/fused_linear_cpu.cpp (CPU) and
csrc/distill/cuda/fused_linear_host.cpp (CUDA).

fused_linear_distill(student_hidden (N, Hs), student_weight (Vs, Hs), student_bias (Vs)?,
                     teacher_hidden (N, Ht), teacher_weight (Vt, Ht), teacher_bias (Vt)?,
                     labels (N) int64?, row_weight () or (N) f32, T, alpha, beta, divergence,
                     ignore_index, logit_scale, softcap (0: none), pad_vocab, chunk_rows,
                     compute_grad)
  -> (loss () f32, loss_rows (N) f32, soft_rows (N) f32, hard_rows (N) f32,
      grad_hidden (N, Hs), grad_weight (Vs, Hs), grad_bias (Vs))

logits = softcap(logit_scale * (hidden @ weight.T + bias)) for both models, chunk by chunk of
chunk_rows rows (the only logits ever alive), padded with -inf to max(Vs, Vt) classes when
pad_vocab. loss = sum_r row_weight_r * loss_rows_r. With compute_grad the forward also returns
d(loss)/d(student_hidden, student_weight, student_bias) (grad_bias has shape (0,) without a
bias; all three (0,) without compute_grad).

Autograd: `loss` and `loss_rows` are differentiable.
- Through `loss` (reduction "mean"/"sum"): backward multiplies the saved gradients by the
  scalar grad_output (in place in eager mode): no second forward.
- Through `loss_rows` (reduction "none"): the gradient depends on a per-row grad_output that is
  known only in backward, so backward runs the op again with row_weight = grad_output (one more
  forward pass, documented in docs/api/distill.md).
"""
from __future__ import annotations

import torch

from .._library import define
from .fused_linear_reference import fused_linear_distill as _reference

define("fused_linear_distill(Tensor student_hidden, Tensor student_weight, Tensor? student_bias, "
       "Tensor teacher_hidden, Tensor teacher_weight, Tensor? teacher_bias, Tensor? labels, "
       "Tensor row_weight, float T, float alpha, float beta, int divergence, int ignore_index, "
       "float logit_scale, float softcap, bool pad_vocab, int chunk_rows, bool compute_grad) "
       "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", _reference)

N_INPUTS = 18


@torch.library.register_fake("sparsedistill::fused_linear_distill")
def _fused_linear_distill_fake(student_hidden, student_weight, student_bias, teacher_hidden,
                               teacher_weight, teacher_bias, labels, row_weight, T, alpha, beta,
                               divergence, ignore_index, logit_scale, softcap, pad_vocab,
                               chunk_rows, compute_grad):
    rows = student_hidden.shape[0]
    f32 = dict(dtype=torch.float32)
    loss = student_hidden.new_empty((), **f32)
    row_vecs = [student_hidden.new_empty((rows,), **f32) for _ in range(3)]
    if compute_grad:
        grads = [student_hidden.new_empty(student_hidden.shape),
                 student_weight.new_empty(student_weight.shape),
                 student_bias.new_empty(student_bias.shape) if student_bias is not None
                 else student_hidden.new_empty((0,))]
    else:
        grads = [student_hidden.new_empty((0,)) for _ in range(3)]
    return (loss, *row_vecs, *grads)


def _setup_context(ctx, inputs, output):
    _, _, _, _, grad_h, grad_w, grad_b = output
    ctx.mark_non_differentiable(*output[2:])
    ctx.set_materialize_grads(False)
    ctx.compute_grad = inputs[-1]
    ctx.present = [x is not None for x in inputs[:8]]  # which optional tensors were given
    ctx.scalars = inputs[8:]  # T ... compute_grad, for the reduction="none" recompute
    ctx.grad_consumed = False
    placeholder = inputs[0].new_empty(0)
    ctx.save_for_backward(grad_h, grad_w, grad_b,
                          *[x if x is not None else placeholder for x in inputs[:8]])


def _recompute(ctx, saved, row_weight):
    """Backward of loss_rows: the op again, with the per-row grad_output as row weights."""
    tensors = [x if given else None for x, given in zip(saved, ctx.present)]
    tensors[7] = row_weight
    out = torch.ops.sparsedistill.fused_linear_distill(*tensors, *ctx.scalars[:-1], True)
    return out[4], out[5], (out[6] if ctx.present[2] else None)


def _backward(ctx, grad_loss, grad_rows, *_unused):
    none = (None,) * (N_INPUTS - 3)
    if grad_loss is None and grad_rows is None:
        return (None,) * N_INPUTS
    if torch.is_grad_enabled():  # backward(create_graph=True): a second derivative is asked for
        raise RuntimeError(
            "sparsedistill.fused_linear_distillation_loss does not support double backward "
            "(create_graph=True, hessians, gradient penalties): its gradient is computed in the "
            "forward and is not differentiable. Use the stock composite for second derivatives.")
    grad_h, grad_w, grad_b, *saved = ctx.saved_tensors
    if grad_rows is not None:  # reduction="none": recompute with per-row weights
        weight = grad_rows.to(torch.float32)
        if grad_loss is not None:
            weight = weight + grad_loss.to(torch.float32) * saved[7]
        return (*_recompute(ctx, saved, weight.contiguous()), *none)
    if not ctx.compute_grad:
        raise RuntimeError(
            "sparsedistill.fused_linear_distill was called with compute_grad=False, so it has no "
            "gradient for the student; call it with compute_grad=True when the student requires grad")
    if ctx.grad_consumed:
        raise RuntimeError(
            "sparsedistill.fused_linear_distillation_loss: backward ran twice through the same "
            "loss; its gradient buffers are scaled in place, so retain_graph=True is not "
            "supported. Compute the loss again instead.")
    grads = [grad_h, grad_w, grad_b if ctx.present[2] else None]
    if torch.compiler.is_compiling() or type(grad_h) is not torch.Tensor:
        return (*[None if g is None else g * grad_loss.to(g.dtype) for g in grads], *none)
    ctx.grad_consumed = True  # eager: scale the private buffers in place
    if not (grad_loss.device.type == "cpu" and float(grad_loss) == 1.0):
        for g in grads:
            if g is not None:
                g.mul_(grad_loss.to(g.dtype))
    return (*grads, *none)


torch.library.register_autograd("sparsedistill::fused_linear_distill", _backward,
                                setup_context=_setup_context)
