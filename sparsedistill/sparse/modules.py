"""SparseLinear, an nn.Linear whose weight is stored compressed (SparseWeight), and
sparsify(model), which swaps in SparseLinear wherever the sparse kernel is measured faster."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .._timing import median_ms
from .checks import Stamp, validate_structure
from .weight import SparseWeight, sparse_linear

_STRUCTURE = ("row_ptr", "col_idx", "row_order")


class SparseLinear(nn.Module):
    """``y = x @ W.T + b`` with W kept as CSR. The nonzero values are a Parameter (sparse
    fine-tuning trains them with the pattern fixed); the structure is buffers, so ``.to()``,
    ``state_dict()`` and ``torch.load(weights_only=True)`` work as for any module.

    The structure is validated whenever it changed (a buffer replaced or written in place,
    a load): the kernels read it unchecked, so a malformed one raises before any kernel runs.
    A load is all or nothing: a checkpoint with a missing, extra-sized or malformed structure
    part leaves the module unchanged."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        empty = SparseWeight.empty(out_features, in_features, device=device,
                                   dtype=dtype or torch.get_default_dtype())
        self._set_weight(empty)
        self.bias = (nn.Parameter(torch.zeros(out_features, device=device, dtype=empty.dtype))
                     if bias else None)

    def _set_weight(self, w: SparseWeight) -> None:
        w.ensure_valid()
        self.values = nn.Parameter(w.values)
        for name in _STRUCTURE:
            self.register_buffer(name, getattr(w, name))
        self._restamp()

    def _parts(self):
        return self.values, self.row_ptr, self.col_idx, self.row_order, self.in_features

    def _restamp(self) -> None:
        self._stamp = Stamp(*self._parts())

    def _ensure_valid(self) -> None:
        """Validate the structure again if it changed since it last passed. (Not while
        torch.compile traces: version counters are not traceable; the stamp of the last eager
        call stands.)"""
        if not torch.compiler.is_compiling() and not self._stamp.matches(*self._parts()):
            validate_structure(*self._parts(), name=type(self).__name__)
            self._restamp()

    @property
    def sparse_weight(self) -> SparseWeight:
        self._ensure_valid()
        return SparseWeight._trusted(*self._parts())

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "SparseLinear":
        """Keeps the nonzeros of `weight` (out_features, in_features)."""
        w = SparseWeight.from_dense(weight)
        module = cls(w.in_features, w.out_features, bias=bias is not None, device=w.device, dtype=w.dtype)
        module._set_weight(w)
        if bias is not None:
            if bias.shape != (w.out_features,):
                raise ValueError(f"bias must have shape ({w.out_features},), got {tuple(bias.shape)}")
            module.bias = nn.Parameter(bias.detach().to(w.dtype).clone())
        return module

    @classmethod
    def from_linear(cls, linear: nn.Linear, amount=None) -> "SparseLinear":
        """From an nn.Linear: prunes `amount` (fraction or count) of its weights by magnitude
        first if given, else keeps the zeros it finds. `linear` itself is not modified."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        if amount is not None:
            from ..prune import magnitude_mask
            weight = weight * magnitude_mask(weight, amount)
        return cls.from_dense(weight, None if linear.bias is None else linear.bias.detach())

    def to_dense(self) -> nn.Linear:
        """An nn.Linear with the same weights (zeros included)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.sparse_weight.to_dense())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def density(self) -> float:
        return self.sparse_weight.density

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # The op checks dtypes and devices itself; only the layout is handled here, so that a
        # small layer is not dominated by Python (see sparse_linear for the checked path).
        self._ensure_valid()
        if input.dim() >= 2 and input.shape[-1] == self.in_features:
            lead = input.shape[:-1]
            x = input if input.dim() == 2 else input.reshape(math.prod(lead), self.in_features)
            y = torch.ops.sparsedistill.sparse_linear(
                x, self.values, self.row_ptr, self.col_idx, self.row_order, self.in_features, self.bias)
            return y if input.dim() == 2 else y.reshape(*lead, self.out_features)
        return sparse_linear(input, self.sparse_weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nnz={self.nnz}, density={self.density:.4f}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The nonzero count is data: the incoming structure is checked whole first, then its
        # sizes (and index dtype) are adopted, then the default copy runs. Any problem (a
        # missing part, a malformed one) leaves the module as it was.
        keys = ("values", *_STRUCTURE)
        incoming = {name: state_dict.get(prefix + name) for name in keys}
        present = [name for name, t in incoming.items() if t is not None]
        if not present:  # nothing of this module in the checkpoint: the default reports it
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                                 missing_keys, unexpected_keys, error_msgs)
        label = prefix.rstrip(".") or type(self).__name__
        if len(present) < len(keys):
            missing = [prefix + n for n in keys if incoming[n] is None]
            error_msgs.append(f"{label}: the checkpoint holds only part of the sparse structure "
                              f"(missing {', '.join(missing)}); the module was left unchanged")
            return
        try:
            for name, t in incoming.items():
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"{label}.{name} must be a tensor, got {type(t).__name__}")
            validate_structure(*incoming.values(), self.in_features, label)
            bias = state_dict.get(prefix + "bias")
            if self.bias is not None and bias is not None and bias.shape != self.bias.shape:
                raise ValueError(f"{label}.bias must have shape {tuple(self.bias.shape)}, got "
                                 f"{tuple(bias.shape)}")
        except (TypeError, ValueError) as exc:
            error_msgs.append(str(exc))
            return
        old = {name: getattr(self, name) for name in keys}
        for name, new in incoming.items():
            mine = old[name]
            if new.shape == mine.shape and (name == "values" or new.dtype == mine.dtype):
                continue
            fresh = torch.empty(new.shape, dtype=mine.dtype if name == "values" else new.dtype,
                                device=mine.device)
            if name == "values":
                self.values = nn.Parameter(fresh, requires_grad=mine.requires_grad)
            else:
                self.register_buffer(name, fresh)
        n_errors = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if len(error_msgs) > n_errors:  # e.g. a bias of the wrong shape: undo the resizing
            self.values = old["values"]
            for name in _STRUCTURE:
                self.register_buffer(name, old[name])
            return
        self._restamp()  # copied from a structure validated just above


