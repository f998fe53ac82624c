"""SparseLinear, an nn.Linear whose weight is stored compressed (SparseWeight), and
sparsify(model), which swaps in SparseLinear wherever the sparse kernel is measured faster."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .._timing import median_ms
from .checks import validate_structure
from .weight import SparseWeight, sparse_linear

_STRUCTURE = ("row_ptr", "col_idx", "row_order")


class SparseLinear(nn.Module):
    """``y = x @ W.T + b`` with W kept as CSR. The nonzero values are a Parameter (sparse
    fine-tuning trains them with the pattern fixed); the structure is buffers, so ``.to()``,
    ``state_dict()`` and ``torch.load(weights_only=True)`` work as for any module."""

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
        self.values = nn.Parameter(w.values)
        for name in _STRUCTURE:
            self.register_buffer(name, getattr(w, name))

    @property
    def sparse_weight(self) -> SparseWeight:
        return SparseWeight(self.values, self.row_ptr, self.col_idx, self.row_order, self.in_features)

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
        if input.dim() == 2 and input.shape[1] == self.in_features:
            return torch.ops.sparsedistill.sparse_linear(
                input, self.values, self.row_ptr, self.col_idx, self.row_order, self.in_features, self.bias)
        return sparse_linear(input, self.sparse_weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nnz={self.nnz}, density={self.density:.4f}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The nonzero count is data: check the incoming structure whole, then adopt its sizes
        # (and index dtype) before the default copy. A malformed one changes nothing.
        incoming = {name: state_dict.get(prefix + name) for name in ("values", *_STRUCTURE)}
        if all(t is not None for t in incoming.values()):
            try:
                validate_structure(*incoming.values(), self.in_features, prefix.rstrip(".") or "weight")
            except (TypeError, ValueError) as exc:
                error_msgs.append(str(exc))
                return
            for name, new in incoming.items():
                mine = getattr(self, name)
                if new.shape == mine.shape and (name == "values" or new.dtype == mine.dtype):
                    continue
                fresh = torch.empty(new.shape, dtype=mine.dtype if name == "values" else new.dtype,
                                    device=mine.device)
                if name == "values":
                    self.values = nn.Parameter(fresh, requires_grad=mine.requires_grad)
                else:
                    self.register_buffer(name, fresh)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


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
