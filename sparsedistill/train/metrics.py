"""What a compressed model is worth: accuracy, parameter and nonzero counts, serialized size
and CPU latency, measured the same way for every model (dense, masked or sparsified)."""
from __future__ import annotations

import io
import numbers

import torch
from torch import nn

from .._timing import median_ms

__all__ = ["evaluate", "model_stats", "cpu_latency_ms"]


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> float:
    """Top-1 accuracy in [0, 1] of `model` (put in eval mode) over the (inputs, labels) batches
    of `loader`."""
    _check_model(model)
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for x, y in loader:
        y = y.to(device)
        correct += int((model(x.to(device)).argmax(-1) == y).sum())
        total += y.numel()
    if total == 0:
        raise ValueError("loader yielded no examples")
    return correct / total


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of torch.save(model.state_dict()): the size on disk. Sparse layers (SparseLinear)
    are saved in their compressed form, masked dense layers with all their zeros."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def model_stats(model: nn.Module) -> dict:
    """{"params": elements of all parameters (a SparseLinear holds only its nonzero values),
    "nonzeros": those that are nonzero, "size_bytes": serialized_bytes(model)}."""
    _check_model(model)
    params = list(model.parameters())
    return {"params": sum(p.numel() for p in params),
            "nonzeros": sum(int(torch.count_nonzero(p)) for p in params),
            "size_bytes": serialized_bytes(model)}


@torch.inference_mode()
def cpu_latency_ms(model: nn.Module, batch_size: int, in_features: int, *, reps: int = 200,
                   warmup: int = 20, min_time_s: float = 0.0) -> float:
    """Median milliseconds of one forward of `model` (eval mode) on a (batch_size, in_features)
    float32 CPU input, after `warmup` calls; at least `reps` timed calls, more until
    `min_time_s` has passed. Uses the current torch.get_num_threads()."""
    _check_model(model)
    for name, v in (("batch_size", batch_size), ("in_features", in_features), ("reps", reps)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    model.eval()
    x = torch.randn(batch_size, in_features)
    return median_ms(lambda: model(x), reps, warmup=warmup, min_time_s=min_time_s)
