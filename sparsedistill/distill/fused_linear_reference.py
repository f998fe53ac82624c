"""Pure-PyTorch kernel of ``sparsedistill::fused_linear_distill``: the default kernel on every
device and the test oracle. It walks the rows in chunks exactly as the native kernels do
(csrc/distill/fused_linear_cpu.cpp), so it never holds more than one chunk of logits either:
per chunk, both models' logits in float32, the row kernel's reference (reference.distill_loss)
with the gradient of the chunk, the chain rule through softcap and logit_scale, and the
gradient GEMMs into float32 accumulators.
"""
from __future__ import annotations

import torch

from . import reference
from .checks import check_fused_linear_distill_args, check_label_range


def chunk_logits(hidden, weight, bias, logit_scale: float, softcap: float, vocab: int):
    """float32 logits of one chunk: softcap(logit_scale * (hidden @ weight.T + bias)), padded to
    `vocab` columns with -inf (probability 0). hidden, weight, bias are float32 already."""
    z = hidden @ weight.T
    if bias is not None:
        z = z + bias
    if logit_scale != 1.0:
        z = z * logit_scale
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    if z.shape[1] < vocab:
        pad = z.new_full((z.shape[0], vocab - z.shape[1]), float("-inf"))
        z = torch.cat([z, pad], dim=1)
    return z


def fused_linear_distill(student_hidden, student_weight, student_bias, teacher_hidden,
                         teacher_weight, teacher_bias, labels, row_weight, T: float, alpha: float,
                         beta: float, divergence: int, ignore_index: int, logit_scale: float,
                         softcap: float, pad_vocab: bool, chunk_rows: int, compute_grad: bool):
    """Reference of the op. Returns (loss, loss_rows, soft_rows, hard_rows, grad_hidden,
    grad_weight, grad_bias): loss = sum_r row_weight_r * loss_rows_r (row_weight 0-dim or (N,));
    the gradients are d(loss)/d(student_hidden, student_weight, student_bias) in their dtypes
    (shape (0,) when not compute_grad; grad_bias also without a bias)."""
    check_fused_linear_distill_args(student_hidden, student_weight, student_bias, teacher_hidden,
                                    teacher_weight, teacher_bias, labels, row_weight, T, alpha,
                                    beta, divergence, logit_scale, softcap, pad_vocab, chunk_rows)
    rows, vocab_s = student_hidden.shape[0], student_weight.shape[0]
    vocab = max(vocab_s, teacher_weight.shape[0])
    if labels is not None:  # the student's classes: a padded class can never be a label
        check_label_range(labels, vocab_s, ignore_index)
    f32 = torch.float32
    ws, wt = student_weight.to(f32), teacher_weight.to(f32)
    bs = student_bias.to(f32) if student_bias is not None else None
    bt = teacher_bias.to(f32) if teacher_bias is not None else None
    per_row = row_weight.dim() == 1
    one = torch.ones((), dtype=f32, device=student_hidden.device)
    loss_rows, soft_rows, hard_rows = (student_hidden.new_zeros((rows,), dtype=f32) for _ in range(3))
    if compute_grad:
        grad_h = student_hidden.new_zeros(student_hidden.shape, dtype=f32)
        grad_w = student_weight.new_zeros(student_weight.shape, dtype=f32)
        grad_b = student_weight.new_zeros((vocab_s,), dtype=f32)
    for start in range(0, rows, chunk_rows):
        stop = min(start + chunk_rows, rows)
        h = student_hidden[start:stop].to(f32)
        s = chunk_logits(h, ws, bs, logit_scale, softcap, vocab)
        t = chunk_logits(teacher_hidden[start:stop].to(f32), wt, bt, logit_scale, softcap, vocab)
        y = labels[start:stop] if labels is not None else None
        l, so, ha, g = reference.distill_loss(s, t, y, one if per_row else row_weight, T, alpha,
                                              beta, divergence, ignore_index, compute_grad)
        loss_rows[start:stop], soft_rows[start:stop], hard_rows[start:stop] = l, so, ha
        if not compute_grad:
            continue
        g = g[:, :vocab_s]
        if per_row:
            g = g * row_weight[start:stop, None]
        if softcap:  # d(c tanh(z/c))/dz = 1 - tanh^2 = 1 - (capped / c)^2
            g = g * (1 - (s[:, :vocab_s] / softcap) ** 2)
        if logit_scale != 1.0:
            g = g * logit_scale
        grad_h[start:stop] = g @ ws
        grad_w.addmm_(g.T, h)
        grad_b += g.sum(0)
    loss = (loss_rows * row_weight).sum()
    if compute_grad:
        grads = (grad_h.to(student_hidden.dtype), grad_w.to(student_weight.dtype),
                 grad_b.to(student_bias.dtype) if student_bias is not None else student_hidden.new_empty((0,)))
    else:
        grads = tuple(student_hidden.new_empty((0,)) for _ in range(3))
    return (loss, loss_rows, soft_rows, hard_rows, *grads)
