"""One-shot pruning of a whole model from calibration data: magnitude, Wanda and SparseGPT, for
unstructured sparsity and N:M, layer by layer in the manner of the Wanda and SparseGPT code and
llm-compressor's sequential pipeline.

    report = prune_model(model, 0.5, method="wanda", calibration=batches)
    report = prune_model(model, None, method="sparsegpt", calibration=batches, pattern=(2, 4))

sequential=True (the default): the calibration inputs of the first block (found automatically
for model.layers, model.model.layers, transformer.h, encoder.layer, ... or given) are captured
once; then, block by block, the block's Linears are pruned from that block's real inputs and the
block is run again with its pruned weights to give the next block's inputs. Peak memory is the
calibration activations of one block plus one block's statistics. sequential=False: statistics of
all targets from one pass of the dense model.

Methods (scores rank weights, the lowest are pruned):
  magnitude         |W|, one threshold per layer (group="tensor", as Wanda's baseline)
  global_magnitude  |W|, one threshold across all targets (no calibration needed)
  wanda             |W| * ||X_j||_2, compared within each output row (Wanda's groups)
  sparsegpt         the OBS reconstruction of sparsegpt.py (Hessian X^T X of each layer)
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch
from torch import nn

from .calibration import (LinearStats, all_reduce_statistics, as_batches, eval_mode, hooks_collecting, linear_targets,
                          run_batch)
from .magnitude import global_magnitude_prune_, grouped_prune_, magnitude_prune_
from .nm import nm_mask
from .sparsegpt import sparsegpt_prune_

__all__ = ["prune_model", "PruneReport", "LayerReport", "find_blocks", "wanda_scores", "wanda_prune_", "METHODS"]

METHODS = ("magnitude", "global_magnitude", "wanda", "sparsegpt")
BLOCK_PATHS = ("model.layers", "model.decoder.layers", "model.model.layers", "transformer.h",
               "gpt_neox.layers", "encoder.layer", "bert.encoder.layer", "transformer.blocks",
               "layers", "blocks", "h")
# Keyword inputs of HF blocks that would carry state from one call of a block to the next (a
# block runs twice per batch here: a KV cache would see its keys twice). Any Cache object too.
_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past", "cache")


def _is_cache(value) -> bool:
    return "Cache" in type(value).__name__ and hasattr(value, "update")


@dataclass
class LayerReport:
    name: str
    shape: tuple
    method: str
    sparsity: float           # fraction of the weight now zero
    error: float | None       # ||(W - W') X||^2 / ||W X||^2 on the calibration inputs (None: not run)


@dataclass
class PruneReport:
    method: str
    layers: list = field(default_factory=list)
    masks: dict = field(default_factory=dict)   # "<module name>.weight" -> bool keep-mask (if kept)

    @property
    def sparsity(self) -> float:
        """Fraction pruned over all pruned layers together: from the masks, or without them
        (keep_masks=False) the weights' zero fraction, which counts zeros from before too."""
        if self.masks:
            total = sum(m.numel() for m in self.masks.values())
            return sum(int((~m).sum()) for m in self.masks.values()) / max(total, 1)
        sizes = [math.prod(r.shape) for r in self.layers]
        return sum(r.sparsity * s for r, s in zip(self.layers, sizes)) / max(sum(sizes), 1)

    def table(self) -> str:
        rows = [f"| {r.name} | {'x'.join(map(str, r.shape))} | {r.sparsity:.3f} | "
                f"{'' if r.error is None else f'{r.error:.4g}'} |" for r in self.layers]
        return "\n".join(["| layer | shape | sparsity | rel. error |", "| --- | --- | --- | --- |", *rows])


def wanda_scores(weight: torch.Tensor, stats: LinearStats) -> torch.Tensor:
    """Wanda's importance |W_ij| * ||X_j||_2 (float32)."""
    return weight.detach().float().abs() * stats.input_norms().to(weight.device, torch.float32)


