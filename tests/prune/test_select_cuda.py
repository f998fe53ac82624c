"""CUDA-only checks of the select_smallest kernel: bitwise the masks of the C++ CPU kernel and of
the reference (heavy ties, -0/+0, keep masks, many tensors, odd sizes, every dtype, k = 0 and
k = n), its errors, and a tensor beyond 2^31 elements. Skipped on machines without a GPU."""
import pytest
import torch

from sparsedistill.prune import reference as _prune_reference
from sparsedistill._library import serves

from _helpers import skip_unless_native

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OP = torch.ops.sparsedistill.select_smallest
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
CHUNK = 8192  # kSelectChunk in csrc/cuda/select_kernel.h: sizes around it cross chunk borders


def eligible_count(vals, keep):
    return sum(int(m.sum()) for m in keep) if keep is not None else sum(v.numel() for v in vals)


def check(vals, keep, k, magnitude):
    """CUDA masks == C++ CPU kernel masks == reference masks, bitwise."""
    got = OP(vals, keep, k, magnitude)
    cpu_vals = [v.cpu() for v in vals]
    cpu_keep = [m.cpu() for m in keep] if keep is not None else None
    want_cpu = OP(cpu_vals, cpu_keep, k, magnitude)
    want_ref = _prune_reference.select_smallest(cpu_vals, cpu_keep, k, magnitude)
    assert len(got) == len(vals)
    for i, (g, c, r, v) in enumerate(zip(got, want_cpu, want_ref, vals)):
        assert g.device == v.device and g.dtype == torch.bool and g.shape == v.shape, i
        assert torch.equal(g.cpu(), c), f"tensor {i}: CUDA != CPU kernel (k={k})"
        assert torch.equal(c, r), f"tensor {i}: CPU kernel != reference (k={k})"


