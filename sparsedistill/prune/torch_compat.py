"""Drop-in replacement for ``torch.nn.utils.prune`` with bool masks and exact fast selection.

Change ``from torch.nn.utils import prune`` to ``from sparsedistill import prune`` and the same
calls give the same reparametrization: ``<name>_orig`` parameter, ``<name>_mask`` buffer and a
forward pre-hook, with the same state_dict keys, so checkpoints load both ways (``load_state_dict``
copies a float 0/1 mask into our bool buffer and back). Iterative pruning works as torch's
``PruningContainer``: each new amount applies to what remains. Differences:

* masks are ``torch.bool`` (a quarter of float32's memory), also after iterative pruning;
* L1 selection (``l1_unstructured``, ``global_unstructured`` with ``L1Unstructured``) uses the
  exact radix-select op of :mod:`sparsedistill.pruning` (ties: lowest index pruned first);
  ``ln_structured`` ranks channel norms by a stable sort (same tie rule);
* arguments are checked and the mask computed before the module is touched: an error (it names
  the argument) leaves the module exactly as it was; NaN in ranked weights is an error;
* re-pruning ranks the current ``orig * mask`` (torch reads ``module.<name>``, which is stale
  until the next forward, e.g. after ``load_state_dict`` or an optimizer step).

The pruning classes subclass torch's (``isinstance(h, torch.nn.utils.prune.L1Unstructured)``
holds, and ``torch.nn.utils.prune.remove``/``is_pruned`` accept modules pruned here). Extras:
:func:`remove_all` and :func:`sparsity_report`.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune as _tp
from torch.nn.utils.prune import BasePruningMethod

from .checks import resolve_amount
from .magnitude import global_magnitude_masks, magnitude_mask

__all__ = ["BasePruningMethod", "PruningContainer", "Identity", "RandomUnstructured",
           "L1Unstructured", "RandomStructured", "LnStructured", "CustomFromMask", "identity",
           "random_unstructured", "l1_unstructured", "random_structured", "ln_structured",
           "global_unstructured", "custom_from_mask", "remove", "is_pruned", "remove_all",
           "sparsity_report", "SparsityReport", "SparsityRow"]


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _hooks_for(module: nn.Module, name: str):
    return [(k, h) for k, h in module._forward_pre_hooks.items()
            if isinstance(h, BasePruningMethod) and h._tensor_name == name]


def _state(module, name):
    """Validates (module, name); returns (hook key, old hook, current tensor, keep-mask)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    hooks = _hooks_for(module, name)
    if len(hooks) > 1:
        raise RuntimeError(f"name={name!r} of {type(module).__name__} has {len(hooks)} pruning "
                           "hooks; use a PruningContainer")
    if hooks:  # already pruned: rank what remains of the current weights
        key, old = hooks[0]
        return key, old, old.apply_mask(module).detach(), getattr(module, name + "_mask") != 0
    if module._parameters.get(name) is None:
        params = ", ".join(n for n, p in module._parameters.items() if p is not None)
        raise ValueError(f"name={name!r} is not a parameter of {type(module).__name__} "
                         f"(its parameters: {params or 'none'})")
    param = module._parameters[name]
    if not param.is_floating_point():
        raise TypeError(f"name={name!r}: only floating-point parameters can be pruned, got {param.dtype}")
    for suffix in ("_orig", "_mask"):
        if hasattr(module, name + suffix):
            raise ValueError(f"name={name!r}: {type(module).__name__} already has an attribute "
                             f"{name + suffix!r}")
    return None, None, param.detach(), torch.ones_like(param, dtype=torch.bool)


def _scores(importance_scores, t: torch.Tensor, name: str) -> torch.Tensor:
    if importance_scores is None:
        return t
    if not isinstance(importance_scores, torch.Tensor):
        raise TypeError(f"importance_scores for {name!r} must be a tensor, got {type(importance_scores).__name__}")
    if importance_scores.shape != t.shape or importance_scores.device != t.device:
        raise ValueError(f"importance_scores for {name!r} must have the shape {tuple(t.shape)} and "
                         f"device {t.device} of the parameter, got {tuple(importance_scores.shape)} "
                         f"on {importance_scores.device}")
    if not importance_scores.is_floating_point():
        raise TypeError(f"importance_scores for {name!r} must be floating-point, got {importance_scores.dtype}")
    return importance_scores.detach()


