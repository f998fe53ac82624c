"""Helpers shared by the tests of every area: the skip for tests that assert a native kernel
is the one serving an op."""
import pytest

import sparsedistill


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
