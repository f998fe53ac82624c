"""The torch.library of sparsedistill, the native extension's loading, and backend_info.

Each area (distill/, prune/, sparse/) defines its ops in its ops.py through `define`, with its
pure-PyTorch reference as the default kernel for every device. Importing the compiled library
sparsedistill._C adds C++ CPU and CUDA kernels for the same ops (TORCH_LIBRARY_IMPL in csrc/).
If it is missing or cannot load, one warning says why and every op stays on its reference.
"""
from __future__ import annotations

import importlib
import os
import warnings

import torch

lib = torch.library.Library("sparsedistill", "DEF")
OPS: list[str] = []  # every op name, in definition order (backend_info lists them)
DISABLE_ENV = "SPARSEDISTILL_DISABLE_NATIVE"

_state = {"loaded": False, "reason": None, "config": {}}


def define(schema: str, reference) -> None:
    """Defines the op `schema` with `reference` as its kernel for every device (the "default"
    of bitsandbytes): native kernels registered for CPU or CUDA override it. An op that writes
    its arguments (`Tensor(a!)`) also bumps their version counters, as stock in-place ops do,
    so autograd refuses a backward through values it overwrote."""
    name = schema.split("(", 1)[0]
    lib.define(schema)
    lib.impl(name, reference, "CompositeExplicitAutograd")
    OPS.append(name)
    op = getattr(torch.ops.sparsedistill, name).default
    written = [i for i, a in enumerate(op._schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
    if written:
        lib.impl(name, _version_bump(op, written), "ADInplaceOrView", with_keyset=True)


def _version_bump(op, written: list[int]):
    """The ADInplaceOrView kernel of a mutating op: bump the written arguments, run the op."""
    below = torch._C._after_ADInplaceOrView_keyset

    def kernel(keyset, *args):
        for i in written:
            if args[i] is not None:  # an optional written argument (Tensor(a!)?) may be absent
                torch.autograd.graph.increment_version(args[i])
        return op.redispatch(keyset & below, *args)
    return kernel


def _cpu_supports(isa: str | None) -> bool:
    if isa in (None, "none"):
        return True
    have = torch.backends.cpu.get_cpu_capability()  # "DEFAULT", "AVX2", "AVX512", ...
    return {"avx2": have in ("AVX2", "AVX512"), "avx512": have == "AVX512"}.get(isa, False)


def load_native() -> None:
    """Import sparsedistill._C once; on failure warn once and leave the reference kernels."""
    try:
        from ._build_config import BUILD_CONFIG
    except ImportError:
        BUILD_CONFIG = {}
    _state["config"] = dict(BUILD_CONFIG)
    if os.environ.get(DISABLE_ENV, "0") not in ("", "0"):
        _state["reason"] = f"disabled by {DISABLE_ENV}"
        return  # asked for: no warning
    if BUILD_CONFIG.get("native") is False:
        reason = "built with SPARSEDISTILL_SKIP_NATIVE=1"
    elif not _cpu_supports(BUILD_CONFIG.get("cpu_isa")):
        reason = (f"the extension was built for {BUILD_CONFIG.get('cpu_isa')} but this CPU "
                  f"reports {torch.backends.cpu.get_cpu_capability()}; rebuild with "
                  "SPARSEDISTILL_CPU_ISA=none")
    else:
        try:
            importlib.import_module("sparsedistill._C")
            _state["loaded"] = True
            return
        except Exception as exc:  # ImportError, OSError (undefined symbol), ...
            reason = f"could not load sparsedistill._C: {exc}"
    _state["reason"] = reason
    warnings.warn(f"sparsedistill: native kernels unavailable ({reason}); every op runs on its "
                  "pure-PyTorch reference.", RuntimeWarning, stacklevel=3)


def _serving(op: str, dispatch_key: str) -> str:
    qualname = f"sparsedistill::{op}"
    if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, dispatch_key):
        isa = _state["config"].get("cpu_isa") or "none"
        return "cuda kernel" if dispatch_key == "CUDA" else f"c++ cpu kernel ({isa})"
    return "reference (pure PyTorch)"


def backend_info() -> dict:
    """Which implementation serves each op on each device, and how the extension was built."""
    devices = {"cpu": "CPU", "cuda": "CUDA"}
    return {
        "native_loaded": _state["loaded"],
        "reason": _state["reason"],
        "build": dict(_state["config"]),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "ops": {op: {dev: _serving(op, key) for dev, key in devices.items()} for op in OPS},
    }


def serves(op: str, device: str) -> str:
    """Short form of backend_info for one op: 'cuda kernel', 'c++ cpu kernel (...)' or 'reference ...'."""
    return _serving(op, {"cpu": "CPU", "cuda": "CUDA"}[device])


def native_serves(op: str, device: torch.device) -> bool:
    """Whether a native kernel (not the reference) serves `op` for tensors on `device`."""
    key = "CUDA" if device.type == "cuda" else "CPU"
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsedistill::{op}", key)