class _BoolPruning(BasePruningMethod):
    """Our ``apply``: validate, compute the bool mask, only then reparametrize. Listed after
    torch's class in each subclass's bases, so torch's ``apply`` (and its signature) runs first
    and its ``super().apply(...)`` lands here. ``compute_mask`` of every subclass already
    respects ``default_mask`` (amount applies to what it keeps), so no slicing is needed."""

    @classmethod
    def apply(cls, module, name, *args, importance_scores=None, **kwargs):
        method = cls(*args, **kwargs)  # torch's __init__ checks the amount's type and range
        method._tensor_name = name
        key, old, current, keep = _state(module, name)
        mask = method.compute_mask(_scores(importance_scores, current, name), default_mask=keep)
        # Nothing above modified the module; nothing below can fail on valid input.
        if old is None:
            module.register_parameter(name + "_orig", module._parameters[name])
            del module._parameters[name]
        else:
            del module._forward_pre_hooks[key]
            container = PruningContainer()
            container._tensor_name = name
            for m in (list(old) if isinstance(old, _tp.PruningContainer) else [old]) + [method]:
                container.add_pruning_method(m)
            method = container
        module.register_buffer(name + "_mask", mask)
        setattr(module, name, method.apply_mask(module))
        module.register_forward_pre_hook(method)
        return method


def _channels(method, t: torch.Tensor, keep: torch.Tensor):
    """(dim >= 0, other dims, channels that still hold a kept weight)."""
    dim = method.dim
    if t.dim() <= 1:
        raise ValueError(f"{_label(method)}: structured pruning needs a tensor of 2 or more dims, "
                         f"got shape {tuple(t.shape)}")
    if not -t.dim() <= dim < t.dim():
        raise IndexError(f"dim={dim} is out of range for a {t.dim()}-D tensor of shape {tuple(t.shape)}")
    dim %= t.dim()
    others = [d for d in range(t.dim()) if d != dim]
    return dim, others, keep.any(dim=others)


def _label(method) -> str:
    return repr(getattr(method, "_tensor_name", "the tensor"))


def _expand(channel_keep: torch.Tensor, t: torch.Tensor, dim: int) -> torch.Tensor:
    return channel_keep.view([-1 if d == dim else 1 for d in range(t.dim())])


class PruningContainer(_tp.PruningContainer):
    """torch's container with bool masks: our methods compute on the whole tensor; another
    method (torch's, a user's) gets torch's slicing and its mask is made bool."""

    def compute_mask(self, t, default_mask):
        method = self._pruning_methods[-1]
        if isinstance(method, _BoolPruning):
            return method.compute_mask(t, _as_bool(default_mask))
        return _as_bool(super().compute_mask(t, default_mask))


class Identity(_tp.Identity, _BoolPruning):
    """Reparametrizes without pruning (an all-True mask)."""

    def compute_mask(self, t, default_mask):
        return _as_bool(default_mask).clone()


class L1Unstructured(_tp.L1Unstructured, _BoolPruning):
    """Prunes ``amount`` of the remaining weights with the smallest |t|, by exact radix select."""

    def compute_mask(self, t, default_mask):
        keep = _as_bool(default_mask)
        k = resolve_amount(self.amount, int(keep.count_nonzero()))
        try:
            return magnitude_mask(t, k, mask=None if bool(keep.all()) else keep)
        except ValueError as e:
            raise ValueError(f"cannot rank {_label(self)} "
                             f"(or its importance_scores): {e}") from e


class RandomUnstructured(_tp.RandomUnstructured, _BoolPruning):
    """Prunes ``amount`` of the remaining weights at random (the same draws as torch's)."""

    def compute_mask(self, t, default_mask):
        keep = _as_bool(default_mask)
        n = int(keep.count_nonzero())
        k = resolve_amount(self.amount, n)
        mask = keep.clone()
        if k:
            prob = torch.rand_like(t) if n == t.numel() else torch.rand_like(t[keep])
            drop = torch.topk(prob.reshape(-1), k=k).indices
            if n != t.numel():
                drop = keep.reshape(-1).nonzero().squeeze(1)[drop]
            mask.view(-1)[drop] = False
        return mask


class RandomStructured(_tp.RandomStructured, _BoolPruning):
    """Prunes ``amount`` of the remaining channels along ``dim`` at random (torch's draws)."""

    def compute_mask(self, t, default_mask):
        keep = _as_bool(default_mask)
        dim, _, alive = _channels(self, t, keep)
        k = resolve_amount(self.amount, int(alive.count_nonzero()))
        if k == 0:
            return keep.clone()
        prob = torch.rand(int(alive.count_nonzero()))  # on the CPU generator, as torch does
        chosen = alive.clone()
        chosen[alive] = (prob > torch.kthvalue(prob, k).values).to(alive.device)
        return keep & _expand(chosen, t, dim)