def ks_for(n):
    return sorted({k for k in (0, 1, 2, n // 3, n // 2, n - 1, n) if 0 <= k <= n})


def test_cuda_kernel_serves():
    skip_unless_native("cuda")
    assert serves("select_smallest", "cuda") == "cuda kernel"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("magnitude", [True, False])
@pytest.mark.parametrize("with_keep", [False, True])
def test_heavy_ties(dtype, magnitude, with_keep):
    sizes = [(300, 7), (1,), (0, 4), (70001,), (CHUNK,), (CHUNK + 1,), (3, 5, 17)]
    vals = [torch.randint(-3, 4, s).to(dtype).cuda() for s in sizes]
    vals[0][0, 0] = -0.0
    vals[3][::7] = -0.0
    keep = [(torch.rand(v.shape) > 0.3).cuda() for v in vals] if with_keep else None
    for k in ks_for(eligible_count(vals, keep)):
        check(vals, keep, k, magnitude)


@pytest.mark.parametrize("magnitude", [True, False])
def test_signed_zeros_are_one_key(magnitude):
    v = torch.zeros(3 * CHUNK + 5)
    v[::3] = -0.0
    v[5::11] = -1.0
    v[7::13] = 1.0
    vals = [v.cuda(), (-v).cuda()]
    n = 2 * v.numel()
    for k in [1, 100, CHUNK + 3, n // 2, n - 17, n]:
        check(vals, None, k, magnitude)
    # -0 and +0 together: ties go by position whatever the sign
    got = OP([torch.tensor([0.0, -0.0, 0.0, -0.0], device="cuda")], None, 2, False)[0]
    assert got.tolist() == [False, False, True, True]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("magnitude", [True, False])
def test_distinct_values_every_k_edge(dtype, magnitude):
    vals = [torch.randn(s).to(dtype).cuda() for s in [(41, 1271), (7,), (CHUNK - 1,), (2 * CHUNK + 3,)]]
    for k in ks_for(eligible_count(vals, None)):
        check(vals, None, k, magnitude)


def test_odd_sizes_and_chunk_borders():
    sizes = [1, 2, 31, 33, 255, 257, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1, 100003]
    vals = [torch.randint(-50, 50, (s,)).float().cuda() for s in sizes]
    keep = [(torch.rand(s) > 0.5).cuda() for s in sizes]
    for k in ks_for(eligible_count(vals, None)):
        check(vals, None, k, True)
    for k in ks_for(eligible_count(vals, keep)):
        check(vals, keep, k, True)


def test_many_tensors():
    g = torch.Generator().manual_seed(1)
    sizes = torch.randint(0, 3000, (300,), generator=g).tolist()
    vals = [torch.randint(-4, 5, (s,), generator=g).float().cuda() for s in sizes]
    keep = [(torch.rand(s, generator=g) > 0.2).cuda() for s in sizes]
    for k in ks_for(eligible_count(vals, None)):
        check(vals, None, k, True)
    for k in ks_for(eligible_count(vals, keep)):
        check(vals, keep, k, False)


def test_mixed_dtypes_and_layouts():
    base = torch.randint(-3, 4, (67, 45)).float()
    vals = [base.cuda(), base.to(torch.bfloat16).cuda().t(), base.half().cuda()[::2],
            base.double().cuda()]
    assert not vals[1].is_contiguous() and not vals[2].is_contiguous()
    keep = [(torch.rand(v.shape) > 0.4).cuda() for v in vals]
    for k in ks_for(eligible_count(vals, None)):
        check(vals, None, k, True)
    for k in ks_for(eligible_count(vals, keep)):
        check(vals, keep, k, True)


def test_special_values():
    """inf, subnormals, and float64 values that the float32 key makes equal (the CPU kernel's
    key: float64 rounds to float32, so 1 + 1e-12 ties with 1 and 1e-50 with 0)."""
    d = torch.tensor([1.0, 1.0 + 1e-12, 1.0 - 1e-12, 3e39, -3e39, 1e-50, -1e-50, 0.0, 2.0,
                      float("inf"), float("-inf"), 1e-310, -1e-310, 3.4028235e38], dtype=torch.float64)
    f = torch.tensor([1e-45, -1e-45, 1e-39, -1e-39, 0.0, -0.0, float("inf"), float("-inf"),
                      3.4028235e38, -3.4028235e38, 1.0, -1.0])
    h = torch.tensor([6e-8, -6e-8, 65504.0, -65504.0, float("inf"), 0.0, -0.0], dtype=torch.float16)
    vals = [d.cuda(), f.cuda(), h.cuda(), f.to(torch.bfloat16).cuda()]
    for magnitude in (True, False):
        for k in range(eligible_count(vals, None) + 1):
            check(vals, None, k, magnitude)


def test_empty_and_all_ineligible():
    empties = [torch.empty(0, device="cuda"), torch.empty(3, 0, device="cuda")]
    got = OP(empties, None, 0, True)
    assert [tuple(g.shape) for g in got] == [(0,), (3, 0)] and all(g.is_cuda for g in got)
    with pytest.raises(ValueError, match=r"k must lie in \[0, 0\]"):
        OP(empties, None, 1, True)
    v = torch.randn(100, device="cuda")
    none = torch.zeros(100, dtype=torch.bool, device="cuda")
    assert not OP([v], [none], 0, True)[0].any()
    with pytest.raises(ValueError, match=r"k must lie in \[0, 0\]"):
        OP([v], [none], 1, True)


def test_k_out_of_range():
    v = [torch.randn(40, device="cuda"), torch.randn(3, device="cuda")]
    for k in (-1, 44):
        with pytest.raises(ValueError, match=r"k must lie in \[0, 43\]"):
            OP(v, None, k, True)
    keep = [torch.arange(40, device="cuda") < 10, torch.ones(3, dtype=torch.bool, device="cuda")]
    for k in (-1, 14):
        with pytest.raises(ValueError, match=r"k must lie in \[0, 13\]"):
            OP(v, keep, k, True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_names_the_first_tensor(dtype):
    vals = [torch.randn(50).to(dtype).cuda() for _ in range(5)]
    vals[4][3] = float("nan")
    vals[2][CHUNK % 50] = float("nan")
    for keep in (None, [torch.ones(50, dtype=torch.bool, device="cuda")] * 5):
        with pytest.raises(ValueError, match=r"tensors\[2\] .*NaN"):
            OP(vals, keep, 10, True)
    # NaN in an ineligible position is still an error, as in the CPU kernel and the reference
    keep = [torch.ones(50, dtype=torch.bool, device="cuda") for _ in range(5)]
    keep[2][CHUNK % 50] = False
    keep[4][3] = False
    with pytest.raises(ValueError, match=r"tensors\[2\] .*NaN"):
        OP(vals, keep, 10, True)


def test_argument_errors():
    v = torch.randn(4, 4, device="cuda")
    with pytest.raises(ValueError, match="keep"):
        OP([v], [v > 0, v > 0], 1, True)
    with pytest.raises(ValueError, match=r"keep\[0\]"):
        OP([v], [(v > 0).cpu()], 1, True)
    with pytest.raises(ValueError, match=r"values\[1\]"):
        OP([v, v.cpu()], None, 1, True)
    with pytest.raises(TypeError, match=r"values\[0\]"):
        OP([v.int()], None, 1, True)


def test_side_stream():
    vals = [torch.randint(-3, 4, (5 * CHUNK + 7,)).float().cuda()]
    want = OP([vals[0].cpu()], None, 2 * CHUNK, True)[0]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = OP(vals, None, 2 * CHUNK, True)[0]
    s.synchronize()
    assert torch.equal(got.cpu(), want)


def test_more_than_2_pow_31_elements():
    """Ties ranked across element 2^31 and ~2^18 chunks: all ones but three halves (one below
    2^31, two above); prune the halves and the first 2^31 ones, so exactly the ones from flat
    index 2^31 + 1 on survive."""
    n = 2**31 + 10000
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2**30:
        pytest.skip("not enough GPU memory (needs ~12 GiB)")
    v = torch.ones(n, dtype=torch.bfloat16, device="cuda")
    small = torch.tensor([17, 2**31 + 5, 2**31 + 9000], device="cuda")
    v[small] = 0.5
    k = 3 + 2**31
    mask = OP([v], None, k, True)[0]
    border = 2**31 + 1  # the ones in [0, border) are 2^31 (one half at 17 among them)
    assert not mask[:border].any()
    assert torch.equal(mask[border:], v[border:] == 1)
    assert int((~mask).sum()) == k
    del mask
    # Random bf16 values (many ties, few of them at the threshold), by value, not magnitude.
    v.normal_()
    k = 2**31 - 1
    mask = OP([v], None, k, False)[0]
    assert int((~mask).sum()) == k
    kept_min = v.masked_fill(~mask, float("inf")).min()
    pruned_max = v.masked_fill(mask, float("-inf")).max()
    assert pruned_max <= kept_min
