"""Shrinking: removes pruned units (rows of one layer and the matching columns of the next) from
pairs of Linear or Conv2d layers, so the model gets smaller and faster, not only sparser. Every
function validates its arguments before touching a module, and errors name the argument.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from .structured import structured_mask

__all__ = ["shrink_linear_pair", "shrink_conv_pair", "shrink_mlp_", "shrink_dead_units_"]


def _check_keep(keep, count: int, owner: str) -> torch.Tensor:
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.shape != (count,):
        raise ValueError(f"keep must be a bool tensor of shape ({count},) (the units of {owner}), got "
                         f"{getattr(keep, 'dtype', type(keep).__name__)} {tuple(getattr(keep, 'shape', ()))}")
    return keep


def _uninitialized(cls: type, *args, **kwargs) -> nn.Module:
    """cls(*args, **kwargs) without the random init (its values are overwritten anyway)."""
    with warnings.catch_warnings():  # layers left with no units warn at (skipped) init
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        return nn.utils.skip_init(cls, *args, **kwargs)


def _copy_params(new: nn.Module, old: nn.Module, weight: torch.Tensor, bias) -> nn.Module:
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    return new.train(old.training)


def _bias_rows(layer: nn.Module, keep):
    return None if layer.bias is None else layer.bias.detach()[keep]


def shrink_linear_pair(fc1: nn.Linear, fc2: nn.Linear,
                       keep: torch.Tensor) -> tuple[nn.Linear, nn.Linear]:
    """New (fc1', fc2') without fc1's output units where `keep` is False and without the matching
    input columns of fc2. For any elementwise activation `act`,
    fc2'(act(fc1'(x))) == fc2(act(fc1(x)) * keep). Dtype, device, bias, requires_grad and
    training mode are preserved; the originals are untouched (hooks are not carried over)."""
    if not isinstance(fc1, nn.Linear):
        raise TypeError(f"fc1 must be an nn.Linear, got {type(fc1).__name__}")
    if not isinstance(fc2, nn.Linear):
        raise TypeError(f"fc2 must be an nn.Linear, got {type(fc2).__name__}")
    if fc2.in_features != fc1.out_features:
        raise ValueError(f"fc2.in_features ({fc2.in_features}) must equal "
                         f"fc1.out_features ({fc1.out_features})")
    keep = _check_keep(keep, fc1.out_features, "fc1").to(fc1.weight.device)
    kept, w1, w2 = int(keep.sum()), fc1.weight, fc2.weight
    new1 = _uninitialized(nn.Linear, fc1.in_features, kept, bias=fc1.bias is not None,
                          device=w1.device, dtype=w1.dtype)
    new2 = _uninitialized(nn.Linear, kept, fc2.out_features, bias=fc2.bias is not None,
                          device=w2.device, dtype=w2.dtype)
    keep2 = keep.to(w2.device)
    return (_copy_params(new1, fc1, w1.detach()[keep], _bias_rows(fc1, keep)),
            _copy_params(new2, fc2, w2.detach()[:, keep2], _bias_rows(fc2, slice(None))))


def _conv_like(conv: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    return _uninitialized(
        nn.Conv2d, in_channels, out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=1, bias=conv.bias is not None,
        padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)


def shrink_conv_pair(conv1: nn.Conv2d, conv2: nn.Conv2d,
                     keep: torch.Tensor) -> tuple[nn.Conv2d, nn.Conv2d]:
    """shrink_linear_pair for two Conv2d layers: removes conv1's out-channels where `keep` is
    False and the matching in-channels of conv2. Only groups=1 convolutions are supported."""
    for name, conv in (("conv1", conv1), ("conv2", conv2)):
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{name} must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"{name} has groups={conv.groups}; only groups=1 convolutions can be shrunk")
    if conv2.in_channels != conv1.out_channels:
        raise ValueError(f"conv2.in_channels ({conv2.in_channels}) must equal conv1.out_channels "
                         f"({conv1.out_channels})")
    keep = _check_keep(keep, conv1.out_channels, "conv1").to(conv1.weight.device)
    kept = int(keep.sum())
    keep2 = keep.to(conv2.weight.device)
    return (_copy_params(_conv_like(conv1, conv1.in_channels, kept), conv1,
                         conv1.weight.detach()[keep], _bias_rows(conv1, keep)),
            _copy_params(_conv_like(conv2, kept, conv2.out_channels), conv2,
                         conv2.weight.detach()[:, keep2], _bias_rows(conv2, slice(None))))


def shrink_mlp_(module: nn.Module, fc1_name: str, fc2_name: str, amount, n: float = 2) -> torch.Tensor:
    """In place on `module`: prunes `amount` of the output units of submodule `fc1_name` (by the
    Ln norms of its weight rows, see structured_mask) and replaces `fc1_name` and `fc2_name`
    (dotted names allowed) with their shrunk versions. Both must be nn.Linear or both nn.Conv2d.
    Returns the keep mask; `module` is left unchanged if an argument is rejected."""
    layers = []
    for arg, name in (("fc1_name", fc1_name), ("fc2_name", fc2_name)):
        if not isinstance(name, str) or not name:
            raise ValueError(f"{arg} must be a non-empty submodule name, got {name!r}")
        try:
            layers.append(module.get_submodule(name))
        except (AttributeError, TypeError) as e:
            raise AttributeError(f"{arg}: no submodule {name!r} in {type(module).__name__} ({e})") from e
    fc1, fc2 = layers
    if fc1 is fc2:
        raise ValueError(f"fc1_name and fc2_name must name different layers, got {fc1_name!r}, {fc2_name!r}")
    if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
        shrink = shrink_linear_pair
    elif isinstance(fc1, nn.Conv2d) and isinstance(fc2, nn.Conv2d):
        shrink = shrink_conv_pair
    else:
        raise TypeError(f"fc1_name and fc2_name must name two nn.Linear or two nn.Conv2d layers, got "
                        f"{type(fc1).__name__} and {type(fc2).__name__}")
    keep = structured_mask(fc1.weight, amount, n=n, dim=0)
    new1, new2 = shrink(fc1, fc2, keep)
    for name, new in ((fc1_name, new1), (fc2_name, new2)):
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent), attr, new)
    return keep


# Modules that act on each unit alone (so a unit's value depends on that unit only).
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
                nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Softplus, nn.Identity, nn.Dropout)


@torch.no_grad()
def shrink_dead_units_(model: nn.Module) -> dict:
    """In place, exactly: in every nn.Sequential of `model`, for each Linear -> (elementwise
    activations, dropout) -> Linear chain, removes the hidden units that cannot matter: those
    whose column in the second Linear is all zero, and those whose row in the first Linear is all
    zero (the unit then outputs the constant act(bias), which is folded into the second Linear's
    bias). Outputs are unchanged (up to float rounding of the folded bias) in eval mode; dropout
    is taken as identity. Returns {"<seq>.<i>": units removed} for each chain shrunk."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    removed = {}
    while True:  # removing units can leave others dead upstream: repeat until nothing changes
        changed = False
        for seq_name, seq in list(model.named_modules()):
            if isinstance(seq, nn.Sequential):
                for i, count in _shrink_sequential(seq):
                    key = f"{seq_name}.{i}" if seq_name else str(i)
                    removed[key] = removed.get(key, 0) + count
                    changed = True
        if not changed:
            return removed