class LnStructured(_tp.LnStructured, _BoolPruning):
    """Prunes ``amount`` of the remaining channels along ``dim`` with the smallest Ln norm."""

    def compute_mask(self, t, default_mask):
        keep = _as_bool(default_mask)
        dim, others, alive = _channels(self, t, keep)
        k = resolve_amount(self.amount, int(alive.count_nonzero()))
        if k == 0:
            return keep.clone()
        norms = torch.norm(t.detach(), p=self.n, dim=others)
        if torch.isnan(norms).any():
            raise ValueError(f"{_label(self)} (or its "
                             "importance_scores) holds NaN: channel norms cannot be ranked")
        idx = alive.nonzero().squeeze(1)
        drop = idx[torch.sort(norms[idx], stable=True).indices[:k]]
        chosen = alive.clone()
        chosen[drop] = False
        return keep & _expand(chosen, t, dim)


class CustomFromMask(_tp.CustomFromMask, _BoolPruning):
    """Applies a given binary ``mask`` (any dtype; nonzero = keep) on top of the current one."""

    def compute_mask(self, t, default_mask):
        m = self.mask
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"mask must be a tensor, got {type(m).__name__}")
        if m.shape != t.shape:
            raise ValueError(f"mask must have the shape {tuple(t.shape)} of the parameter, got {tuple(m.shape)}")
        if m.dtype != torch.bool and not ((m == 0) | (m == 1)).all():
            raise ValueError("mask must be binary (0/1 or bool); bool masks cannot scale weights")
        return _as_bool(default_mask) & _as_bool(m).to(default_mask.device)


def identity(module, name):
    """Reparametrizes ``module.<name>`` with an all-True mask; returns ``module``."""
    Identity.apply(module, name)
    return module


def random_unstructured(module, name, amount):
    """Prunes ``amount`` (fraction or count) of the remaining entries at random."""
    RandomUnstructured.apply(module, name, amount)
    return module


def l1_unstructured(module, name, amount, importance_scores=None):
    """Prunes ``amount`` of the remaining entries with the smallest |importance_scores|
    (default: the parameter)."""
    L1Unstructured.apply(module, name, amount=amount, importance_scores=importance_scores)
    return module


def random_structured(module, name, amount, dim):
    """Prunes ``amount`` of the remaining channels along ``dim`` at random."""
    RandomStructured.apply(module, name, amount, dim)
    return module


def ln_structured(module, name, amount, n, dim, importance_scores=None):
    """Prunes ``amount`` of the remaining channels along ``dim`` with the smallest Ln norm
    (``n`` as ``p`` of :func:`torch.norm`)."""
    LnStructured.apply(module, name, amount, n, dim, importance_scores=importance_scores)
    return module


def custom_from_mask(module, name, mask):
    """Prunes where the binary ``mask`` is 0/False, on top of any previous pruning."""
    CustomFromMask.apply(module, name, mask)
    return module


def global_unstructured(parameters, pruning_method, importance_scores=None, **kwargs) -> None:
    """Prunes ``amount`` (in ``kwargs``) of all remaining entries of ``parameters`` (an iterable
    of ``(module, name)``) together. With ``L1Unstructured`` (ours or torch's) one exact threshold
    is found across the tensors without concatenating them; other unstructured methods run on the
    concatenation, as torch does. ``importance_scores`` maps ``(module, name)`` to a tensor."""
    if not isinstance(parameters, Iterable):
        raise TypeError("parameters must be an iterable of (module, name) pairs")
    parameters = list(parameters)
    importance_scores = {} if importance_scores is None else importance_scores
    if not isinstance(importance_scores, dict):
        raise TypeError("importance_scores must be a dict mapping (module, name) to a tensor")
    method = pruning_method(**kwargs)
    if method.PRUNING_TYPE != "unstructured":
        raise TypeError(f"pruning_method must be unstructured, got {pruning_method} of type {method.PRUNING_TYPE}")
    states = [_state(m, n) for m, n in parameters]
    scores = [_scores(importance_scores.get((m, n)), s[2], n) for (m, n), s in zip(parameters, states)]
    keeps = [s[3] for s in states]
    if pruning_method in (L1Unstructured, _tp.L1Unstructured):
        k = resolve_amount(method.amount, sum(int(keep.count_nonzero()) for keep in keeps))
        try:
            masks = global_magnitude_masks(scores, k, masks=None if all(bool(x.all()) for x in keeps) else keeps)
        except ValueError as e:
            bad = next((i for i, s in enumerate(scores) if torch.isnan(s).any()), None)
            if bad is None:
                raise
            raise ValueError(f"parameters[{bad}] ({parameters[bad][1]!r}) or its importance score "
                             "holds NaN: magnitudes cannot be ranked") from e
    else:
        container = PruningContainer()
        container._tensor_name = method._tensor_name = "temp"
        container.add_pruning_method(method)
        flat = container.compute_mask(torch.cat([s.reshape(-1) for s in scores]),
                                      torch.cat([x.reshape(-1) for x in keeps]))
        masks = [m.view_as(s) for m, s in zip(flat.split([s.numel() for s in scores]), scores)]
    for (module, name), mask in zip(parameters, masks):
        CustomFromMask.apply(module, name, mask=mask)


