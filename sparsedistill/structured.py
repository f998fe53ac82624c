"""Structured pruning: N:M masks, channel/group norms and masks, shrinking of layer pairs, and
the cubic sparsity schedule of Zhu & Gupta (2017).

Masks are True where a weight (or a channel) is kept, as in torch.nn.utils.prune and
sparsedistill.pruning. Ties are broken with the same rule everywhere in the package: among equal
magnitudes (or norms), the lowest index is pruned first. Every function validates its arguments
before touching anything, and errors name the offending argument.
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .pruning import resolve_amount

__all__ = ["nm_mask", "to_semi_structured", "channel_norms", "group_norms", "structured_mask",
           "shrink_linear_pair", "shrink_conv_pair", "shrink_mlp_", "shrink_dead_units_",
           "cubic_sparsity_schedule",
           "CubicSparsitySchedule"]


# ----------------------------------------------------------------------------- validation helpers
def _check_int(name: str, value, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_float_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t


def _check_dim(dim, t: torch.Tensor) -> int:
    dim = _check_int("dim", dim)
    if not -t.dim() <= dim < t.dim():
        raise ValueError(f"dim must lie in [{-t.dim()}, {t.dim()}) for a {t.dim()}-D tensor, got {dim}")
    return dim % t.dim()


def _prune_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask that prunes the k smallest entries along the last dim (ties: lowest index first,
    which a stable ascending sort gives)."""
    order = torch.sort(values, dim=-1, stable=True).indices
    keep = torch.ones(values.shape, dtype=torch.bool, device=values.device)
    return keep.scatter_(-1, order[..., :k], False)


# ----------------------------------------------------------------------------- N:M sparsity
def nm_mask(tensor: torch.Tensor, n: int = 2, m: int = 4, dim: int = -1) -> torch.Tensor:
    """Bool N:M keep-mask: of every `m` consecutive weights along `dim`, the `n` largest in
    magnitude are kept (exactly n per group). Among equal magnitudes the lowest index is pruned
    first (so an all-equal 2:4 group keeps its last two weights), as in magnitude_mask.

    Runs the op sparsedistill::nm_mask (one C++/CUDA kernel launch where the extension is
    built) on a view with `dim` moved last; float64 magnitudes are compared in float64."""
    _check_float_tensor("tensor", tensor)
    m = _check_int("m", m, low=1)
    n = _check_int("n", n)
    if not 0 < n < m:
        raise ValueError(f"n must satisfy 0 < n < m (= {m}), got {n}")
    dim = _check_dim(dim, tensor)
    size = tensor.shape[dim]
    if size % m:
        raise ValueError(f"dim: size {size} of dim {dim} is not divisible by m = {m}")
    if torch.isnan(tensor).any():
        raise ValueError("tensor contains NaN; magnitudes cannot be ranked")
    keep = torch.ops.sparsedistill.nm_mask(tensor.detach().movedim(dim, -1), n, m, True)
    return keep.movedim(-1, dim).contiguous()


