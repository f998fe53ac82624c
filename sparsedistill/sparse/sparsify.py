"""sparsify(model): swap SparseLinear in for the nn.Linear layers where it is measured faster,
at the rows per call the model will see; SparsifyPlan / apply_plan to repeat a decision on
another copy of the model without timing again."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from .._common import cpu_flags
from .._timing import interleaved_times_ms, median
from .modules import SparseLinear

# Heads that are usually kept dense: poolers and classifiers are small and run once per
# sequence; an LM head is often tied to the embedding. sparsify(exclude=()) replaces them too.
DEFAULT_EXCLUDE = ("*pooler*", "*lm_head", "*classifier*", "*score", "cls.*")


@dataclass
class SparsifyDecision:
    name: str
    shape: tuple
    sparsity: float
    rows: int | None  # rows per call the layer was timed at (None: not timed)
    dense_ms: float | None
    sparse_ms: float | None
    replaced: bool
    reason: str
    speedup: float | None = None  # median over interleaved pairs of dense time / sparse time


@dataclass
class SparsifyPlan:
    """Which layers become SparseLinear, with their (out_features, in_features): apply it to
    another instance with apply_plan(model, plan); to_dict()/from_dict() for JSON."""
    modules: dict = field(default_factory=dict)  # name -> (out_features, in_features)

    def to_dict(self) -> dict:
        return {"format": 1, "modules": {n: list(s) for n, s in self.modules.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "SparsifyPlan":
        if not isinstance(d, dict) or not isinstance(d.get("modules"), dict):
            raise ValueError("plan must be a dict with a 'modules' mapping (SparsifyPlan.to_dict())")
        return cls({str(n): tuple(int(v) for v in s) for n, s in d["modules"].items()})


@dataclass
class SparsifyReport:
    decisions: list = field(default_factory=list)
    bytes_before: int = 0  # bytes of the model's state_dict tensors (what a checkpoint holds)
    bytes_after: int = 0

    @property
    def replaced(self) -> list:
        return [d.name for d in self.decisions if d.replaced]

    @property
    def plan(self) -> SparsifyPlan:
        return SparsifyPlan({d.name: d.shape for d in self.decisions if d.replaced})

    def __str__(self) -> str:
        fmt = lambda t: f"{t:9.4f}" if t is not None else f"{'-':>9}"
        lines = [f"{'layer':<36} {'shape':>12} {'sparsity':>8} {'rows':>5} {'dense ms':>9} "
                 f"{'sparse ms':>9}  decision"]
        for d in self.decisions:
            lines.append(f"{d.name:<36} {'x'.join(map(str, d.shape)):>12} {d.sparsity:8.3f} "
                         f"{d.rows if d.rows is not None else '-':>5} {fmt(d.dense_ms)} "
                         f"{fmt(d.sparse_ms)}  {'sparse' if d.replaced else 'dense'}: {d.reason}")
        lines.append(f"checkpoint tensors: {self.bytes_before / 2**20:.2f} MiB -> "
                     f"{self.bytes_after / 2**20:.2f} MiB")
        return "\n".join(lines)


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the tensors of model.state_dict(), each storage counted once (tied weights)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


# ------------------------------------------------------------------------------------- timing
def compare_ms(dense_fn, sparse_fn, device: str, *, min_pairs: int = 15,
               min_time_s: float = 0.04, max_pairs: int = 1000):
    """Interleaved timing on a noisy machine (_timing.interleaved_times_ms): dense and sparse
    alternate in a shuffled order, at least `min_pairs` pairs and about `min_time_s` per side.
    Returns (median dense ms, median sparse ms, median of the per-pair ratios)."""
    t = interleaved_times_ms({"dense": dense_fn, "sparse": sparse_fn}, min_pairs, device,
                             min_time_s=2 * min_time_s, max_rounds=max_pairs, warmup_rounds=3)
    ratios = [d / max(s, 1e-9) for d, s in zip(t["dense"], t["sparse"])]
    return median(t["dense"]), median(t["sparse"]), median(ratios)


def _amx_note(dtype: torch.dtype, device: str) -> str:
    if device != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return ""
    if ("amx_bf16" if dtype == torch.bfloat16 else "amx_fp16") in cpu_flags():
        return f"; dense {str(dtype)[6:]} matmul runs on AMX tiles on this CPU"
    return f"; dense {str(dtype)[6:]} matmul runs in oneDNN's low-precision kernels on this CPU"


# ------------------------------------------------------------------------------------ choosing
def _matches(name: str, patterns) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _patterns(value, arg: str):
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not all(isinstance(p, str) for p in value):
        raise TypeError(f"{arg} must be a name pattern or a list of them (fnmatch: '*.attention.*'), "
                        f"got {value!r}")
    return tuple(value)


def _tied_names(model: nn.Module) -> dict:
    """For every parameter reachable under more than one name: name -> the other names."""
    owners = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    return {n: [o for o in names if o != n] for names in owners.values() if len(names) > 1 for n in names}


def _rows_seen(model: nn.Module, targets, example_inputs) -> dict:
    """Rows per call of each target Linear in one forward of `example_inputs` (a tuple of
    positional arguments or a dict of keyword arguments)."""
    rows, handles = {}, []
    for name, linear in targets:
        def hook(module, args, name=name):
            x = args[0]
            rows[name] = max(rows.get(name, 0), x.numel() // max(x.shape[-1], 1))
        handles.append(linear.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            if isinstance(example_inputs, dict):
                model(**example_inputs)
            elif isinstance(example_inputs, (tuple, list)):
                model(*example_inputs)
            else:
                model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    return rows


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def sparsify(model: nn.Module, *, min_sparsity: float = 0.5, batch_size: int = 1, seq_len: int = 1,
             example_inputs=None, include=None, exclude=None, measure: bool = True,
             margin: float = 0.03, reps: int = 15, min_time_s: float = 0.04) -> SparsifyReport:
    """Replaces, in place, each nn.Linear of `model` that passes the filters, is at least
    `min_sparsity` zeros, and whose SparseLinear is measured faster than the dense layer by
    more than `margin` (a fraction), at the rows per call the layer will see.

    Rows per call: a Linear inside a transformer sees batch x sequence rows, so one 20-token
    sentence is 20 rows: pass batch_size=1, seq_len=20, or example_inputs (the arguments of
    one forward of `model`, a tuple or a dict; each layer is then timed at the rows it got).
    include / exclude: names or fnmatch patterns of the layers to consider / skip (default
    exclude: DEFAULT_EXCLUDE, the usual heads). Layers whose weight is tied to another module
    stay dense. measure=False replaces every layer that passes the filters and min_sparsity.
    Timing interleaves dense and sparse calls, at least `reps` pairs and `min_time_s` seconds
    per side (compare_ms). Returns a SparsifyReport; its
    .plan repeats the choice on another instance (apply_plan)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) or not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must lie in [0, 1], got {min_sparsity!r}")
    for arg, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps must be an int >= 1, got {reps!r}")
    if isinstance(min_time_s, bool) or not isinstance(min_time_s, (int, float)) or min_time_s < 0:
        raise ValueError(f"min_time_s must be a number >= 0, got {min_time_s!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must lie in [0, 1), got {margin!r}")
    include = _patterns(include, "include")
    exclude = DEFAULT_EXCLUDE if exclude is None else _patterns(exclude, "exclude")
    tied = _tied_names(model)
    report = SparsifyReport(bytes_before=state_dict_bytes(model))
    linears = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    rows = (_rows_seen(model, linears, example_inputs) if example_inputs is not None
            else {name: batch_size * seq_len for name, _ in linears})
    for name, linear in linears:
        w = linear.weight.detach()
        sparsity = 1.0 - int(torch.count_nonzero(w)) / w.numel() if w.numel() else 0.0
        d = SparsifyDecision(name, tuple(w.shape), sparsity, None, None, None, False, "")
        report.decisions.append(d)
        if include is not None and not _matches(name, include):
            d.reason = "not matched by include"
        elif _matches(name, exclude):
            d.reason = "excluded" + (" (a head, DEFAULT_EXCLUDE)" if exclude is DEFAULT_EXCLUDE else "")
        elif name + ".weight" in tied:
            d.reason = f"weight tied to {tied[name + '.weight'][0]}"
        elif sparsity < min_sparsity:
            d.reason = f"sparsity {sparsity:.3f} below min_sparsity {min_sparsity}"
        elif name not in rows:
            d.reason = "not called by example_inputs"
        if d.reason:
            continue
        sparse = SparseLinear.from_linear(linear)
        if measure:
            d.rows = rows[name]
            x = torch.randn(d.rows, linear.in_features, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                d.dense_ms, d.sparse_ms, ratio = compare_ms(
                    lambda: linear(x), lambda: sparse(x), w.device.type, min_pairs=reps,
                    min_time_s=min_time_s)
            d.speedup = ratio
            if ratio < 1.0 + margin:
                what = (f"sparse takes {1 / ratio:.2f}x the dense time" if ratio < 1.0 else
                        f"sparse only {ratio:.2f}x faster, within the {margin:.0%} margin")
                d.reason = f"{what} at {d.rows} rows per call" + _amx_note(w.dtype, w.device.type)
                continue
            d.reason = f"sparse {ratio:.2f}x faster at {d.rows} rows per call"
        else:
            d.reason = "measure=False"
        sparse.train(linear.training)
        _replace(model, name, sparse)
        d.replaced = True
    report.bytes_after = state_dict_bytes(model)
    return report


def apply_plan(model: nn.Module, plan) -> list:
    """Replaces the layers named by `plan` (a SparsifyPlan, its to_dict(), or a SparsifyReport)
    with SparseLinear, keeping the zeros each weight holds. Every name is checked first (an
    nn.Linear of the recorded shape); on any mismatch nothing is replaced. Returns the names."""
    if isinstance(plan, SparsifyReport):
        plan = plan.plan
    elif isinstance(plan, dict):
        plan = SparsifyPlan.from_dict(plan)
    elif not isinstance(plan, SparsifyPlan):
        raise TypeError(f"plan must be a SparsifyPlan, its to_dict() or a SparsifyReport, got {type(plan).__name__}")
    modules = dict(model.named_modules())
    for name, shape in plan.modules.items():
        m = modules.get(name)
        if m is None:
            raise ValueError(f"plan names {name!r}, which the model does not have")
        if type(m) is not nn.Linear:
            raise TypeError(f"plan names {name!r}, which is a {type(m).__name__}, not an nn.Linear")
        if tuple(m.weight.shape) != tuple(shape):
            raise ValueError(f"plan names {name!r} with shape {tuple(shape)}, the model's is "
                             f"{tuple(m.weight.shape)}")
    for name in plan.modules:
        linear = modules[name]
        sparse = SparseLinear.from_linear(linear)
        sparse.train(linear.training)
        _replace(model, name, sparse)
    return list(plan.modules)