def remove(module, name):
    """Makes the pruning of ``module.<name>`` permanent: ``<name>`` becomes a plain parameter
    again (holding ``orig * mask``); ``<name>_orig``, ``<name>_mask`` and the hook go."""
    hooks = _hooks_for(module, name)
    if hooks:
        key, hook = hooks[0]
        hook.remove(module)
        del module._forward_pre_hooks[key]
        return module
    raise ValueError(f"Parameter '{name}' of module {module} has to be pruned before pruning can be removed")


def is_pruned(module) -> bool:
    """True if ``module`` or a submodule holds a pruning hook (ours or torch's)."""
    return any(isinstance(h, BasePruningMethod)
               for m in module.modules() for h in m._forward_pre_hooks.values())


def remove_all(module) -> list:
    """Makes every pruning in ``module`` and its submodules permanent; returns the
    ``(submodule, name)`` pairs it made permanent."""
    done = []
    for m in module.modules():
        for name in [h._tensor_name for h in m._forward_pre_hooks.values() if isinstance(h, BasePruningMethod)]:
            remove(m, name)
            done.append((m, name))
    return done


@dataclass(frozen=True)
class SparsityRow:
    """One tensor: ``zeros`` counts pruned entries and weights that are exactly zero."""
    name: str
    shape: tuple
    numel: int
    zeros: int
    masked: bool  # still reparametrized (<name>_orig and <name>_mask)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Per-tensor rows and the overall sparsity over them; ``str()`` gives a table."""
    rows: list = field(default_factory=list)

    numel = property(lambda self: sum(r.numel for r in self.rows))
    zeros = property(lambda self: sum(r.zeros for r in self.rows))
    sparsity = property(lambda self: self.zeros / self.numel if self.numel else 0.0)

    def __getitem__(self, name: str) -> SparsityRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def __str__(self) -> str:
        pct = lambda x: f"{100 * x.sparsity:.2f}%"
        table = [("tensor", "shape", "numel", "zeros", "sparsity")]
        table += [(r.name + " (masked)" * r.masked, str(r.shape), r.numel, r.zeros, pct(r)) for r in self.rows]
        table += [("total", "", self.numel, self.zeros, pct(self))]
        width = [max(len(str(row[i])) for row in table) for i in range(5)]
        lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                           for i, (c, w) in enumerate(zip(row, width))) for row in table]
        rule = "-" * len(lines[0])
        return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])


@torch.no_grad()
def sparsity_report(module, *, include_unpruned: bool = True) -> SparsityReport:
    """Sparsity of every floating-point parameter of ``module`` (only the masked ones if
    ``include_unpruned`` is False), read from ``<name>_orig * <name>_mask`` so it is exact even
    before the next forward."""
    rows = []
    for prefix, m in module.named_modules():
        masked = {h._tensor_name for h in m._forward_pre_hooks.values() if isinstance(h, BasePruningMethod)}
        for name, p in list(m._parameters.items()):
            base = name[:-len("_orig")] if name.endswith("_orig") else None
            if base in masked:
                zeros = int(((getattr(m, base + "_mask") == 0) | (p == 0)).count_nonzero())
                name = base
            elif p is None or not p.is_floating_point() or not include_unpruned:
                continue
            else:
                zeros = int((p == 0).count_nonzero())
            rows.append(SparsityRow(f"{prefix}.{name}" if prefix else name, tuple(p.shape), p.numel(),
                                    zeros, name in masked))
    return SparsityReport(rows)
