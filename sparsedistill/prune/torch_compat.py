"""Drop-in replacement for ``torch.nn.utils.prune`` with bool masks and exact fast selection.

Change ``from torch.nn.utils import prune`` to ``from sparsedistill import prune`` and the same
calls give the same reparametrization: ``<name>_orig`` parameter, ``<name>_mask`` buffer and a
forward pre-hook, with the same state_dict keys, so checkpoints load both ways (``load_state_dict``
copies a float 0/1 mask into our bool buffer and back). Iterative pruning works as torch's
``PruningContainer``: each new amount applies to what remains. torch's private helpers that its
users call (``_validate_pruning_amount_init``, ``_validate_pruning_amount``,
``_compute_nparams_toprune``, ``_validate_pruning_dim``, ``_validate_structured_pruning``,
``_compute_norm``) are torch's own, re-exported. Differences:

* masks are ``torch.bool`` (a quarter of float32's memory), also after iterative pruning. A
  mask that is not 0/1 (``custom_from_mask`` with a soft mask) stays a float mask and scales
  the weights by multiplication, as in torch. For code that needs float masks (``1 - m.weight_mask``,
  ``m.weight_mask.mean()``, ``F.linear(x, m.weight_mask)``)::

      prune.set_mask_dtype(None)           # masks in torch's own dtypes (the parameter's dtype)
      prune.set_mask_dtype(torch.float32)  # or every new mask in one floating dtype
      prune.set_mask_dtype(torch.bool)     # back to the default; returns the previous setting
      prune.get_mask_dtype()               # torch.bool, a floating dtype or None
      with prune.mask_dtype(None): ...     # the same for a block (also a decorator)

  The setting is process-wide and applies to masks made from then on (by ``apply``, the
  functions and ``compute_mask``); masks already registered keep their dtype;
* L1 selection (``l1_unstructured``, ``global_unstructured`` with ``L1Unstructured``, ours or
  torch's) uses the exact radix-select op of :mod:`sparsedistill.prune` (ties: lowest index
  pruned first; integer tensors are ranked exactly by a stable sort); ``ln_structured`` ranks
  channel norms by a stable sort (same tie rule). ``compute_mask`` called directly has
  torch's semantics (``amount`` of the whole tensor, then combined with ``default_mask``);
  ``PruningContainer`` applies it to what remains. The random methods, ``identity`` and
  ``custom_from_mask`` run torch's own ``compute_mask``, so they draw as torch does and
  ``mock.patch`` of a ``compute_mask`` (torch's class or ours) takes effect; a patched or
  overridden ``compute_mask`` of L1/Ln is called instead of the fast path too;
* arguments are checked and the mask computed before the module is touched: an error (it names
  the argument) leaves the module exactly as it was. Errors have torch's types (an unknown
  parameter name: ``AttributeError``; an attribute that is not a parameter: ``TypeError``; a
  shape mismatch: an error that is both ``ValueError`` and torch's ``AssertionError``). NaN in
  ranked weights is an error;
* re-pruning ranks the current ``orig * mask`` (torch reads ``module.<name>``, which is stale
  until the next forward, e.g. after ``load_state_dict`` or an optimizer step).

The pruning classes subclass torch's (``isinstance(h, torch.nn.utils.prune.L1Unstructured)``
holds, and ``torch.nn.utils.prune.remove``/``is_pruned`` accept modules pruned here). Extras:
:func:`remove_all` and :func:`sparsity_report`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune as _tp
from torch.nn.utils.prune import (  # noqa: F401  (the _ names: torch's helpers, for code that calls them)
    BasePruningMethod,
    _compute_norm,
    _compute_nparams_toprune,
    _validate_pruning_amount,
    _validate_pruning_amount_init,
    _validate_pruning_dim,
    _validate_structured_pruning,
)

from .._common import FLOAT_DTYPES
from .checks import resolve_amount
from .magnitude import global_magnitude_masks, magnitude_mask

__all__ = ["BasePruningMethod", "PruningContainer", "Identity", "RandomUnstructured",
           "L1Unstructured", "RandomStructured", "LnStructured", "CustomFromMask", "identity",
           "random_unstructured", "l1_unstructured", "random_structured", "ln_structured",
           "global_unstructured", "custom_from_mask", "remove", "is_pruned", "remove_all",
           "sparsity_report", "SparsityReport", "SparsityRow", "set_mask_dtype", "get_mask_dtype",
           "mask_dtype"]

# ----------------------------------------------------------------------------- mask dtype
_MASK_DTYPE = torch.bool  # torch.bool, a floating dtype, or None: torch's own dtypes


def set_mask_dtype(dtype):
    """Sets the dtype of the masks made from now on, process-wide, and returns the previous
    setting: ``torch.bool`` (the default; a non-binary mask stays float), a floating dtype
    (every mask in it), or ``None`` (torch's own dtypes: in practice the parameter's)."""
    global _MASK_DTYPE
    if not (dtype is None or dtype == torch.bool
            or (isinstance(dtype, torch.dtype) and dtype.is_floating_point)):
        raise TypeError(f"mask dtype must be torch.bool, a floating-point torch.dtype or None "
                        f"(torch's own dtypes), got {dtype!r}")
    previous, _MASK_DTYPE = _MASK_DTYPE, dtype
    return previous


def get_mask_dtype():
    """The dtype new masks get: ``torch.bool``, a floating dtype, or ``None`` (torch's)."""
    return _MASK_DTYPE


@contextlib.contextmanager
def mask_dtype(dtype):
    """``set_mask_dtype(dtype)`` for the ``with`` block (or decorated function); the previous
    setting comes back on exit, also on an error."""
    previous = set_mask_dtype(dtype)
    try:
        yield
    finally:
        set_mask_dtype(previous)


def _is_binary(m: torch.Tensor) -> bool:
    return m.dtype == torch.bool or bool(((m == 0) | (m == 1)).all())


def _finish(mask: torch.Tensor, torch_dtype=None) -> torch.Tensor:
    """``mask`` (in ``torch_dtype``: the dtype torch's result has) in the mask dtype in force."""
    torch_dtype = mask.dtype if torch_dtype is None else torch_dtype
    if _MASK_DTYPE is None:
        return mask.to(torch_dtype)
    if _MASK_DTYPE != torch.bool:
        return mask.to(_MASK_DTYPE)
    if mask.dtype == torch.bool:
        return mask
    if _is_binary(mask):
        return mask != 0
    return mask.to(torch_dtype)  # a soft mask scales by multiplication: it stays float


def _combine(default_mask: torch.Tensor, keep, torch_dtype) -> torch.Tensor:
    """``default_mask`` with the entries where ``keep`` (broadcast; None: all) is False set to
    0, as torch gives it (in ``torch_dtype``), in the mask dtype in force."""
    if default_mask.dtype == torch.bool and _MASK_DTYPE == torch.bool:
        return default_mask.clone() if keep is None else default_mask & keep
    out = default_mask.to(torch_dtype)
    return _finish(out.clone() if keep is None else out * keep, torch_dtype)


# ----------------------------------------------------------------------------- checks
class _MismatchError(ValueError, AssertionError):
    """A shape or device mismatch: torch raises AssertionError there, we a ValueError; both hold."""


_MISSING = object()


def _hooks_for(module: nn.Module, name: str):
    return [(k, h) for k, h in module._forward_pre_hooks.items()
            if isinstance(h, BasePruningMethod) and h._tensor_name == name]


def _state(module, name):
    """Validates (module, name); returns (hook key, old hook, current tensor, current mask or None)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    hooks = _hooks_for(module, name)
    if len(hooks) > 1:
        raise AssertionError(f"name={name!r} of {type(module).__name__} has {len(hooks)} pruning "
                             "hooks; use a PruningContainer")
    if hooks:  # already pruned: rank what remains of the current weights
        key, old = hooks[0]
        return key, old, old.apply_mask(module).detach(), getattr(module, name + "_mask")
    if module._parameters.get(name) is None:
        params = ", ".join(n for n, p in module._parameters.items() if p is not None)
        where = f"{type(module).__name__} (its parameters: {params or 'none'})"
        if name in module._parameters:
            raise TypeError(f"name={name!r} is None in {where}: there is nothing to prune")
        if hasattr(module, name):
            raise TypeError(f"name={name!r} is not a parameter of {where}; only parameters can be pruned")
        raise AttributeError(f"name={name!r}: {where} has no parameter {name!r}")
    param = module._parameters[name]
    for suffix in ("_orig", "_mask"):
        if hasattr(module, name + suffix):
            raise KeyError(f"name={name!r}: {type(module).__name__} already has an attribute "
                           f"{name + suffix!r}")
    return None, None, param.detach(), None


def _scores(importance_scores, t: torch.Tensor, name: str) -> torch.Tensor:
    if importance_scores is None:
        return t
    if not isinstance(importance_scores, torch.Tensor):
        raise TypeError(f"importance_scores for {name!r} must be a tensor, got {type(importance_scores).__name__}")
    if importance_scores.shape != t.shape or importance_scores.device != t.device:
        raise _MismatchError(f"importance_scores for {name!r} must have the shape {tuple(t.shape)} and "
                             f"device {t.device} of the parameter, got {tuple(importance_scores.shape)} "
                             f"on {importance_scores.device}")
    return importance_scores.detach()


def _label(method) -> str:
    return repr(getattr(method, "_tensor_name", None) or "the tensor")


def _alive(mask: torch.Tensor) -> torch.Tensor:
    """The entries still to prune from, as torch's PruningContainer sees them (mask == 1)."""
    return mask if mask.dtype == torch.bool else mask == 1


def _structured_dim(method, t: torch.Tensor) -> int:
    """method.dim as a dim >= 0 of t (torch's errors: ValueError, IndexError)."""
    dim = method.dim
    if t.dim() <= 1:
        raise ValueError(f"{_label(method)}: structured pruning needs a tensor of 2 or more dims, "
                         f"got shape {tuple(t.shape)}")
    if not -t.dim() <= dim < t.dim():
        raise IndexError(f"dim={dim} is out of range for a {t.dim()}-D tensor of shape {tuple(t.shape)}")
    return dim % t.dim()


def _alive_channels(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Channels along dim that hold a nonzero mask entry (torch: mask.sum(other dims) != 0)."""
    others = [d for d in range(mask.dim()) if d != dim]
    return mask.any(dim=others) if mask.dtype == torch.bool else mask.sum(dim=others) != 0


def _expand(channel_keep: torch.Tensor, t: torch.Tensor, dim: int) -> torch.Tensor:
    return channel_keep.view([-1 if d == dim else 1 for d in range(t.dim())])


def _precheck(method, t: torch.Tensor, mask, name: str) -> None:
    """Our checks of a method's arguments against the tensor, before its compute_mask runs
    (torch's raise the same types, some only after touching the module)."""
    if isinstance(method, _tp.CustomFromMask):
        m = method.mask
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"mask for {name!r} must be a tensor, got {type(m).__name__}")
        if m.shape != t.shape:
            raise _MismatchError(f"mask must have the shape {tuple(t.shape)} of {name!r}, got {tuple(m.shape)}")
        if m.device != t.device:
            method.mask = m.to(t.device)
        return
    kind = getattr(method, "PRUNING_TYPE", None)
    if kind == "structured" and hasattr(method, "dim"):
        dim = _structured_dim(method, t)
        if hasattr(method, "amount"):
            resolve_amount(method.amount, t.shape[dim] if mask is None
                           else int(_alive_channels(mask, dim).count_nonzero()))
    elif kind == "unstructured" and hasattr(method, "amount"):
        resolve_amount(method.amount, t.numel() if mask is None else int(_alive(mask).count_nonzero()))


# ----------------------------------------------------------------------------- which path
_TORCH_COMPUTE = {c: c.__dict__["compute_mask"] for c in (
    _tp.Identity, _tp.RandomUnstructured, _tp.L1Unstructured, _tp.RandomStructured,
    _tp.LnStructured, _tp.CustomFromMask)}


def _torch_intact(cls) -> bool:
    """torch's cls.compute_mask is not patched (e.g. by mock.patch)."""
    return cls.__dict__.get("compute_mask") is _TORCH_COMPUTE[cls]


def _fast(method) -> bool:
    """The method is one of our accelerated ones with its compute_mask neither patched nor
    overridden (ours or torch's): we may compute its mask on bool masks, our way."""
    for ours, (own, theirs) in _OWN_COMPUTE.items():
        if isinstance(method, ours):
            return type(method).compute_mask is own and _torch_intact(theirs)
    return False


def _bool_safe(method) -> bool:
    """torch's own compute_mask of the method gives the same result on a bool default mask
    (and applies to the whole tensor): identity, and a binary custom mask."""
    f = type(method).compute_mask
    if f is _TORCH_COMPUTE[_tp.Identity]:
        return True
    return (f is _TORCH_COMPUTE[_tp.CustomFromMask] and method.PRUNING_TYPE == "global"
            and isinstance(method.mask, torch.Tensor) and _is_binary(method.mask))


# ----------------------------------------------------------------------------- apply
def _apply(module, name, method, importance_scores):
    key, old, current, old_mask = _state(module, name)
    scores = _scores(importance_scores, current, name)
    _precheck(method, scores, old_mask, name)
    if old is None:
        hook = method
        if _MASK_DTYPE == torch.bool and (_fast(method) or _bool_safe(method)):
            default = torch.ones_like(current, dtype=torch.bool)
        else:
            default = torch.ones_like(current)  # torch's (its methods get torch's inputs)
        mask = method.compute_mask(scores, default_mask=default)
    else:
        hook = PruningContainer()
        hook._tensor_name = name
        for m in (list(old) if isinstance(old, _tp.PruningContainer) else [old]) + [method]:
            hook.add_pruning_method(m)
        mask = hook.compute_mask(scores, default_mask=old_mask.detach().clone(memory_format=torch.contiguous_format))
    if not isinstance(mask, torch.Tensor) or mask.shape != current.shape or mask.device != current.device:
        raise _MismatchError(f"{type(method).__name__}.compute_mask must return a tensor of the shape "
                             f"{tuple(current.shape)} and device {current.device} of {name!r}, got "
                             + (f"{tuple(mask.shape)} on {mask.device}" if isinstance(mask, torch.Tensor)
                                else type(mask).__name__))
    _commit(module, name, key, hook, _finish(mask))
    return hook


def _commit(module, name, key, hook, mask) -> None:
    """Reparametrizes (as torch's apply does); on an error everything is put back as it was."""
    saved = [(d, dict(d)) for d in (module._parameters, module._buffers, module._forward_pre_hooks)]
    value = module._parameters[name] if key is None else module.__dict__.get(name, _MISSING)
    try:
        if key is None:
            module.register_parameter(name + "_orig", module._parameters[name])
            del module._parameters[name]
        else:
            del module._forward_pre_hooks[key]
        module.register_buffer(name + "_mask", mask)
        setattr(module, name, hook.apply_mask(module))
        module.register_forward_pre_hook(hook)
    except BaseException:
        for d, copy in saved:
            d.clear()
            d.update(copy)
        module.__dict__.pop(name, None)
        if value is not _MISSING:
            setattr(module, name, value)  # through the module's __setattr__ (an RNN's flat weights)
        raise


class _Compat(BasePruningMethod):
    """Our ``apply``: validate, compute the mask, only then reparametrize. Listed after torch's
    class in each subclass's bases, so torch's ``apply`` (and its signature) runs first and its
    ``super().apply(...)`` lands here."""

    @classmethod
    def apply(cls, module, name, *args, importance_scores=None, **kwargs):
        method = cls(*args, **kwargs)  # torch's __init__ checks the amount's type and range
        method._tensor_name = name
        return _apply(module, name, method, importance_scores)


class PruningContainer(_tp.PruningContainer):
    """torch's container: our accelerated methods compute on the whole tensor (the amount
    applies to what remains); any other method (torch's, a user's, a patched one) gets torch's
    slicing and torch's inputs; masks come out in the mask dtype in force."""

    def compute_mask(self, t, default_mask):
        method = self._pruning_methods[-1]
        if _fast(method):
            return method._compute_remaining(t, default_mask)
        if default_mask.dtype == torch.bool and _MASK_DTYPE == torch.bool and _bool_safe(method):
            return _finish(method.compute_mask(t, default_mask))
        if default_mask.dtype == torch.bool:
            default_mask = default_mask.to(t.dtype)
        return _finish(super().compute_mask(t, default_mask), t.dtype)


# ----------------------------------------------------------------------------- methods
class Identity(_tp.Identity, _Compat):
    """Reparametrizes without pruning (torch's compute_mask: an all-ones mask)."""


class RandomUnstructured(_tp.RandomUnstructured, _Compat):
    """Prunes ``amount`` of the remaining weights at random (torch's compute_mask and draws)."""


class RandomStructured(_tp.RandomStructured, _Compat):
    """Prunes ``amount`` of the remaining channels along ``dim`` at random (torch's compute_mask)."""


class CustomFromMask(_tp.CustomFromMask, _Compat):
    """Applies a given ``mask`` on top of the current one (torch's compute_mask: multiplies).
    A 0/1 mask of any dtype becomes a bool mask; a soft mask stays float and scales the weights."""


def _l1_keep(t: torch.Tensor, k: int, keep, label: str) -> torch.Tensor:
    """Bool keep-mask: the k smallest |t| among ``keep`` (None: all) pruned, ties lowest index
    first. Floats by exact radix select; integers exactly, by a stable sort."""
    t = t.detach()
    if t.is_complex():
        t = t.abs()
    if t.is_floating_point():
        if t.dtype not in FLOAT_DTYPES:
            t = t.float()
        try:
            return magnitude_mask(t, k, mask=keep)
        except ValueError as e:
            raise ValueError(f"cannot rank {label} (or its importance_scores): {e}") from e
    flat = t.reshape(-1).to(torch.int64).abs()
    idx = (keep.reshape(-1).nonzero().squeeze(1) if keep is not None
           else torch.arange(flat.numel(), device=flat.device))
    out = (keep.clone() if keep is not None else torch.ones_like(t, dtype=torch.bool)).contiguous()
    out.view(-1)[idx[torch.sort(flat[idx], stable=True).indices[:k]]] = False
    return out


class L1Unstructured(_tp.L1Unstructured, _Compat):
    """Prunes ``amount`` of the remaining weights with the smallest |t|, by exact radix select."""

    def compute_mask(self, t, default_mask):
        """torch's semantics: the ``amount`` smallest |t| of the whole tensor are pruned in
        (a copy of) ``default_mask``; ties lowest index first."""
        if not _torch_intact(_tp.L1Unstructured):  # torch's is patched: that one runs
            return super().compute_mask(t, default_mask)
        keep = _l1_keep(t, resolve_amount(self.amount, t.numel()), None, _label(self))
        return _combine(default_mask, keep, default_mask.dtype)

    def _compute_remaining(self, t, default_mask):
        """As in torch's PruningContainer: ``amount`` of the entries where default_mask == 1."""
        alive = _alive(default_mask)
        k = resolve_amount(self.amount, int(alive.count_nonzero()))
        keep = _l1_keep(t, k, None if bool(alive.all()) else alive, _label(self))
        if default_mask.dtype == torch.bool and _MASK_DTYPE == torch.bool:
            return keep  # False wherever default_mask is
        return _combine(default_mask, keep | ~alive, t.dtype)


class LnStructured(_tp.LnStructured, _Compat):
    """Prunes ``amount`` of the remaining channels along ``dim`` with the smallest Ln norm."""

    def _keep_channels(self, t, dim, k, alive):
        """Bool per channel: the k channels among ``alive`` (None: all) with the smallest norm
        pruned (stable sort: ties lowest index first)."""
        t = t.detach()
        norms = _compute_norm(t if t.is_floating_point() or t.is_complex() else t.double(), self.n, dim)
        idx = alive.nonzero().squeeze(1) if alive is not None else torch.arange(norms.numel(), device=norms.device)
        values = norms[idx]
        if torch.isnan(values).any():
            raise ValueError(f"{_label(self)} (or its importance_scores) holds NaN: channel norms "
                             "cannot be ranked")
        keep = torch.ones_like(norms, dtype=torch.bool)  # dead channels keep their mask, as in torch
        keep[idx[torch.sort(values, stable=True).indices[:k]]] = False
        return _expand(keep, t, dim)

    def compute_mask(self, t, default_mask):
        """torch's semantics: ``amount`` of all channels along ``dim``, then combined with
        ``default_mask``."""
        if not _torch_intact(_tp.LnStructured):
            return super().compute_mask(t, default_mask)
        dim = _structured_dim(self, t)
        k = resolve_amount(self.amount, t.shape[dim])
        if k == 0:
            return _finish(default_mask)
        return _combine(default_mask, self._keep_channels(t, dim, k, None), t.dtype)

    def _compute_remaining(self, t, default_mask):
        """As in torch's PruningContainer: ``amount`` of the channels that hold a kept weight."""
        dim = _structured_dim(self, t)
        alive = _alive_channels(default_mask, dim)
        k = resolve_amount(self.amount, int(alive.count_nonzero()))
        keep = None if k == 0 else self._keep_channels(t, dim, k, None if bool(alive.all()) else alive)
        return _combine(default_mask, keep, t.dtype)


# our accelerated compute_mask (as defined, before any patch) and the torch class it stands in for
_OWN_COMPUTE = {L1Unstructured: (L1Unstructured.__dict__["compute_mask"], _tp.L1Unstructured),
                LnStructured: (LnStructured.__dict__["compute_mask"], _tp.LnStructured)}


# ----------------------------------------------------------------------------- functions
def identity(module, name):
    """Reparametrizes ``module.<name>`` with an all-ones mask; returns ``module``."""
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
    """Multiplies the current mask by ``mask`` (0/1 or bool: prunes where it is 0; a soft mask
    stays a float mask that scales the weights, as in torch)."""
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
    method._tensor_name = "temp"
    if method.PRUNING_TYPE != "unstructured":
        raise TypeError(f"pruning_method must be unstructured, got {pruning_method} of type {method.PRUNING_TYPE}")
    states = [_state(m, n) for m, n in parameters]
    scores = [_scores(importance_scores.get((m, n)), s[2], n) for (m, n), s in zip(parameters, states)]
    olds = [s[3] for s in states]
    fast = _fast(method) if isinstance(method, L1Unstructured) else (
        type(method) is _tp.L1Unstructured and _torch_intact(_tp.L1Unstructured))
    if fast and all(s.dtype in FLOAT_DTYPES for s in scores):
        alive = [None if o is None else _alive(o) for o in olds]
        k = resolve_amount(method.amount, sum(s.numel() if a is None else int(a.count_nonzero())
                                              for s, a in zip(scores, alive)))
        keeps = (None if all(a is None or bool(a.all()) for a in alive) else
                 [torch.ones_like(s, dtype=torch.bool) if a is None else a for s, a in zip(scores, alive)])
        try:
            sel = global_magnitude_masks(scores, k, masks=keeps)
        except ValueError as e:
            bad = next((i for i, s in enumerate(scores) if torch.isnan(s).any()), None)
            if bad is None:
                raise
            raise ValueError(f"parameters[{bad}] ({parameters[bad][1]!r}) or its importance score "
                             "holds NaN: magnitudes cannot be ranked") from e
        # as torch's: the new mask includes the current one (custom_from_mask multiplies again)
        masks = [s if o is None or o.dtype == torch.bool else o * (s | ~a)
                 for s, o, a in zip(sel, olds, alive)]
    else:  # on the concatenation, as torch does (nothing is touched before the mask exists)
        container = PruningContainer()
        container._tensor_name = "temp"
        container.add_pruning_method(method)
        flat = container.compute_mask(
            torch.cat([s.reshape(-1) for s in scores]),
            torch.cat([(torch.ones_like(s, dtype=torch.bool) if o is None else o).reshape(-1)
                       for s, o in zip(scores, olds)]))
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
