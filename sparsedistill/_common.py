"""What every area shares: the floating dtypes the kernels compute on, the formatting of
argument-check messages, which the C++ checks (csrc/common/checks.h) write the same way, and
the CPU's feature flags."""
from __future__ import annotations

import functools

import torch

# The dtypes every kernel accepts (csrc/common/checks.h: is_float_dtype); float64 is computed
# in float32 by distill and in float64 by prune and sparse.
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
FLOAT_DTYPE_NAMES = "float32, bfloat16, float16, float64"


def shape_str(t: torch.Tensor) -> str:
    """A shape as csrc/common/checks.h writes it: "(4, 10)", "(4)", "()"."""
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def op_check(cond: bool, exc: type, *pieces) -> None:
    """Raise exc("sparsedistill: " + pieces) unless cond: the op-level checks of the references,
    with the message csrc's SD_CHECK_ARG (ValueError) / SD_CHECK_TYPE (TypeError) build."""
    if not cond:
        raise exc("sparsedistill: " + "".join(str(p) for p in pieces))


def cpp_float(x: float) -> str:
    """A float as C++'s std::to_string writes it in the native kernels' messages ("%f")."""
    return f"{x:f}"


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU's feature flags as Linux lists them (/proc/cpuinfo), e.g. "avx512_bf16",
    "amx_bf16"; empty where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
