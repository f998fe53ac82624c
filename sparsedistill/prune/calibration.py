"""Calibration statistics of the inputs of a model's nn.Linear layers, for activation-aware
pruning: per input feature the sum of squares of the activations (Wanda's ||X_j||_2^2) and, on
request, the sum of outer products X^T X (the Hessian of SparseGPT's layer-wise problem, up to
the factor 2 / rows). Collected by forward hooks while calibration batches run through the model
(Hugging Face modules included), streamed batch by batch into float32 or float64 accumulators:
memory is one vector (or one in x in matrix) per layer, whatever the number of batches.

    stats = collect_statistics(model, batches, hessian=False)
    stats["model.layers.0.mlp.up_proj"].input_norms()      # ||X_j||_2, shape (in_features,)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

__all__ = ["LinearStats", "collect_statistics", "linear_targets", "run_batch", "as_batches"]


@dataclass
class LinearStats:
    """Statistics of one Linear's inputs over `rows` calibration rows (tokens)."""
    rows: int
    sq_sum: torch.Tensor                 # (in_features,): sum over rows of x_j^2
    hessian: torch.Tensor | None = None  # (in_features, in_features): sum over rows of x x^T

    @classmethod
    def zeros(cls, linear: nn.Linear, hessian: bool, dtype: torch.dtype) -> "LinearStats":
        """Empty statistics for `linear`'s inputs, on its device."""
        opts = dict(dtype=dtype, device=linear.weight.device)
        n = linear.in_features
        return cls(0, torch.zeros(n, **opts), torch.zeros(n, n, **opts) if hessian else None)

    def input_norms(self) -> torch.Tensor:
        """||X_j||_2 per input feature (Wanda's activation norm)."""
        return self.sq_sum.sqrt()

    def update(self, x: torch.Tensor) -> None:
        """Adds the rows of x (..., in_features)."""
        x = x.detach().reshape(-1, x.shape[-1]).to(self.sq_sum.dtype)
        self.rows += x.shape[0]
        self.sq_sum.add_(x.square().sum(0))
        if self.hessian is not None:
            self.hessian.addmm_(x.t(), x)


def linear_targets(model: nn.Module, targets=None, within: nn.Module | None = None) -> dict[str, nn.Linear]:
    """{name: module} of the Linears to prune. targets=None: every nn.Linear of `within` (default:
    the whole model); otherwise a list of module names or modules of the model, each an nn.Linear
    (anything else raises, naming it)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    names = {m: n for n, m in model.named_modules()}
    if targets is None:
        scope = model if within is None else within
        return {names[m]: m for m in scope.modules() if isinstance(m, nn.Linear)}
    if isinstance(targets, (str, nn.Module)):
        targets = [targets]
    out = {}
    modules = dict(model.named_modules())
    for i, t in enumerate(targets):
        if isinstance(t, str):
            if t not in modules:
                raise ValueError(f"targets[{i}] = {t!r} is not a module of the model")
            name, module = t, modules[t]
        elif isinstance(t, nn.Module):
            if t not in names:
                raise ValueError(f"targets[{i}] ({type(t).__name__}) is not a module of the model")
            name, module = names[t], t
        else:
            raise TypeError(f"targets[{i}] must be a module name or an nn.Module, got {type(t).__name__}")
        if not isinstance(module, nn.Linear):
            raise TypeError(f"targets[{i}] ({name!r}) must be an nn.Linear, got {type(module).__name__}")
        out[name] = module
    if not out:
        raise ValueError("targets must name at least one nn.Linear")
    return out


def as_batches(calibration) -> list:
    """The calibration batches as a list (they are read more than once); at least one."""
    if calibration is None:
        raise ValueError("calibration must hold at least one batch (a tensor of input ids, a tuple "
                         "of positional inputs or a dict of keyword inputs), got None")
    if isinstance(calibration, (torch.Tensor, dict)):
        raise TypeError("calibration must be an iterable of batches (e.g. a list of tensors), got a "
                        f"single {type(calibration).__name__}; wrap it in a list")
    batches = list(calibration)
    if not batches:
        raise ValueError("calibration must hold at least one batch, got none")
    return batches


def run_batch(module: nn.Module, batch):
    """module(batch): a tensor is the one positional input, a tuple/list the positional inputs,
    a dict the keyword inputs."""
    if isinstance(batch, dict):
        return module(**batch)
    if isinstance(batch, (tuple, list)):
        return module(*batch)
    return module(batch)


@torch.no_grad()
def all_reduce_statistics(stats: dict, process_group) -> dict:
    """Sums, in place, every LinearStats over the ranks of `process_group` (data-parallel
    calibration: each rank ran its own batches; afterwards all hold the statistics of all of
    them). Layers in sorted name order, so every rank reduces the same tensors in the same
    order; bytes: in_features (+ in_features^2 with the Hessian) per layer, plus one count."""
    import torch.distributed as dist
    if process_group is None:
        return stats
    comm = "cuda" if dist.get_backend(process_group) == "nccl" else "cpu"
    for name in sorted(stats):
        s = stats[name]
        for t in (s.sq_sum, s.hessian):
            if t is not None:
                buf = t.to(comm)
                dist.all_reduce(buf, group=process_group)
                t.copy_(buf)
        rows = torch.tensor([s.rows], dtype=torch.int64, device=comm)
        dist.all_reduce(rows, group=process_group)
        s.rows = int(rows[0])
    return stats


@torch.no_grad()
def collect_statistics(model: nn.Module, calibration: Iterable, targets=None, *, hessian: bool = False,
                       dtype: torch.dtype = torch.float32, process_group=None) -> dict[str, LinearStats]:
    """Runs every calibration batch through `model` (in eval mode, gradients off) and returns
    {name: LinearStats} for each target Linear (default: all). hessian=True also accumulates
    X^T X. dtype: float32 or float64 accumulators. The hooks are removed, and the model's
    train/eval mode restored, even when a batch raises. process_group (torch.distributed):
    each rank passes its own batches and gets the statistics of all ranks' batches."""
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    layers = linear_targets(model, targets)
    batches = as_batches(calibration)
    stats = {name: LinearStats.zeros(m, hessian, dtype) for name, m in layers.items()}
    with hooks_collecting(layers, stats), eval_mode(model):
        for batch in batches:
            run_batch(model, batch)
    return all_reduce_statistics(stats, process_group)


class hooks_collecting:
    """Context: forward pre-hooks that add each layer's input to stats[name]; removed on exit."""

    def __init__(self, layers: dict[str, nn.Module], stats: dict[str, LinearStats]):
        self.layers, self.stats, self.handles = layers, stats, []

    def __enter__(self):
        for name, m in self.layers.items():
            self.handles.append(m.register_forward_pre_hook(
                lambda mod, args, name=name: self.stats[name].update(args[0])))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
        return False


class eval_mode:
    """Context: the module in eval mode, each submodule's training flag restored on exit."""

    def __init__(self, module: nn.Module):
        self.module, self.flags = module, None

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
        return False
