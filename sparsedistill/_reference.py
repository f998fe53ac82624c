"""Pure-PyTorch kernels: registered as the "default" (CompositeExplicitAutograd) implementation of
every op, so every op runs on every device without the native build, and used as the test oracle.

They follow the exact contract of the native kernels (same outputs, same per-row gradient), written
for clarity rather than speed: every intermediate is a full (N, V) tensor.
"""
from __future__ import annotations

import math

import torch

# Divergence codes shared with csrc/distill_params.h.
FORWARD_KL, REVERSE_KL, JSD = 0, 1, 2


def _zero_where(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # 0 * log(0)-style terms are defined as 0 (as F.kl_div's xlogy does); NaN is kept.
    return torch.where(mask, torch.zeros((), dtype=x.dtype, device=x.device), x)


def check_label_range(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Raise if a label that is not ignore_index lies outside [0, vocab).

    One small reduction over the N labels and a host sync; skipped while tracing
    (torch.compile, CUDA graph capture), where the native kernels' backstop applies instead
    (C++: an error; CUDA: a NaN row, since a kernel cannot raise without killing the context).
    """
    if torch.compiler.is_compiling() or labels.numel() == 0:
        return
    if labels.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(f"true_labels must lie in [0, {vocab}) or equal ignore_index="
                         f"{ignore_index}; got {labels[bad][0].item()}")


def _check_op_args(student, teacher, labels, T, alpha, beta, divergence) -> None:
    # The op-level contract, as csrc/common.h checks it for the native kernels.
    if student.dim() != 2:
        raise ValueError(f"sparsedistill: student must be 2-D (N, V), got {tuple(student.shape)}")
    if teacher.shape != student.shape or teacher.dtype != student.dtype:
        raise ValueError(f"sparsedistill: teacher must match student's shape and dtype "
                         f"{tuple(student.shape)} {student.dtype}, got {tuple(teacher.shape)} {teacher.dtype}")
    if labels is not None and (labels.dtype != torch.int64 or labels.shape != student.shape[:1]):
        raise ValueError(f"sparsedistill: labels must be int64 of shape ({student.shape[0]},), "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f"sparsedistill: T must be finite and > 0, got {T}")
    if not (0 <= alpha <= 1 and 0 <= beta <= 1):
        raise ValueError(f"sparsedistill: alpha and beta must lie in [0, 1], got {alpha}, {beta}")


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
    compute_grad);
    ignored rows have zero loss and zero gradient.
    """
    _check_op_args(student, teacher, labels, T, alpha, beta, divergence)
    rows, vocab = student.shape
    s = student.to(acc_dtype)
    t = teacher.to(acc_dtype)
    log_q = torch.log_softmax(s / T, dim=-1)
    log_p = torch.log_softmax(t / T, dim=-1)
    q, p = log_q.exp(), log_p.exp()

    if divergence == FORWARD_KL:
        d = _zero_where(p == 0, p * (log_p - log_q)).sum(-1)
        gz = q - p
    elif divergence == REVERSE_KL:
        d = _zero_where(q == 0, q * (log_q - log_p)).sum(-1)
        gz = _zero_where(q == 0, q * (log_q - log_p - d[:, None]))
    elif divergence == JSD:
        log_m = torch.log(beta * p + (1 - beta) * q)
        k = _zero_where(q == 0, q * (log_q - log_m)).sum(-1)
        d = beta * _zero_where(p == 0, p * (log_p - log_m)).sum(-1) + (1 - beta) * k
        gz = _zero_where(q == 0, (1 - beta) * q * (log_q - log_m - k[:, None]))
    else:
        raise ValueError(f"divergence code must be 0, 1 or 2, got {divergence}")

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
    if grad.dim() != 2 or row_scale.shape != grad.shape[:1]:
        raise ValueError(f"sparsedistill: scale_rows_ needs grad (N, V) and row_scale (N,), got "
                         f"{tuple(grad.shape)} and {tuple(row_scale.shape)}")
    grad.mul_(row_scale.unsqueeze(-1))