@torch.no_grad()
def wanda_prune_(weight: torch.Tensor, stats: LinearStats, sparsity: float, *, pattern=None,
                 return_mask: bool = True) -> torch.Tensor | None:
    """Prunes `weight` (out x in) in place by Wanda and returns its keep-mask: in each output row
    the `sparsity` fraction with the smallest |W_ij| * ||X_j||_2 (or, with pattern=(n, m), all
    but the n largest of every m consecutive). Unstructured, it runs one op that ranks by |W|
    times the column's norm and zeroes in its mask pass: no scores tensor is made.
    return_mask=False returns None and writes no mask (as Wanda's own code keeps none; the
    mask is `weight != 0` up to weights that were zero already)."""
    if weight.dim() != 2 or stats.sq_sum.shape != (weight.shape[1],):
        raise ValueError(f"weight must be (out, in) with stats over its {weight.shape[-1]} inputs, got "
                         f"weight {tuple(weight.shape)} and stats of {tuple(stats.sq_sum.shape)} features")
    if pattern is not None:
        keep = nm_mask(weight, *pattern, scores=wanda_scores(weight, stats))
        weight.masked_fill_(~keep, 0)
        return keep if return_mask else None
    norms = stats.input_norms().to(weight.device, torch.float32)
    return grouped_prune_(weight, float(sparsity), None, (1, weight.shape[1]), norms, return_mask=return_mask)


def find_blocks(model: nn.Module, blocks=None) -> tuple[str, list]:
    """(path, list of blocks): `blocks` as given (a dotted path or a list of modules), or the first
    nn.ModuleList found at one of BLOCK_PATHS."""
    if isinstance(blocks, (list, tuple, nn.ModuleList)):
        blocks = list(blocks)
        if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
            raise TypeError("blocks must be a non-empty list of nn.Modules (or a dotted path)")
        return "<given>", blocks
    paths = BLOCK_PATHS if blocks is None else (blocks,)
    if blocks is not None and not isinstance(blocks, str):
        raise TypeError(f"blocks must be None, a dotted path or a list of modules, got {type(blocks).__name__}")
    for path in paths:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj):
            return path, list(obj)
    if blocks is not None:
        raise ValueError(f"blocks={blocks!r}: no non-empty nn.ModuleList at that path of the model")
    raise ValueError(f"no block list found at {', '.join(BLOCK_PATHS)}; pass blocks= (a dotted path "
                     "or a list of modules) or sequential=False")


class _Captured(Exception):
    pass


def _capture_block_inputs(model, first_block, batches) -> list:
    """[(args, kwargs)] of first_block for every batch; the model stops at the block."""
    inputs = []

    def hook(mod, args, kwargs):
        kwargs = dict(kwargs)
        for key in list(kwargs):
            if key in _CACHE_KWARGS or _is_cache(kwargs[key]):
                kwargs[key] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        inputs.append((list(args), kwargs))
        raise _Captured

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                run_batch(model, batch)
            except _Captured:
                pass
            else:
                raise RuntimeError("the model finished a batch without calling its first block: "
                                   "pass blocks= (the modules the model runs in order)")
    finally:
        handle.remove()
    return inputs


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _with_hidden(args, kwargs, hidden):
    if args:
        return [hidden, *args[1:]], kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _check_args(model, sparsity, method, calibration, pattern, keep_masks=True, group=None):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(keep_masks, bool):
        raise TypeError(f"keep_masks must be a bool, got {keep_masks!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if group is not None:
        if group not in ("row", "tensor"):
            raise ValueError(f"group must be None, 'row' or 'tensor', got {group!r}")
        if method not in ("wanda", "magnitude") or pattern is not None:
            raise ValueError(f"group applies to unstructured wanda and magnitude only, not to method={method!r}"
                             + (f" with pattern={tuple(pattern)}" if pattern is not None else "")
                             + "; pass group=None")
    if pattern is not None:
        if (not isinstance(pattern, (tuple, list)) or len(pattern) != 2
                or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in pattern)):
            raise TypeError(f"pattern must be None or (n, m) ints (keep n of every m), got {pattern!r}")
        n, m = pattern
        if not 0 < n < m:
            raise ValueError(f"pattern (n, m) must keep 0 < n < m weights of every m, got {tuple(pattern)}")
        implied = 1 - n / m
        if sparsity is not None and abs(float(sparsity) - implied) > 1e-9:
            raise ValueError(f"sparsity {sparsity} disagrees with pattern {tuple(pattern)} (which prunes "
                             f"{implied:g}); pass sparsity=None")
        if method == "global_magnitude":
            raise ValueError("method='global_magnitude' has no N:M form; use method='magnitude'")
        sparsity = implied
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}")
    needs = method in ("wanda", "sparsegpt")
    batches = as_batches(calibration) if needs or calibration is not None else None
    return float(sparsity), batches