def _shrink_sequential(seq: nn.Sequential):
    """One pass of shrink_dead_units_ over one Sequential: yields (index of fc1, units removed)."""
    for i in range(len(seq)):
        j = i + 1
        while j < len(seq) and type(seq[j]) in _ELEMENTWISE:
            j += 1
        if type(seq[i]) is not nn.Linear or j >= len(seq) or type(seq[j]) is not nn.Linear:
            continue
        fc1, fc2 = seq[i], seq[j]
        row_alive = fc1.weight.detach().ne(0).any(dim=1)
        col_alive = fc2.weight.detach().ne(0).any(dim=0)
        keep = row_alive & col_alive
        if bool(keep.all()):
            continue
        fold = ~row_alive & col_alive  # constant units: act(bias) flows on through fc2
        if bool(fold.any()):
            constant = torch.zeros(fc1.out_features, dtype=fc1.weight.dtype, device=fc1.weight.device)
            if fc1.bias is not None:
                constant = fc1.bias.detach().clone()
            for act in list(seq)[i + 1:j]:
                if not isinstance(act, nn.Dropout):
                    constant = act(constant)
            shift = fc2.weight.detach()[:, fold] @ constant[fold]
            if fc2.bias is None:
                fc2.bias = nn.Parameter(torch.zeros_like(shift))
            fc2.bias.add_(shift)
        seq[i], seq[j] = shrink_linear_pair(fc1, fc2, keep)
        yield i, int((~keep).sum())
