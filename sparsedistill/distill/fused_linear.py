"""Fused linear + distillation loss: the loss of ``distillation_loss`` computed from the hidden
states and the output projections of both models, never holding more than one chunk of rows of
logits (for either model).

    loss = fused_linear_distillation_loss(h_s, W_s, h_t, W_t, y)
    # == distillation_loss(h_s @ W_s.T, h_t @ W_t.T, y), to rounding

The op (fused_linear_ops.py) walks the rows in chunks: both models' logits of the chunk in
float32 (a GEMM each), the fused row kernel of distill_loss with the gradient in the same pass,
then grad_hidden[chunk] = G @ W_s and grad_W_s += G.T @ h_s[chunk] into float32 accumulators.
Backward only scales those gradients by grad_output.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from .._common import FLOAT_DTYPE_NAMES, FLOAT_DTYPES
from .._library import native_serves
from .checks import (DIVERGENCES, FORWARD_KL, JSD, LABEL_DTYPES, REDUCTIONS, REVERSE_KL,
                     T_RANGE, as_real, check_label_range)
from . import fused_linear_ops  # noqa: F401  (defines the op)
from .reduction import check_process_group, row_weight

VOCAB_MODES = ("exact", "pad")
# chunk_rows=None: the largest chunk whose float32 logits for both models fit the budget
# (2 * chunk_rows * V * 4 bytes): 96 MiB, or an eighth of both weights' float32 bytes when that is
# more (at most 512 MiB), since every chunk reads both weights and the weight gradient again.
# The chunk's float32 gradient adds half of it again.
CHUNK_BUDGET_BYTES = 96 << 20
CHUNK_BUDGET_MAX_BYTES = 512 << 20


def default_chunk_rows(rows: int, vocab: int, budget: int = CHUNK_BUDGET_BYTES, weight_bytes: int = 0) -> int:
    """Rows per chunk for chunk_rows=None: max(1, B // (2 models * V * 4 bytes)), at most N, with
    B = max(budget, min(CHUNK_BUDGET_MAX_BYTES, weight_bytes // 8)); weight_bytes: both weights'
    elements times 4."""
    budget = max(budget, min(CHUNK_BUDGET_MAX_BYTES, weight_bytes // 8))
    return max(1, min(max(rows, 1), budget // (2 * 4 * max(vocab, 1))))


def _check_tensor(name, x, dims):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be floating point ({FLOAT_DTYPE_NAMES}), got {x.dtype}")
    if x.dim() not in dims:
        want = {(2,): "(V, H)", (1,): "(V,)"}.get(tuple(dims), "(N, H) or (B, S, H)")
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


def check_fused_args(hs, ws, ht, wt, labels, bs, bt, T, alpha, beta, reduction, divergence,
                     logit_scale, softcap, vocab, chunk_rows):
    """The public arguments, before any reshaping; returns (T, alpha, beta, logit_scale, softcap)."""
    _check_tensor("student_hidden", hs, range(2, 64))
    _check_tensor("teacher_hidden", ht, range(2, 64))
    _check_tensor("student_weight", ws, (2,))
    _check_tensor("teacher_weight", wt, (2,))
    if ht.shape[:-1] != hs.shape[:-1]:
        raise ValueError(f"teacher_hidden must have the leading shape of student_hidden "
                         f"{tuple(hs.shape[:-1])} (one row per token), got {tuple(ht.shape[:-1])}")
    for who, h, w, b in (("student", hs, ws, bs), ("teacher", ht, wt, bt)):
        if w.shape[1] != h.shape[-1]:
            raise ValueError(f"{who}_weight must have shape (V, {h.shape[-1]}): {who}_hidden has "
                             f"hidden size {h.shape[-1]}, but {who}_weight has {w.shape[1]} "
                             f"columns (shape {tuple(w.shape)})")
        if w.shape[0] == 0:
            raise ValueError(f"{who}_weight must have at least one class (row), got {tuple(w.shape)}")
        if w.dtype != h.dtype:
            raise TypeError(f"{who}_weight must have the dtype of {who}_hidden ({h.dtype}), got {w.dtype}")
        if b is not None:
            _check_tensor(f"{who}_bias", b, (1,))
            if b.shape[0] != w.shape[0]:
                raise ValueError(f"{who}_bias must have shape ({w.shape[0]},) (one per row of "
                                 f"{who}_weight), got {tuple(b.shape)}")
            if b.dtype != h.dtype:
                raise TypeError(f"{who}_bias must have the dtype of {who}_hidden ({h.dtype}), got {b.dtype}")
    for name, x in (("teacher_hidden", ht), ("student_weight", ws), ("teacher_weight", wt),
                    ("student_bias", bs), ("teacher_bias", bt)):
        if x is not None and x.device != hs.device:
            raise ValueError(f"{name} must be on the device of student_hidden ({hs.device}), got {x.device}")
    if vocab not in VOCAB_MODES:
        raise ValueError(f"vocab must be one of {VOCAB_MODES}, got {vocab!r}")
    if vocab == "exact" and ws.shape[0] != wt.shape[0]:
        raise ValueError(f"vocabulary sizes differ: student_weight has {ws.shape[0]} classes (rows), "
                         f"teacher_weight has {wt.shape[0]}; pass vocab='pad' to give the classes "
                         "a model lacks probability zero")
    if labels is not None:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"true_labels must be a torch.Tensor or None, got {type(labels).__name__}")
        if labels.dtype not in LABEL_DTYPES:
            raise TypeError(f"true_labels must be an integer tensor of class indices, got {labels.dtype}")
        if labels.shape != hs.shape[:-1]:
            raise ValueError(f"true_labels must have shape {tuple(hs.shape[:-1])} (student_hidden's "
                             f"shape without the hidden dimension), got {tuple(labels.shape)}")
        if labels.device != hs.device:
            raise ValueError(f"true_labels must be on the device of student_hidden ({hs.device}), "
                             f"got {labels.device}")
    T = as_real("T (temperature)", T, *T_RANGE)
    alpha = as_real("alpha", alpha, 0.0, 1.0)
    beta = as_real("beta", beta, 0.0, 1.0)
    logit_scale = as_real("logit_scale", logit_scale, 0.0, 1e30, closed_low=False)
    softcap = 0.0 if softcap is None else as_real("softcap", softcap, 0.0, 1e30, closed_low=False)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {tuple(DIVERGENCES)}, got {divergence!r}")
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral)
                                   or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be None or an int >= 1, got {chunk_rows!r}")
    return T, alpha, beta, logit_scale, softcap


def fused_linear_distillation_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    true_labels: torch.Tensor | None = None,
    T: float = 4.0,
    alpha: float = 0.5,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    divergence: str = "kl",
    beta: float = 0.5,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    vocab: str = "exact",
    chunk_rows: int | None = None,
    return_parts: bool = False,
    process_group=None,
):
    """``distillation_loss(logits(h_s, W_s), logits(h_t, W_t), y, ...)`` without the logits.

    logits(h, W) = softcap(logit_scale * (h @ W.T + b)), softcap(z) = c * tanh(z / c) (none by
    default), for both models. Hidden states (N, H) or (B, S, H), weights (V, H) as
    ``nn.Linear`` / ``lm_head.weight`` store them; student and teacher hidden sizes may differ.
    vocab="exact" requires the same number of classes; "pad" gives the classes one model lacks
    -inf logits (probability zero). chunk_rows: rows of logits per chunk (None:
    :func:`default_chunk_rows`: a 96 MiB budget for both models' float32 logits, more for
    large weights); the result does
    not depend on it beyond rounding. Gradients reach student_hidden, student_weight and
    student_bias, never the teacher. The other arguments are those of distillation_loss
    (process_group included: the token mean over every rank under DDP / FSDP).
    """
    T, alpha, beta, logit_scale, softcap = check_fused_args(
        student_hidden, student_weight, teacher_hidden, teacher_weight, true_labels, student_bias,
        teacher_bias, T, alpha, beta, reduction, divergence, logit_scale, softcap, vocab, chunk_rows)
    check_process_group(process_group, reduction)
    code = DIVERGENCES[divergence]
    if code == JSD and beta in (0.0, 1.0):  # as distillation_loss: the JSD formula degenerates
        code = FORWARD_KL if beta == 0.0 else REVERSE_KL
    lead_shape = student_hidden.shape[:-1]
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    wt = teacher_weight.detach()
    bt = teacher_bias.detach() if teacher_bias is not None else None
    rows, n_classes = hs.shape[0], max(student_weight.shape[0], teacher_weight.shape[0])
    labels = None
    if true_labels is not None:
        labels = true_labels.reshape(-1).to(torch.int64)
        if labels.is_cuda and not torch.compiler.is_compiling() and native_serves("fused_linear_distill", labels.device):
            check_label_range(labels, student_weight.shape[0], ignore_index)
    chunk = int(chunk_rows) if chunk_rows is not None else default_chunk_rows(
        rows, n_classes, weight_bytes=4 * (student_weight.numel() + teacher_weight.numel()))
    wants_grad = any(x is not None and x.requires_grad for x in (hs, student_weight, student_bias))
    # reduction="none": the per-row grad_output is known only in backward, which recomputes.
    compute_grad = torch.is_grad_enabled() and wants_grad and reduction != "none"
    weight = row_weight(labels, ignore_index, rows, reduction, hs.device, process_group)
    loss, loss_rows, soft_rows, hard_rows, *_ = torch.ops.sparsedistill.fused_linear_distill(
        hs, student_weight, student_bias, ht, wt, bt, labels, weight, float(T), float(alpha),
        float(beta), code, int(ignore_index), float(logit_scale), float(softcap), vocab == "pad",
        chunk, compute_grad)
    dtype = student_hidden.dtype
    if reduction == "none":
        out = loss_rows.reshape(lead_shape).to(dtype)
        if return_parts:
            return out, soft_rows.reshape(lead_shape).to(dtype), hard_rows.reshape(lead_shape).to(dtype)
        return out
    out = loss.to(dtype)
    if return_parts:
        return (out, (soft_rows * weight).sum().to(dtype).detach(),
                (hard_rows * weight).sum().to(dtype).detach())
    return out


class FusedLinearDistillationLoss(nn.Module):
    """Module form of :func:`fused_linear_distillation_loss`;
    ``forward(student_hidden, student_weight, teacher_hidden, teacher_weight, labels=None,
    student_bias=None, teacher_bias=None)``."""

    def __init__(self, T: float = 4.0, alpha: float = 0.5, *, ignore_index: int = -100,
                 reduction: str = "mean", divergence: str = "kl", beta: float = 0.5,
                 logit_scale: float = 1.0, softcap: float | None = None, vocab: str = "exact",
                 chunk_rows: int | None = None, return_parts: bool = False, process_group=None):
        super().__init__()
        probe_h, probe_w = torch.zeros(1, 1), torch.zeros(1, 1)
        T, alpha, beta, logit_scale, cap = check_fused_args(
            probe_h, probe_w, probe_h, probe_w, None, None, None, T, alpha, beta, reduction,
            divergence, logit_scale, softcap, vocab, chunk_rows)
        self.T, self.alpha, self.beta, self.logit_scale = T, alpha, beta, logit_scale
        self.softcap = softcap if softcap is None else cap
        self.ignore_index, self.reduction, self.divergence = ignore_index, reduction, divergence
        self.vocab, self.chunk_rows, self.return_parts = vocab, chunk_rows, return_parts
        check_process_group(process_group, reduction)
        self.process_group = process_group

    def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, labels=None,
                student_bias=None, teacher_bias=None):
        return fused_linear_distillation_loss(
            student_hidden, student_weight, teacher_hidden, teacher_weight, labels, self.T,
            self.alpha, student_bias=student_bias, teacher_bias=teacher_bias,
            ignore_index=self.ignore_index, reduction=self.reduction, divergence=self.divergence,
            beta=self.beta, logit_scale=self.logit_scale, softcap=self.softcap, vocab=self.vocab,
            chunk_rows=self.chunk_rows, return_parts=self.return_parts, process_group=self.process_group)

    def extra_repr(self) -> str:
        return (f"T={self.T}, alpha={self.alpha}, divergence={self.divergence!r}, "
                f"reduction={self.reduction!r}, vocab={self.vocab!r}, softcap={self.softcap}, "
                f"logit_scale={self.logit_scale}, chunk_rows={self.chunk_rows}")
