"""Structured pruning criteria: the Ln norm of each channel or group of channels, and masks that
prune the groups of smallest norm (lowest index first among equal norms). Removing the pruned
channels from the layers is shrink.py's job.
"""
from __future__ import annotations

import math

import torch

from .checks import check_dim, check_float_tensor, check_int, check_norm_order, resolve_amount
from .reference import prune_lowest

__all__ = ["channel_norms", "group_norms", "structured_mask"]


def group_norms(weight: torch.Tensor, group_size: int, n: float = 2, dim: int = 0) -> torch.Tensor:
    """Ln norm of each group of `group_size` consecutive slices along `dim` (e.g. the attention
    heads of a projection with head_dim rows each): shape (weight.shape[dim] // group_size,).
    Computed in float32 at least (float64 stays float64)."""
    check_float_tensor("weight", weight)
    order = check_norm_order(n)
    dim = check_dim(dim, weight)
    group_size = check_int("group_size", group_size, low=1)
    size = weight.shape[dim]
    if size % group_size:
        raise ValueError(f"group_size {group_size} does not divide size {size} of dim {dim}")
    per_group = math.prod(weight.shape) // size * group_size if size else 0
    x = weight.detach().movedim(dim, 0).reshape(size // group_size, per_group)
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    if per_group == 0:  # empty groups have norm 0 (linalg refuses ord=inf on empty dims)
        return torch.zeros(x.shape[0], dtype=acc, device=weight.device)
    return torch.linalg.vector_norm(x, ord=order, dim=1, dtype=acc)


def channel_norms(weight: torch.Tensor, n: float = 2, dim: int = 0) -> torch.Tensor:
    """Ln norm of each slice of `weight` along `dim`: per output unit of a Linear weight (dim=0),
    per out-channel of a Conv2d weight; shape (weight.shape[dim],)."""
    return group_norms(weight, 1, n=n, dim=dim)


def structured_mask(weight: torch.Tensor, amount, n: float = 2, dim: int = 0,
                    group_size: int = 1) -> torch.Tensor:
    """Bool keep-mask of shape (weight.shape[dim],) that prunes `amount` (a fraction, rounded as
    torch.nn.utils.prune does, or an int count) of the groups of `group_size` slices along `dim`
    with the smallest Ln norms; a pruned group is False over all its slices. Ties: lowest index
    pruned first."""
    norms = group_norms(weight, group_size, n=n, dim=dim)
    k = resolve_amount(amount, norms.numel())
    if torch.isnan(norms).any():
        raise ValueError("weight contains NaN; its norms cannot be ranked")
    return prune_lowest(norms, k).repeat_interleave(group_size)
