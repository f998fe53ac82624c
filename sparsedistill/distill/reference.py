"""Pure-PyTorch kernels of the distillation ops: registered as their "default"
(CompositeExplicitAutograd) implementation, so every op runs on every device without the native build, and used as the test oracle.

They follow the exact contract of the native kernels (same outputs, same per-row gradient), written
for clarity rather than speed: every intermediate is a full (N, V) tensor.
"""
from __future__ import annotations

import torch

from .checks import (FORWARD_KL, REVERSE_KL, check_distill_loss_args, check_label_range,
                     check_scale_rows_args)


def _zero_where(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # 0 * log(0)-style terms are defined as 0 (as F.kl_div's xlogy does); NaN is kept.
    return torch.where(mask, torch.zeros((), dtype=x.dtype, device=x.device), x)


def _shift_by_max(x: torch.Tensor) -> torch.Tensor:
    """x minus its row max where that max is finite (NaN and infinite rows stay as they are,
    for the softmax to report them as NaN)."""
    m = x.amax(-1, keepdim=True) if x.shape[-1] else x.new_zeros(x.shape[:-1] + (1,))
    return x - torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    grad_scale: torch.Tensor,
    T: float,
    alpha: float,
    beta: float,
    divergence: int,
    ignore_index: int,
    compute_grad: bool,
    acc_dtype: torch.dtype = torch.float32,
):
    """Reference of ``sparsedistill::distill_loss``. Returns per-row (loss, soft, hard, grad).

    soft = T^2 * D(p_teacher || q_student) (D by `divergence`), hard = cross-entropy of the raw
    student logits (0 without labels), loss = a*soft + (1-a)*hard with a = alpha (1 without
    labels). grad is grad_scale * d(loss_row)/d(student) in the student's dtype (empty when not
    compute_grad); ignored rows have zero loss and zero gradient.
    """
    check_distill_loss_args(student, teacher, labels, grad_scale, T, alpha, beta, divergence)
    rows, vocab = student.shape
    # Relative to the row maxima (softmax is shift-invariant): a large common offset of the
    # logits would otherwise be rounded into s / T and into lse(s) - s_y.
    s = _shift_by_max(student.to(acc_dtype))
    t = _shift_by_max(teacher.to(acc_dtype))
    log_q = torch.log_softmax(s / T, dim=-1)
    log_p = torch.log_softmax(t / T, dim=-1)
    q, p = log_q.exp(), log_p.exp()

    if divergence == FORWARD_KL:
        d = _zero_where(p == 0, p * (log_p - log_q)).sum(-1)
        gz = q - p
    elif divergence == REVERSE_KL:
        d = _zero_where(q == 0, q * (log_q - log_p)).sum(-1)
        gz = _zero_where(q == 0, q * (log_q - log_p - d[:, None]))
    else:  # JSD (the checks admit no other code)
        log_m = torch.log(beta * p + (1 - beta) * q)
        k = _zero_where(q == 0, q * (log_q - log_m)).sum(-1)
        d = beta * _zero_where(p == 0, p * (log_p - log_m)).sum(-1) + (1 - beta) * k
        gz = _zero_where(q == 0, (1 - beta) * q * (log_q - log_m - k[:, None]))

    soft = d * (T * T)
    grad = gz * T  # d(T^2 * D)/ds = T^2 * (1/T) * dD/dz
    a = alpha if labels is not None else 1.0
    if labels is not None:
        check_label_range(labels, vocab, ignore_index)
        valid = labels != ignore_index
        safe = torch.where(valid, labels, 0)
        lse = torch.logsumexp(s, dim=-1)
        hard = lse - s.gather(1, safe[:, None]).squeeze(1)
        grad_hard = torch.softmax(s, dim=-1)
        grad_hard[torch.arange(rows, device=s.device), safe] -= 1
        loss = a * soft + (1 - a) * hard
        grad = a * grad + (1 - a) * grad_hard
        zero = torch.zeros((), dtype=acc_dtype, device=s.device)
        soft, hard, loss = (torch.where(valid, x, zero) for x in (soft, hard, loss))
        grad = torch.where(valid[:, None], grad, zero)
    else:
        hard = torch.zeros_like(soft)
        loss = soft.clone()  # a distinct tensor: soft is a non-differentiable output, loss is not
    grad = (grad * grad_scale.to(acc_dtype)).to(student.dtype) if compute_grad else student.new_empty((0,))
    return loss.float(), soft.float(), hard.float(), grad


def scale_rows_(grad: torch.Tensor, row_scale: torch.Tensor) -> None:
    """Reference of ``sparsedistill::scale_rows_``: grad[r, :] *= row_scale[r], in place."""
    check_scale_rows_args(grad, row_scale)
    grad.mul_(row_scale.unsqueeze(-1))
