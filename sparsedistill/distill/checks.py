"""Argument checks of the distillation loss, written once: `check_loss_args` for the public
function and module, `check_distill_loss_args` / `check_scale_rows_args` for the ops, used by the
reference kernels and mirrored, message for message, by csrc/distill/checks.h for the native
kernels (tests/distill/test_distill_checks.py runs every bad call through each backend)."""
from __future__ import annotations

import math
import numbers
import re

import torch

from .._common import FLOAT_DTYPE_NAMES, FLOAT_DTYPES, cpp_float, op_check, shape_str

# Divergence codes of the distill_loss op. csrc/distill/params.h defines the same enum;
# tests/distill/test_distill_checks.py reads that header and checks that the numbers agree.
FORWARD_KL, REVERSE_KL, JSD = 0, 1, 2
DIVERGENCES = {"kl": FORWARD_KL, "forward_kl": FORWARD_KL, "reverse_kl": REVERSE_KL, "jsd": JSD}
REDUCTIONS = ("mean", "sum", "none")
LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


def divergence_codes_in_header(text: str) -> dict:
    """{"kForwardKL": 0, ...} as the C++ enum in csrc/distill/params.h spells them."""
    body = re.search(r"enum Divergence[^{]*\{([^}]*)\}", text).group(1)
    return {name: int(value) for name, value in re.findall(r"(k\w+)\s*=\s*(\d+)", body)}


# The temperatures the float32 kernels compute with exactly enough range: 1/T and T^2 must stay
# finite and normal in float32 (T=1e-40 or 1e20 would turn the loss into NaN).
T_RANGE = (1e-6, 1e6)


