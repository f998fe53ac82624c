"""Helpers shared by the tests of every area: the per-dtype tolerance table and the skip for
tests that assert a native kernel is the one serving an op. (Fixtures live in conftest.py.)"""
import pytest
import torch

import sparsedistill

# Tolerances of a kernel against the float64 reference computed from the same (already rounded)
# inputs: the kernels differ only by their float32 accumulation (float64 for float64) and the
# final rounding. Sums of n products scale atol by sqrt(n) (see close()).
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=5e-3, atol=5e-4),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-3),
}


def close(got, want, dtype, terms: int = 1) -> None:
    """assert_close in float64 with TOL[dtype], atol scaled by sqrt(terms) for sums of terms."""
    tol = TOL[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=tol["rtol"],
                               atol=tol["atol"] * max(terms, 1) ** 0.5)


def native_serves(op: str, device: str) -> bool:
    from sparsedistill._library import serves
    return not serves(op, device).startswith("reference")


def skip_unless_serving(op: str, device: str) -> None:
    """Skip a native-vs-reference comparison where the reference serves `op` (it would
    compare the reference with itself)."""
    if not native_serves(op, device):
        pytest.skip(f"no native kernel serves {op} on {device}: nothing to compare")


def skip_unless_native(device: str) -> dict:
    """Skip when no native kernel can serve `device` in this run (loading disabled, built
    without the extension or without CUDA); else assert it loaded and return backend_info()."""
    info = sparsedistill.backend_info()
    if "disabled" in (info["reason"] or ""):
        pytest.skip(info["reason"])
    if not info["build"].get("native"):
        pytest.skip("extension built with SPARSEDISTILL_SKIP_NATIVE")
    if device == "cuda" and not info["build"].get("cuda"):
        pytest.skip("extension built without CUDA")
    assert info["native_loaded"], info["reason"]
    return info


def same_error_everywhere(op_name: str, reference, args, device: str):
    """Run one bad call through the reference kernel and through the op (the native kernel when
    one serves `device`); assert both raise the same exception type with the same message, and
    return that exception. Tensors in args must not be modified by either call."""
    from sparsedistill._library import serves
    before = [a.clone() for a in args if isinstance(a, torch.Tensor)]
    with pytest.raises((ValueError, TypeError)) as ref:
        reference(*args)
    if serves(op_name, device).startswith("reference"):
        return ref.value  # no native kernel here: the op is the reference
    with pytest.raises((ValueError, TypeError)) as native:
        getattr(torch.ops.sparsedistill, op_name)(*args)
    assert type(native.value) is type(ref.value), (native.value, ref.value)
    assert str(native.value).splitlines()[0] == str(ref.value), (str(native.value), str(ref.value))
    after = [a for a in args if isinstance(a, torch.Tensor)]
    for b, a in zip(before, after):
        assert torch.equal(b, a) or (b.is_floating_point() and torch.equal(b.isnan(), a.isnan()))
    return ref.value
