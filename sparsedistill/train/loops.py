"""Training loops for progressive compression: distillation with the fused loss (fit_distill), the
same loop on hard labels (train_hard_labels), both optionally pruning with a MaskedPruner
(pruner.py), and a progress bar (tqdm when installed).

    pruner = MaskedPruner(student, CubicSparsitySchedule(0.0, 0.9, 0, 1000, frequency=10))
    fit_distill(teacher, student, loader, optimizer, T=4, alpha=0.7, epochs=20, pruner=pruner)
    pruner.remove()    # drops the gradient hooks; the zeros stay

A loader is any re-iterable of (inputs, labels) batches, e.g. a torch DataLoader.
"""
from __future__ import annotations

import numbers
import sys
import time
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..distill import DistillationLoss
from .pruner import MaskedPruner

__all__ = ["fit_distill", "train_hard_labels", "progress_bar"]


# ----------------------------------------------------------------------------- progress
class _Bar:
    """A minimal stand-in for tqdm: one line on stderr, rewritten at most 10 times a second."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.postfix = total, desc, 0, ""
        self.start = self.shown = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.shown > 0.1 or self.n >= self.total:
            self.shown = now
            self._show(now)

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def _show(self, now: float) -> None:
        frac = self.n / self.total if self.total else 1.0
        bar = "#" * int(24 * frac)
        sys.stderr.write(f"\r{self.desc}: {frac:4.0%}|{bar:<24}| {self.n}/{self.total} "
                         f"[{now - self.start:.1f}s] {self.postfix}")
        sys.stderr.flush()

    def close(self) -> None:
        self._show(time.perf_counter())
        sys.stderr.write("\n")


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, desc: str = "", enabled: bool = True):
    """tqdm(total=total, desc=desc) if tqdm is installed, else a one-line built-in bar; with
    enabled=False an object with the same methods that shows nothing."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Bar(total, desc)
    return tqdm(total=total, desc=desc, leave=True)


# ----------------------------------------------------------------------------- loops
def _check_fit_args(model_name, model, loader, optimizer, epochs, pruner) -> int:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{model_name} must be an nn.Module, got {type(model).__name__}")
    if not isinstance(loader, Iterable):
        raise TypeError(f"loader must be an iterable of (inputs, labels) batches, got {type(loader).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if pruner is not None and not isinstance(pruner, MaskedPruner):
        raise TypeError(f"pruner must be a MaskedPruner or None, got {type(pruner).__name__}")
    try:
        return len(loader)
    except TypeError:
        return 0


def _fit(model_name, model, loader, optimizer, batch_loss, *, epochs, pruner, lr_scheduler, progress,
         desc, start_step) -> list[dict]:
    """The shared loop: prune on schedule, forward, loss, backward, step, re-zero. One dict of
    averages per epoch."""
    steps_per_epoch = _check_fit_args(model_name, model, loader, optimizer, epochs, pruner)
    device = next(model.parameters()).device
    bar = progress_bar(steps_per_epoch * epochs, desc, progress)
    history, step = [], start_step
    model.train()
    try:
        for epoch in range(epochs):
            sums, rows = {}, 0
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                if pruner is not None:
                    pruner.step(step)
                optimizer.zero_grad(set_to_none=True)
                loss, parts = batch_loss(x, y)
                loss.backward()
                optimizer.step()
                if pruner is not None:
                    pruner.apply_()
                step += 1
                for k, v in parts.items():  # summed on the device: no host sync per step
                    sums[k] = sums.get(k, 0.0) + v.detach().float() * len(y)
                rows += len(y)
                bar.update()
            if lr_scheduler is not None:
                lr_scheduler.step()
            record = {"epoch": epoch + 1, "step": step,
                      **{k: float(v) / max(rows, 1) for k, v in sums.items()}}
            if pruner is not None:
                record["sparsity"] = pruner.sparsity
            history.append(record)
            bar.set_postfix_str(" ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("epoch", "step")))
    finally:
        bar.close()
    return history


def fit_distill(teacher: nn.Module, student: nn.Module, loader, optimizer: torch.optim.Optimizer, *,
                T: float = 4.0, alpha: float = 0.5, epochs: int = 1, pruner: MaskedPruner | None = None,
                lr_scheduler=None, progress: bool = True, desc: str = "distill", start_step: int = 0,
                **loss_options) -> list[dict]:
    """Trains `student` on the fused distillation loss against `teacher` (kept in eval mode,
    no gradient) for `epochs` passes over `loader`. `loss_options` go to DistillationLoss
    (divergence, beta, ignore_index). With a `pruner`, pruner.step(global step) runs before each
    batch and pruner.apply_() after each optimiser step. `lr_scheduler` steps once per epoch.
    Returns per-epoch averages: loss, soft, hard (and sparsity)."""
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
    criterion = DistillationLoss(T=T, alpha=alpha, return_parts=True, **loss_options)
    teacher.eval()

    def batch_loss(x, y):
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss, soft, hard = criterion(student(x), teacher_logits, y)
        return loss, {"loss": loss.detach(), "soft": soft, "hard": hard}

    return _fit("student", student, loader, optimizer, batch_loss, epochs=epochs, pruner=pruner,
                lr_scheduler=lr_scheduler, progress=progress, desc=desc, start_step=start_step)


def train_hard_labels(model: nn.Module, loader, optimizer: torch.optim.Optimizer, *, epochs: int = 1,
                      pruner: MaskedPruner | None = None, lr_scheduler=None, label_smoothing: float = 0.0,
                      progress: bool = True, desc: str = "train", start_step: int = 0) -> list[dict]:
    """fit_distill without a teacher: cross-entropy on the labels (the baseline, or a teacher's
    own training). Same pruning and scheduling behaviour."""
    def batch_loss(x, y):
        loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        return loss, {"loss": loss.detach()}

    return _fit("model", model, loader, optimizer, batch_loss, epochs=epochs, pruner=pruner,
                lr_scheduler=lr_scheduler, progress=progress, desc=desc, start_step=start_step)