@dataclass
class SparsifyDecision:
    name: str
    shape: tuple
    sparsity: float
    dense_ms: float | None
    sparse_ms: float | None
    replaced: bool
    reason: str


@dataclass
class SparsifyReport:
    decisions: list = field(default_factory=list)

    @property
    def replaced(self) -> list:
        return [d.name for d in self.decisions if d.replaced]

    def __str__(self) -> str:
        lines = [f"{'layer':<30} {'shape':>14} {'sparsity':>8} {'dense ms':>9} {'sparse ms':>9}  decision"]
        for d in self.decisions:
            fmt = lambda t: f"{t:9.3f}" if t is not None else f"{'-':>9}"
            lines.append(f"{d.name:<30} {str(d.shape):>14} {d.sparsity:8.3f} {fmt(d.dense_ms)} "
                         f"{fmt(d.sparse_ms)}  {'sparse' if d.replaced else 'dense'}: {d.reason}")
        return "\n".join(lines)


@torch.no_grad()
def _time_pair(linear: nn.Linear, sparse: SparseLinear, batch_size: int, reps: int):
    w = linear.weight
    x = torch.randn(batch_size, linear.in_features, device=w.device, dtype=w.dtype)
    device = w.device.type
    return (median_ms(lambda: F.linear(x, w, linear.bias), reps, device),
            median_ms(lambda: sparse(x), reps, device))


def sparsify(model: nn.Module, *, min_sparsity: float = 0.5, batch_size: int = 1,
             reps: int = 7, measure: bool = True) -> SparsifyReport:
    """Replaces, in place, every nn.Linear whose weight is at least `min_sparsity` zeros and
    whose SparseLinear runs faster than the dense layer, timed on this device at `batch_size`
    rows (the crossover is measured per layer, not guessed). With measure=False every layer
    above min_sparsity is replaced. Returns a report of each decision and why."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must lie in [0, 1], got {min_sparsity}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    report = SparsifyReport()
    targets = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    for name, linear in targets:
        w = linear.weight.detach()
        sparsity = 1.0 - int(torch.count_nonzero(w)) / w.numel() if w.numel() else 0.0
        decision = SparsifyDecision(name, tuple(w.shape), sparsity, None, None, False, "")
        report.decisions.append(decision)
        if sparsity < min_sparsity:
            decision.reason = f"sparsity {sparsity:.3f} < min_sparsity {min_sparsity}"
            continue
        sparse = SparseLinear.from_linear(linear)
        if measure:
            decision.dense_ms, decision.sparse_ms = _time_pair(linear, sparse, batch_size, reps)
            if decision.sparse_ms >= decision.dense_ms:
                decision.reason = f"dense is faster at batch {batch_size}"
                continue
            decision.reason = f"{decision.dense_ms / decision.sparse_ms:.2f}x faster at batch {batch_size}"
        else:
            decision.reason = "measure=False"
        sparse.train(linear.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, sparse)
        decision.replaced = True
    return report