def _prune_layer(module, method, sparsity, pattern, stats, blocksize, percdamp, keep_masks, group):
    w = module.weight
    if method == "sparsegpt":
        return sparsegpt_prune_(w, stats.hessian, sparsity, pattern=pattern, blocksize=blocksize,
                                percdamp=percdamp)
    if method == "wanda" and (pattern is not None or group == "row"):
        return wanda_prune_(w, stats, sparsity, pattern=pattern, return_mask=keep_masks)
    if pattern is not None:
        keep = nm_mask(w, *pattern)
        with torch.no_grad():
            w.masked_fill_(~keep, 0)
        return keep
    scores = wanda_scores(w, stats) if method == "wanda" else None
    return magnitude_prune_(w, sparsity, scores=scores, group=group)


class _ErrorMeter:
    """Forward pre-hooks adding ||x (W - W')^T||^2 and ||x W^T||^2 for each layer (the layers'
    weights are not changed while it is entered)."""

    def __init__(self, layers: dict, originals: dict):
        self.layers, self.originals, self.sums, self.handles = layers, originals, {}, []

    def __enter__(self):
        for name, m in self.layers.items():
            w0 = self.originals[name].float()
            delta = w0 - m.weight.detach().float()  # once per layer, not per batch

            def hook(mod, args, name=name, w0=w0, delta=delta):
                x = args[0].detach().reshape(-1, mod.in_features).float()
                diff = (x @ delta.t()).square().sum()
                ref = (x @ w0.t()).square().sum()
                num, den = self.sums.get(name, (0.0, 0.0))
                self.sums[name] = (num + float(diff), den + float(ref))
            self.handles.append(m.register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False

    def error(self, name):
        if name not in self.sums:
            return None
        num, den = self.sums[name]
        return num / den if den > 0 else 0.0


@torch.no_grad()
def prune_model(model: nn.Module, sparsity, method: str = "wanda", calibration=None, *,
                pattern=None, blocks=None, sequential: bool = True, targets=None,
                blocksize: int = 128, percdamp: float = 0.01,
                hessian_dtype: torch.dtype = torch.float32, process_group=None,
                keep_masks: bool = True, group: str | None = None) -> PruneReport:
    """Prunes the Linears of `model` in place and returns a PruneReport (per layer: sparsity,
    reconstruction error on the calibration inputs; and the keep-masks, named as
    train.prunable_weights names weights, for MaskedPruner(masks=...) fine-tuning).

    sparsity: fraction in [0, 1) pruned per layer (per output row for wanda, per 128-column block
    for sparsegpt); pattern=(n, m): keep n of every m consecutive weights of each row instead.
    calibration: a list of batches (tensors, tuples of positional inputs or dicts of keyword
    inputs), required by wanda and sparsegpt. targets: Linear names or modules (default: every
    Linear inside the blocks, as Wanda and SparseGPT prune them, so not an LM head; every Linear
    of the model when no block list is found and sequential=False). keep_masks=False leaves
    report.masks empty (one bool per weight saved; the masks are `weight != 0`, up to weights
    that were zero already). group: where the weights of an unstructured wanda or magnitude layer
    compete, "row" (each output row: Wanda's default) or "tensor" (the whole layer: magnitude's
    default, and torchao's WandaSparsifier); None: the method's default. Every argument is
    checked before the model is touched."""
    sparsity, batches = _check_args(model, sparsity, method, calibration, pattern, keep_masks, group)
    group = group or ("row" if method == "wanda" else "tensor")
    if method == "global_magnitude" or (method == "magnitude" and batches is None):
        return _prune_without_data(model, _default_targets(model, targets, blocks), method, sparsity, pattern,
                                   keep_masks, group)
    if sequential:
        path, block_list = find_blocks(model, blocks)
        in_blocks = {}
        for b in block_list:
            in_blocks.update(linear_targets(model, None, within=b))
        layers = in_blocks if targets is None else linear_targets(model, targets)
        outside = [n for n in layers if n not in in_blocks]
        if outside:
            raise ValueError(f"targets {outside[:3]} lie outside the blocks ({path}); prune them with "
                             "sequential=False")
    else:
        layers = _default_targets(model, targets, blocks)
    report = PruneReport(method)
    hessian = method == "sparsegpt"

    def new_stats(names):
        return {n: LinearStats.zeros(layers[n], hessian, hessian_dtype) for n in names}

    def prune_group(names, stats):
        originals = {n: layers[n].weight.detach().clone() for n in names}
        for n in names:
            keep = _prune_layer(layers[n], method, sparsity, pattern, stats[n], blocksize, percdamp, keep_masks,
                                group)
            if keep_masks:
                report.masks[f"{n}.weight"] = keep
        return originals

    with eval_mode(model):
        if not sequential:
            together = {n: layers[n] for n in layers}
            stats = new_stats(together)
            with hooks_collecting(together, stats):
                for batch in batches:
                    run_batch(model, batch)
            all_reduce_statistics(stats, process_group)
            originals = prune_group(list(together), stats)
            meter = _ErrorMeter(together, originals)
            with meter:
                for batch in batches:
                    run_batch(model, batch)
            _add_reports(report, together, method, meter)
            return report
        inputs = _capture_block_inputs(model, block_list[0], batches)
        for block in block_list:
            inside = {id(x) for x in block.modules()}
            together = {n: m for n, m in layers.items() if id(m) in inside}
            stats = new_stats(together)
            with hooks_collecting(together, stats):
                for args, kwargs in inputs:
                    block(*args, **kwargs)
            all_reduce_statistics(stats, process_group)
            originals = prune_group(list(together), stats)
            meter = _ErrorMeter(together, originals)
            with meter:
                inputs = [_with_hidden(args, kwargs, _hidden(block(*args, **kwargs)))
                          for args, kwargs in inputs]
            _add_reports(report, together, method, meter)
            del originals, stats
    return report


def _default_targets(model, targets, blocks) -> dict:
    """targets, else the Linears inside the blocks (as the sequential path), else every Linear."""
    if targets is not None:
        return linear_targets(model, targets)
    try:
        _, block_list = find_blocks(model, blocks)
    except ValueError:
        if blocks is not None:
            raise
        return linear_targets(model)
    out = {}
    for b in block_list:
        out.update(linear_targets(model, None, within=b))
    return out


def _add_reports(report, layers, method, meter):
    for n, m in layers.items():
        w = m.weight
        report.layers.append(LayerReport(n, tuple(w.shape), method, float((w == 0).float().mean()),
                                         meter.error(n) if meter is not None else None))


def _prune_without_data(model, layers, method, sparsity, pattern, keep_masks, group) -> PruneReport:
    report = PruneReport(method)
    if method == "global_magnitude":
        names = list(layers)
        keeps = global_magnitude_prune_([layers[n].weight for n in names], sparsity)
        report.masks = {f"{n}.weight": k for n, k in zip(names, keeps)}
    else:
        for n, m in layers.items():
            report.masks[f"{n}.weight"] = _prune_layer(m, method, sparsity, pattern, None, 0, 0.0, keep_masks, group)
    if not keep_masks:
        report.masks = {}
    _add_reports(report, layers, method, None)
    return report