def to_semi_structured(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`torch.sparse.to_sparse_semi_structured(weight * mask)`: a 2:4 sparse tensor for the
    hardware-accelerated sparse matmul of Ampere+ GPUs.

    `mask` must be a bool 2:4 mask of `weight`'s (2-D) shape along its last dim (at most 2 kept in
    every 4 consecutive columns, e.g. nm_mask(weight, 2, 4)), `weight` float16, bfloat16 or float32
    on a CUDA device of compute capability >= 8.0, and torch must provide semi-structured sparsity.
    Anything else raises a ValueError/TypeError/RuntimeError saying what is wrong; shape limits of
    torch's backends (minimum sizes, multiples) are reported from torch's own check.
    Only the error paths are tested without a GPU."""
    _check_float_tensor("weight", weight)
    if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"weight must be float16, bfloat16 or float32 for 2:4 sparsity, got {weight.dtype}")
    if weight.dim() != 2 or weight.shape[1] % 4:
        raise ValueError(f"weight must be 2-D with a multiple of 4 columns, got shape {tuple(weight.shape)}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != weight.shape:
        raise TypeError(f"mask must be a bool tensor of shape {tuple(weight.shape)}, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    if mask.device != weight.device:
        raise ValueError(f"mask must be on {weight.device}, got {mask.device}")
    if (mask.reshape(-1, 4).sum(-1) > 2).any():
        raise ValueError("mask is not a 2:4 pattern: some group of 4 columns keeps more than 2")
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        raise RuntimeError(f"torch {torch.__version__} has no semi-structured sparsity support")
    if not weight.is_cuda:
        raise RuntimeError(f"semi-structured sparsity needs a CUDA tensor, weight is on {weight.device}")
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        raise RuntimeError("semi-structured sparsity needs a GPU of compute capability >= 8.0")
    try:
        return torch.sparse.to_sparse_semi_structured((weight.detach() * mask).contiguous())
    except RuntimeError as e:
        raise RuntimeError(f"torch rejected the 2:4 conversion of weight {tuple(weight.shape)} "
                           f"{weight.dtype}: {e}") from e


# ----------------------------------------------------------------------------- structured norms
def _check_order(n) -> float:
    if isinstance(n, bool) or not isinstance(n, numbers.Real) or not n > 0:
        raise ValueError(f"n (the norm order) must be a positive number or inf, got {n!r}")
    return float(n)


def group_norms(weight: torch.Tensor, group_size: int, n: float = 2, dim: int = 0) -> torch.Tensor:
    """Ln norm of each group of `group_size` consecutive slices along `dim` (e.g. the attention
    heads of a projection with head_dim rows each): shape (weight.shape[dim] // group_size,).
    Computed in float32 at least (float64 stays float64)."""
    _check_float_tensor("weight", weight)
    order = _check_order(n)
    dim = _check_dim(dim, weight)
    group_size = _check_int("group_size", group_size, low=1)
    size = weight.shape[dim]
    if size % group_size:
        raise ValueError(f"group_size {group_size} does not divide size {size} of dim {dim}")
    per_group = math.prod(weight.shape) // size * group_size if size else 0
    x = weight.detach().movedim(dim, 0).reshape(size // group_size, per_group)
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
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
    return _prune_smallest(norms, k).repeat_interleave(group_size)


# ----------------------------------------------------------------------------- shrinking
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


# ----------------------------------------------------------------------------- schedule
def _check_schedule(initial_sparsity, final_sparsity, start_step, end_step, frequency) -> None:
    for name, s in (("initial_sparsity", initial_sparsity), ("final_sparsity", final_sparsity)):
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0.0 <= s <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {s!r}")
    _check_int("start_step", start_step)
    _check_int("end_step", end_step)
    if end_step <= start_step:
        raise ValueError(f"end_step ({end_step}) must be greater than start_step ({start_step})")
    _check_int("frequency", frequency, low=1)


def cubic_sparsity_schedule(step: int, initial_sparsity: float, final_sparsity: float,
                            start_step: int, end_step: int, frequency: int = 1) -> float:
    """Gradual pruning schedule of Zhu & Gupta (2017), "To prune, or not to prune":
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (end_step - t0))**3 with t0 = start_step.
    Held at s_i before start_step and at s_f from end_step on; in between it only changes every
    `frequency` steps (t is floored to start_step + a multiple of frequency)."""
    _check_schedule(initial_sparsity, final_sparsity, start_step, end_step, frequency)
    step = _check_int("step", step)
    if step < start_step:
        return float(initial_sparsity)
    if step >= end_step:
        return float(final_sparsity)
    t = start_step + (step - start_step) // frequency * frequency
    progress = (t - start_step) / (end_step - start_step)
    # s_i + (s_f - s_i) * (1 - (1 - p)^3): the same value, exact at p = 0 and, being built from
    # monotone float ops and clamped, monotone across the start and end boundaries
    s = initial_sparsity + (final_sparsity - initial_sparsity) * (1.0 - (1.0 - progress) ** 3)
    low, high = sorted((float(initial_sparsity), float(final_sparsity)))
    return min(max(float(s), low), high)


@dataclass(frozen=True)
class CubicSparsitySchedule:
    """cubic_sparsity_schedule with its arguments bound (validated on construction):
    `schedule(step)` gives the target sparsity at `step`."""

    initial_sparsity: float
    final_sparsity: float
    start_step: int
    end_step: int
    frequency: int = 1

    def __post_init__(self) -> None:
        _check_schedule(self.initial_sparsity, self.final_sparsity, self.start_step,
                        self.end_step, self.frequency)

    def __call__(self, step: int) -> float:
        return cubic_sparsity_schedule(step, self.initial_sparsity, self.final_sparsity,
                                       self.start_step, self.end_step, self.frequency)
