"""MaskedPruner: gradual global magnitude pruning during training. The masks are raised along a
schedule (e.g. CubicSparsitySchedule) with one exact threshold across the model, and pruned
weights are kept at zero (their gradients are masked).

    pruner = MaskedPruner(student, CubicSparsitySchedule(0.0, 0.9, 0, 1000, frequency=10))
    ... pruner.step(global_step) after every optimizer step ...
    pruner.remove()    # drops the gradient hooks; the zeros stay
"""
from __future__ import annotations

import numbers
from typing import Callable

import torch
from torch import nn

from ..prune import global_magnitude_masks
from ..prune.checks import resolve_amount

__all__ = ["MaskedPruner", "prunable_weights"]


def prunable_weights(model: nn.Module, types=(nn.Linear, nn.Conv1d, nn.Conv2d)) -> dict:
    """{"<module name>.weight": weight} of every layer of one of `types` (biases excluded)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {f"{name}.weight" if name else "weight": m.weight
            for name, m in model.named_modules() if isinstance(m, types)}


class MaskedPruner:
    """Global magnitude masks over `params` (an nn.Module: the weights of its Linear/Conv layers;
    or a dict name -> Parameter, or a list of Parameters), raised along `schedule` (a callable
    step -> sparsity, e.g. CubicSparsitySchedule).

    masks: keep-masks to start from (a dict name -> bool mask over the same names, as
    prune_model's report.masks, or a list in params' order), e.g. after one-shot pruning; those
    weights stay pruned and count towards the sparsity.

    ``step(global_step)`` prunes, among the weights still kept, the smallest ones needed to reach
    the scheduled sparsity exactly (over all params together; pruned weights never come back),
    then zeroes them. While attached, a gradient hook zeroes the gradient of every pruned weight;
    call ``apply_()`` after each optimiser step too, since momentum and weight decay still move
    them. ``remove()`` drops the hooks.

    Distributed: FSDP2 (DTensor) params are pruned across their shards, with the masks of the
    unsharded model; under DDP pass ``process_group`` so that every replica keeps the first
    rank's masks."""

    def __init__(self, params, schedule: Callable[[int], float], masks=None, *, process_group=None):
        if isinstance(params, nn.Module):
            params = prunable_weights(params)
        if not isinstance(params, dict):
            params = {f"param{i}": p for i, p in enumerate(params)}
        if not params:
            raise ValueError("params must hold at least one tensor to prune")
        for name, p in params.items():
            if not isinstance(p, torch.Tensor) or not p.is_floating_point():
                raise TypeError(f"params[{name!r}] must be a floating-point tensor, got "
                                f"{getattr(p, 'dtype', type(p).__name__)}")
        if not callable(schedule):
            raise TypeError(f"schedule must be callable (step -> sparsity), got {type(schedule).__name__}")
        self.process_group = process_group
        self.names = list(params)
        self.params = list(params.values())
        self.schedule = schedule
        self.masks = self._initial_masks(masks)
        self.total = sum(p.numel() for p in self.params)
        self.pruned = sum(int((~m).sum()) for m in self.masks)
        self._hooks = [p.register_hook(self._grad_hook(i))
                       for i, p in enumerate(self.params) if p.requires_grad]

    def _initial_masks(self, masks) -> list:
        if masks is None:
            return [torch.ones_like(p, dtype=torch.bool) for p in self.params]
        if isinstance(masks, dict):
            missing = [n for n in self.names if n not in masks]
            if missing:
                raise ValueError(f"masks has no mask for {missing[:3]} (it must name every param)")
            masks = [masks[n] for n in self.names]
        masks = list(masks)
        if len(masks) != len(self.params):
            raise ValueError(f"masks must hold one mask per param ({len(self.params)}), got {len(masks)}")
        for name, m, p in zip(self.names, masks, self.params):
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != p.shape:
                raise ValueError(f"masks[{name!r}] must be a bool tensor of shape {tuple(p.shape)}")
        return [m.to(p.device).clone() for m, p in zip(masks, self.params)]

    def _grad_hook(self, i: int):
        return lambda grad: grad.masked_fill(~self.masks[i], 0)

    @property
    def sparsity(self) -> float:
        """Fraction of the elements of params currently pruned."""
        return self.pruned / self.total

    def prune_to(self, sparsity) -> None:
        """Raises the pruned fraction to `sparsity` (never lowers it), then zeroes the pruned weights."""
        if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity <= 1:
            raise ValueError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
        extra = resolve_amount(float(sparsity), self.total, "sparsity") - self.pruned
        if extra > 0:
            self.masks = global_magnitude_masks(self.params, extra, masks=self.masks)
            self._broadcast_masks()
            self.pruned += extra
        self.apply_()

    def _broadcast_masks(self) -> None:
        """DDP (process_group given, plain replicated params): the first rank's masks go to all,
        so the replicas stay pruned alike even if floating-point noise made them drift apart
        (one broadcast of the masks, a byte per weight). DTensor params (FSDP2) need nothing:
        their selection runs across the shards already."""
        from ..prune.distributed import is_dtensor
        if self.process_group is None or any(is_dtensor(p) for p in self.params):
            return
        import torch.distributed as dist
        src = dist.get_global_rank(self.process_group, 0)
        comm = "cuda" if dist.get_backend(self.process_group) == "nccl" else "cpu"
        for m in self.masks:
            buf = m.to(device=comm, dtype=torch.uint8)
            dist.broadcast(buf, src=src, group=self.process_group)
            m.copy_(buf.to(m.device).bool())

    def step(self, global_step: int) -> float:
        """Prunes to schedule(global_step); returns that scheduled sparsity."""
        target = float(self.schedule(global_step))
        self.prune_to(target)
        return target

    @torch.no_grad()
    def apply_(self) -> None:
        """Zeroes every pruned weight in place."""
        for p, m in zip(self.params, self.masks):
            p.masked_fill_(~m, 0)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __repr__(self) -> str:
        return f"MaskedPruner({len(self.params)} tensors, {self.total} elements, sparsity={self.sparsity:.4f})"
