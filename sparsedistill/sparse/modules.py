"""SparseLinear, an nn.Linear whose weight is stored compressed (SparseWeight)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .checks import Stamp, validate_structure
from .weight import SparseWeight, sparse_linear

_STRUCTURE = ("row_ptr", "col_idx", "row_order")
_SPARSE_LINEAR = torch.ops.sparsedistill.sparse_linear.default


class SparseLinear(nn.Module):
    """``y = x @ W.T + b`` with W kept as CSR. The nonzero values are a Parameter (sparse
    fine-tuning trains them with the pattern fixed); the structure is buffers, so ``.to()``,
    ``state_dict()`` and ``torch.load(weights_only=True)`` work as for any module.

    The structure is validated whenever it changed (a buffer replaced or written in place,
    a load): the kernels read it unchecked, so a malformed one raises before any kernel runs.
    A load is all or nothing: a checkpoint with a missing, extra-sized or malformed structure
    part leaves the module unchanged.

    In a state_dict the nonzero values are stored under ``weight`` (1-D, nnz), so that loading
    a sparse checkpoint into a dense nn.Linear fails on the shape, loudly (in load_state_dict
    and in Hugging Face's from_pretrained), instead of leaving the dense weight to be
    re-initialised; ``values`` is accepted on load as well."""

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
        # The op checks dtypes and devices itself; only the layout is handled here, and the
        # tensors are read from the module's dicts once, so that a small layer in a transformer
        # (one sentence: ~20 rows) is not dominated by Python. Any (..., in_features) input is
        # flattened to 2-D once; sparse_linear is the fully checked path for anything else.
        params, buffers = self._parameters, self._buffers
        values, row_ptr, col_idx, row_order = (params["values"], buffers["row_ptr"],
                                               buffers["col_idx"], buffers["row_order"])
        if not torch.compiler.is_compiling() and not self._stamp.matches(
                values, row_ptr, col_idx, row_order, self.in_features):
            self._ensure_valid()
        shape = input.shape
        if len(shape) >= 2 and shape[-1] == self.in_features:
            x = input if len(shape) == 2 else input.reshape(math.prod(shape[:-1]), shape[-1])
            y = _SPARSE_LINEAR(x, values, row_ptr, col_idx, row_order, self.in_features, params.get("bias"))
            return y if len(shape) == 2 else y.view(*shape[:-1], y.shape[-1])
        return sparse_linear(input, self.sparse_weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nnz={self.nnz}, density={self.density:.4f}")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = destination.pop(prefix + "values")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The values come as "weight" (what _save_to_state_dict writes) or "values"; only this
        # module's keys, with the values renamed, go on to the default copy.
        mine = {k: v for k, v in state_dict.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        if prefix + "weight" in mine:
            if prefix + "values" in mine:
                error_msgs.append(f"{prefix.rstrip('.') or type(self).__name__}: the checkpoint holds "
                                  "both weight and values; the module was left unchanged")
                return
            mine[prefix + "values"] = mine.pop(prefix + "weight")
        state_dict = mine
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
