"""Fused knowledge-distillation loss: a one-line replacement for the textbook composite

    alpha * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T**2
        + (1 - alpha) * F.cross_entropy(s, y)

computed per row in two passes over the logits (three for reverse KL and JSD), with the gradient
written during the forward and only scaled in backward.
"""
from __future__ import annotations

import torch
from torch import nn

from .._library import native_serves
from .checks import DIVERGENCES, FORWARD_KL, JSD, REVERSE_KL, check_label_range, check_loss_args
from .reduction import check_process_group, row_weight


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    true_labels: torch.Tensor | None = None,
    T: float = 4.0,
    alpha: float = 0.5,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    divergence: str = "kl",
    beta: float = 0.5,
    return_parts: bool = False,
    process_group=None,
):
    """Hinton distillation loss, fused: ``alpha * T^2 * D(teacher || student) + (1-alpha) * CE``.

    Args:
        student_logits: raw logits (N, V) or (B, S, V): any shape whose last dim is the classes.
        teacher_logits: same shape; never receives a gradient. Cast to the student's dtype if
            it differs (one copy).
        true_labels: class indices of shape ``student_logits.shape[:-1]``, or None for the soft
            term alone (then ``alpha`` is not applied: the loss is ``T^2 * D``).
        T: temperature in [1e-6, 1e6] (the float32 range of 1/T and T^2). alpha: weight of the
            soft term in [0, 1]. Both (and beta) may be ints, floats, numpy scalars or
            one-element tensors.
        ignore_index: rows with this label are left out of both terms.
        reduction: "mean" (over the rows not ignored, for both terms; note that stock
            ``kl_div(reduction="batchmean")`` divides a (B, S, V) sum by B, not by B*S),
            "sum", or "none" (per-row loss of shape ``student_logits.shape[:-1]``).
        divergence: "kl" (forward KL(p_t || p_s), Hinton), "reverse_kl" (KL(p_s || p_t)) or
            "jsd": generalised Jensen-Shannon ``beta*KL(p_t||m) + (1-beta)*KL(p_s||m)`` with
            ``m = beta*p_t + (1-beta)*p_s``; beta=0 gives forward KL and beta=1 reverse KL
            (the convention of GKD / TRL). The soft term carries the T^2 factor in every case.
        return_parts: also return the soft (``T^2 * D``) and hard (CE) parts, reduced the same
            way and detached, for logging. They come from the same pass.
        process_group: with reduction="mean" under DDP / FSDP, a torch.distributed group: the
            mean is over the non-ignored rows of all its ranks (ranks hold different numbers
            of ignored tokens); each rank's loss is scaled so that DDP's gradient averaging
            gives the single-process gradient of the concatenated batch. One all-reduce of one
            number per call. See distill/reduction.py.

    Returns:
        the loss in the student's dtype, or ``(loss, soft, hard)`` with ``return_parts``.
    """
    T, alpha, beta = check_loss_args(student_logits, teacher_logits, true_labels, T, alpha, beta,
                                     reduction, divergence)
    check_process_group(process_group, reduction)
    code = DIVERGENCES[divergence]
    if code == JSD and beta in (0.0, 1.0):  # the JSD formula degenerates to 0 at the ends
        code = FORWARD_KL if beta == 0.0 else REVERSE_KL

    vocab = student_logits.shape[-1]
    lead_shape = student_logits.shape[:-1]
    student = student_logits.reshape(-1, vocab).contiguous()
    teacher = teacher_logits.detach().reshape(-1, vocab).to(student.dtype).contiguous()
    labels = None
    if true_labels is not None:
        labels = true_labels.reshape(-1).to(torch.int64)
        # Checked once per call: the reference and the C++ CPU kernel check inside the op; the
        # CUDA kernel cannot raise (it writes a NaN row), so its range is checked here.
        if labels.is_cuda and not torch.compiler.is_compiling() and native_serves("distill_loss", labels.device):
            check_label_range(labels, vocab, ignore_index)

    compute_grad = torch.is_grad_enabled() and student.requires_grad
    # The weight of every row in the reduction: 1/count for "mean" (count of the rows that
    # count, all of them without labels; at least 1, so an empty or all-ignored batch gives 0,
    # not NaN), else 1. It stays a device tensor (no host sync) and is folded into the gradient.
    weight = row_weight(labels, ignore_index, student.shape[0], reduction, student.device, process_group)
    loss_rows, soft_rows, hard_rows, _ = torch.ops.sparsedistill.distill_loss(
        student, teacher, labels, weight, float(T), float(alpha), float(beta), code,
        int(ignore_index), compute_grad,
    )

    def reduce(rows: torch.Tensor) -> torch.Tensor:
        if reduction == "none":
            return rows.reshape(lead_shape).to(student.dtype)
        # (rows * w).sum(): backward hands each row exactly w, the weight the op folded in.
        return (rows * weight).sum().to(student.dtype)

    loss = reduce(loss_rows)
    if return_parts:
        return loss, reduce(soft_rows).detach(), reduce(hard_rows).detach()
    return loss


class DistillationLoss(nn.Module):
    """Module form of :func:`distillation_loss`; ``forward(student_logits, teacher_logits, labels=None)``."""

    def __init__(self, T: float = 4.0, alpha: float = 0.5, *, ignore_index: int = -100,
                 reduction: str = "mean", divergence: str = "kl", beta: float = 0.5,
                 return_parts: bool = False, process_group=None):
        super().__init__()
        # Validate once here so a bad configuration fails at construction, not mid-training.
        probe = torch.zeros(1, 1)
        T, alpha, beta = check_loss_args(probe, probe, None, T, alpha, beta, reduction, divergence)
        self.T, self.alpha, self.beta = T, alpha, beta
        self.ignore_index, self.reduction = ignore_index, reduction
        self.divergence, self.return_parts = divergence, return_parts
        check_process_group(process_group, reduction)
        self.process_group = process_group  # DDP / FSDP: the token mean over every rank

    def forward(self, student_logits, teacher_logits, labels=None):
        return distillation_loss(
            student_logits, teacher_logits, labels, self.T, self.alpha,
            ignore_index=self.ignore_index, reduction=self.reduction,
            divergence=self.divergence, beta=self.beta, return_parts=self.return_parts,
            process_group=self.process_group,
        )

    def extra_repr(self) -> str:
        return (f"T={self.T}, alpha={self.alpha}, divergence={self.divergence!r}, "
                f"reduction={self.reduction!r}, ignore_index={self.ignore_index}")