def as_real(name: str, x, low: float, high: float, closed_low: bool = True) -> float:
    """x as a Python float if it is a real number (int, float, numpy scalar, or a 0-d / one-
    element tensor that needs no gradient) in [low, high]; else a ValueError naming it."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.requires_grad and not x.is_complex():
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number (int, float, numpy scalar or one-element "
                        f"tensor), got {type(x).__name__}")
    value = float(x)
    if not (math.isfinite(value) and (low <= value if closed_low else low < value) and value <= high):
        bracket = "[" if closed_low else "("
        raise ValueError(f"{name} must be a number in {bracket}{low:g}, {high:g}], got {x!r}")
    return value


def check_loss_args(student, teacher, labels, T, alpha, beta, reduction, divergence):
    """The arguments of distillation_loss / DistillationLoss, before any reshaping. Returns
    (T, alpha, beta) as floats."""
    for name, x in (("student_logits", student), ("teacher_logits", teacher)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be floating point ({FLOAT_DTYPE_NAMES}), got {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"{name} must have shape (N, V) or (B, S, V), got {tuple(x.shape)}")
    if student.shape != teacher.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits "
                         f"{tuple(student.shape)}, got {tuple(teacher.shape)}")
    if student.shape[-1] == 0:
        raise ValueError("student_logits must have at least one class (last dimension is 0)")
    if teacher.device != student.device:
        raise ValueError(f"teacher_logits must be on the device of student_logits "
                         f"({student.device}), got {teacher.device}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"true_labels must be a torch.Tensor or None, got {type(labels).__name__}")
        if labels.dtype not in LABEL_DTYPES:
            raise TypeError(f"true_labels must be an integer tensor of class indices, got {labels.dtype}")
        if labels.shape != student.shape[:-1]:
            raise ValueError(f"true_labels must have shape {tuple(student.shape[:-1])} "
                             f"(the logits' shape without the class dimension), got {tuple(labels.shape)}")
        if labels.device != student.device:
            raise ValueError(f"true_labels must be on the device of student_logits "
                             f"({student.device}), got {labels.device}")
    T = as_real("T (temperature)", T, *T_RANGE)
    alpha = as_real("alpha", alpha, 0.0, 1.0)
    beta = as_real("beta", beta, 0.0, 1.0)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {tuple(DIVERGENCES)}, got {divergence!r}")
    return T, alpha, beta


def check_distill_loss_args(student, teacher, labels, grad_scale, T, alpha, beta, divergence) -> None:
    """The op-level contract of sparsedistill::distill_loss (csrc/distill/checks.h)."""
    op_check(student.dim() == 2, ValueError, "student must be 2-D (N, V), got shape ", shape_str(student))
    op_check(teacher.shape == student.shape, ValueError, "teacher must have the shape of student ",
             shape_str(student), ", got ", shape_str(teacher))
    op_check(student.dtype in FLOAT_DTYPES, TypeError,
             f"student must be floating point ({FLOAT_DTYPE_NAMES}), got ", student.dtype)
    op_check(teacher.dtype == student.dtype, TypeError, "teacher must have the dtype of student (",
             student.dtype, "), got ", teacher.dtype)
    op_check(teacher.device == student.device, ValueError, "teacher must be on the device of student (",
             student.device, "), got ", teacher.device)
    op_check(student.shape[1] > 0 or student.shape[0] == 0, ValueError,
             "student must have at least one class (V > 0)")
    if labels is not None:
        op_check(labels.dtype == torch.int64, TypeError, "labels must be int64, got ", labels.dtype)
        op_check(labels.dim() == 1 and labels.shape[0] == student.shape[0], ValueError,
                 "labels must have shape (", student.shape[0], "), got ", shape_str(labels))
        op_check(labels.device == student.device, ValueError, "labels must be on the device of student (",
                 student.device, "), got ", labels.device)
    op_check(grad_scale.dim() == 0 and grad_scale.dtype == torch.float32
             and grad_scale.device == student.device, ValueError,
             "grad_scale must be a 0-dim float32 tensor on the device of student")
    op_check(T > 0 and math.isfinite(T), ValueError, "T must be finite and > 0, got ", cpp_float(T))
    op_check(0 <= alpha <= 1, ValueError, "alpha must lie in [0, 1], got ", cpp_float(alpha))
    op_check(0 <= beta <= 1, ValueError, "beta must lie in [0, 1], got ", cpp_float(beta))
    op_check(divergence in (FORWARD_KL, REVERSE_KL, JSD), ValueError,
             "divergence must be 0 (kl), 1 (reverse_kl) or 2 (jsd), got ", divergence)


def check_label_range(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Raise if a label that is not ignore_index lies outside [0, vocab), with the message of
    the C++ CPU kernel. One small reduction over the N labels (a host sync on CUDA); skipped
    while tracing (torch.compile, CUDA graph capture), where the native kernels' backstop
    applies instead (C++: the same error; CUDA: a NaN row, since a kernel cannot raise)."""
    if torch.compiler.is_compiling() or labels.numel() == 0:
        return
    if labels.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"sparsedistill: true_labels: row {row} holds {int(labels[row])}, which must "
                         f"lie in [0, {vocab}) or equal ignore_index={ignore_index}")


def check_scale_rows_args(grad, row_scale) -> None:
    """The op-level contract of sparsedistill::scale_rows_ (csrc/distill/checks.h)."""
    op_check(grad.dim() == 2 and grad.is_contiguous(), ValueError, "grad must be a contiguous (N, V) tensor")
    op_check(row_scale.dim() == 1 and row_scale.shape[0] == grad.shape[0]
             and row_scale.dtype == torch.float32 and row_scale.device == grad.device, ValueError,
             "row_scale must be float32 of shape (", grad.shape[0], ") on the device of grad")


def check_fused_linear_distill_args(student_hidden, student_weight, student_bias, teacher_hidden,
                                    teacher_weight, teacher_bias, labels, row_weight, T, alpha,
                                    beta, divergence, logit_scale, softcap, pad_vocab,
                                    chunk_rows) -> None:
    """The op-level contract of sparsedistill::fused_linear_distill
    (csrc/distill/checks.h: check_fused_linear_args, the same messages)."""
    hs, ws, bs, ht, wt, bt = (student_hidden, student_weight, student_bias, teacher_hidden,
                              teacher_weight, teacher_bias)
    op_check(hs.dim() == 2, ValueError, "student_hidden must be 2-D (N, H), got shape ", shape_str(hs))
    op_check(ht.dim() == 2 and ht.shape[0] == hs.shape[0], ValueError,
             "teacher_hidden must be 2-D with the rows of student_hidden (", hs.shape[0],
             ", H), got shape ", shape_str(ht))
    for name, h, w, b, hname in (("student", hs, ws, bs, "student_hidden"),
                                 ("teacher", ht, wt, bt, "teacher_hidden")):
        op_check(h.dtype in FLOAT_DTYPES, TypeError,
                 f"{hname} must be floating point ({FLOAT_DTYPE_NAMES}), got ", h.dtype)
        op_check(w.dim() == 2 and w.shape[1] == h.shape[1], ValueError,
                 f"{name}_weight must have shape (V, {h.shape[1]}) to match the hidden size of "
                 f"{hname}, got ", shape_str(w))
        op_check(w.shape[0] > 0, ValueError, f"{name}_weight must have at least one class (V > 0)")
        op_check(w.dtype == h.dtype, TypeError, f"{name}_weight must have the dtype of {hname} (",
                 h.dtype, "), got ", w.dtype)
        op_check(w.device == hs.device, ValueError, f"{name}_weight must be on the device of "
                 "student_hidden (", hs.device, "), got ", w.device)
        op_check(h.device == hs.device, ValueError, f"{hname} must be on the device of "
                 "student_hidden (", hs.device, "), got ", h.device)
        if b is not None:
            op_check(b.dim() == 1 and b.shape[0] == w.shape[0], ValueError,
                     f"{name}_bias must have shape ({w.shape[0]}), got ", shape_str(b))
            op_check(b.dtype == h.dtype, TypeError, f"{name}_bias must have the dtype of {hname} (",
                     h.dtype, "), got ", b.dtype)
            op_check(b.device == hs.device, ValueError, f"{name}_bias must be on the device of "
                     "student_hidden (", hs.device, "), got ", b.device)
    op_check(pad_vocab or wt.shape[0] == ws.shape[0], ValueError,
             "student_weight has ", ws.shape[0], " classes but teacher_weight has ", wt.shape[0],
             " (vocabulary sizes differ; pad_vocab pads the smaller one with -inf logits)")
    if labels is not None:
        op_check(labels.dtype == torch.int64, TypeError, "labels must be int64, got ", labels.dtype)
        op_check(labels.dim() == 1 and labels.shape[0] == hs.shape[0], ValueError,
                 "labels must have shape (", hs.shape[0], "), got ", shape_str(labels))
        op_check(labels.device == hs.device, ValueError, "labels must be on the device of "
                 "student_hidden (", hs.device, "), got ", labels.device)
    op_check(row_weight.dtype == torch.float32 and row_weight.device == hs.device
             and (row_weight.dim() == 0 or (row_weight.dim() == 1 and row_weight.shape[0] == hs.shape[0])),
             ValueError, "row_weight must be a float32 tensor of shape () or (", hs.shape[0],
             ") on the device of student_hidden")
    op_check(T > 0 and math.isfinite(T), ValueError, "T must be finite and > 0, got ", cpp_float(T))
    op_check(0 <= alpha <= 1, ValueError, "alpha must lie in [0, 1], got ", cpp_float(alpha))
    op_check(0 <= beta <= 1, ValueError, "beta must lie in [0, 1], got ", cpp_float(beta))
    op_check(divergence in (FORWARD_KL, REVERSE_KL, JSD), ValueError,
             "divergence must be 0 (kl), 1 (reverse_kl) or 2 (jsd), got ", divergence)
    op_check(logit_scale > 0 and math.isfinite(logit_scale), ValueError,
             "logit_scale must be finite and > 0, got ", cpp_float(logit_scale))
    op_check(softcap >= 0 and math.isfinite(softcap), ValueError,
             "softcap must be finite and >= 0 (0: none), got ", cpp_float(softcap))
    op_check(chunk_rows >= 1, ValueError, "chunk_rows must be >= 1, got ", chunk_rows)
