"""CUDA-only checks of the select_smallest kernel: bitwise the masks of the C++ CPU kernel and of
the reference (heavy ties, -0/+0, keep masks, many tensors, odd sizes, every dtype, k = 0 and
k = n), its errors, and a tensor beyond 2^31 elements; and of the zero_smallest kernel (the same
selection, zeroing in its mask pass): masks and zeroed tensors bitwise those of the reference
on CPU copies, with scores, keep masks, aliasing and non-contiguous arguments. Skipped on
machines without a GPU."""
import pytest
import torch

from sparsedistill.prune import reference as _prune_reference
from sparsedistill._library import serves

from _helpers import skip_unless_native

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OP = torch.ops.sparsedistill.select_smallest
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
CHUNK = 8192  # kSelectChunk in csrc/prune/cuda/select_kernel.h: sizes around it cross chunk borders


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



# ---------------------------------------------------------------------------------------------
# zero_smallest

ZERO = torch.ops.sparsedistill.zero_smallest


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(got, want):
    """Same dtype, shape and bits (so zeroed elements are +0 as in the reference, kept -0 stay -0,
    and NaN compares equal to itself)."""
    bits = _BITS[want.element_size()]
    return (got.dtype == want.dtype and got.shape == want.shape
            and torch.equal(got.contiguous().view(bits), want.contiguous().view(bits)))


def zero_both(build, k):
    """Lays the same data out twice with build(device) -> (tensors, masks, scores, keep, written),
    runs the CUDA kernel on the "cuda" layout and the reference on the "cpu" one, and compares
    every tensor in `written` (tensors, masks, and the bases of views that the call writes
    through) bitwise. build must be deterministic: it lays out tensors made beforehand on the CPU,
    so that aliasing between the arguments is the same on both devices."""
    t, m, s, kp, written = build("cuda")
    ZERO(t, m, s, kp, k)
    torch.cuda.synchronize()
    t_ref, m_ref, s_ref, kp_ref, written_ref = build("cpu")
    _prune_reference.zero_smallest(t_ref, m_ref, s_ref, kp_ref, k)
    assert len(written) == len(written_ref)
    for i, (g, w) in enumerate(zip(written, written_ref)):
        assert g.is_cuda, i
        assert same_bits(g.cpu(), w), f"written[{i}] differs from the reference (k={k})"


def plain(tensors, scores=None, keep=None, mask_layout=None):
    """A build for zero_both: fresh copies of CPU tensors, scores and keep masks on `device`;
    masks from mask_layout(device, tensor) (default: empty contiguous bool tensors)."""
    def build(device):
        t = [x.to(device, copy=True) for x in tensors]
        s = [x.to(device, copy=True) for x in scores] if scores is not None else None
        kp = [x.to(device, copy=True) for x in keep] if keep is not None else None
        m = [mask_layout(device, x) if mask_layout else torch.empty(x.shape, dtype=torch.bool, device=device)
             for x in t]
        return t, m, s, kp, t + m
    return build


def test_zero_smallest_cuda_kernel_serves():
    skip_unless_native("cuda")
    assert serves("zero_smallest", "cuda") == "cuda kernel"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_keep", [False, True])
@pytest.mark.parametrize("score_dtype", [None, torch.float32, torch.float16])
def test_zero_smallest_heavy_ties(dtype, with_keep, score_dtype):
    sizes = [(300, 7), (1,), (0, 4), (70001,), (CHUNK,), (CHUNK + 1,), (3, 5, 17)]
    tensors = [torch.randint(-3, 4, s).to(dtype) for s in sizes]
    tensors[0][0, 0] = -0.0
    tensors[3][::7] = -0.0  # kept -0 stay -0, zeroed ones become +0
    scores = ([torch.randint(-2, 3, s).to(score_dtype) for s in sizes] if score_dtype is not None
              else None)
    keep = [torch.rand(s) > 0.3 for s in sizes] if with_keep else None
    for k in ks_for(eligible_count(tensors, keep)):
        zero_both(plain(tensors, scores, keep), k)


@pytest.mark.parametrize("with_keep", [False, True])
def test_zero_smallest_odd_sizes_and_mixed_dtypes(with_keep):
    sizes = [1, 2, 31, 33, 255, 257, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1, 100003]
    tensors = [torch.randint(-50, 50, (s,)).to(DTYPES[i % len(DTYPES)]) for i, s in enumerate(sizes)]
    keep = [torch.rand(s) > 0.5 for s in sizes] if with_keep else None
    for k in ks_for(eligible_count(tensors, keep)):
        zero_both(plain(tensors, None, keep), k)
    # scores of other dtypes than the tensors they rank
    scores = [torch.randn(s).to(DTYPES[(i + 1) % len(DTYPES)]) for i, s in enumerate(sizes)]
    for k in ks_for(eligible_count(tensors, keep)):
        zero_both(plain(tensors, scores, keep), k)


def test_zero_smallest_distinct_values_and_special_values():
    tensors = [torch.randn(41, 1271), torch.randn(2 * CHUNK + 3).double(),
               torch.tensor([1e-45, -1e-45, 0.0, -0.0, float("inf"), float("-inf"), 1.0, -1.0]),
               torch.tensor([6e-8, -6e-8, 65504.0, -65504.0, float("inf"), 0.0, -0.0], dtype=torch.float16)]
    for k in ks_for(eligible_count(tensors, None)):
        zero_both(plain(tensors), k)


def test_zero_smallest_ties_across_chunks():
    """Ties spread over many chunks with only some pruned: the ranks decided in the mask pass."""
    t = torch.randint(-20, 21, (5, 70001)).float()
    scores = [torch.randint(0, 9, t.shape).half()]
    for k in [1, 123457, 200001, t.numel() - 1]:
        zero_both(plain([t]), k)
        zero_both(plain([t], scores), k)


def test_zero_smallest_non_contiguous():
    base = torch.randint(-3, 4, (67, 45)).float()
    tensors = [base.clone(), base.to(torch.bfloat16).t(), base.half()[::2], base.double()[:, 1::3]]
    assert not any(x.is_contiguous() for x in tensors[1:])
    scores = [torch.randint(0, 4, x.shape).float().t().contiguous().t() for x in tensors]
    keep = [(torch.rand(x.t().shape) > 0.3).t() for x in tensors]  # non-contiguous keep masks

    def build(device, with_scores, with_keep, odd_masks):
        # Non-contiguous views of device tensors: the view is what the op gets, the base what
        # it must leave right (elements outside the view untouched).
        bases = [base.to(device, copy=True), base.to(torch.bfloat16).to(device, copy=True),
                 base.half().to(device, copy=True), base.double().to(device, copy=True)]
        t = [bases[0], bases[1].t(), bases[2][::2], bases[3][:, 1::3]]
        m = [torch.empty(x.shape, dtype=torch.bool, device=device) for x in t]
        mask_bases = []
        if odd_masks:  # non-contiguous masks, some inside a larger buffer
            mask_bases = [torch.ones(x.shape[1], x.shape[0], dtype=torch.bool, device=device) for x in t]
            m = [mb.t() for mb in mask_bases]
            big = torch.ones(t[3].shape[0], 2 * t[3].shape[1], dtype=torch.bool, device=device)
            m[3] = big[:, ::2]
            mask_bases[3] = big
        s = [x.to(device, copy=True) for x in scores] if with_scores else None
        kp = [x.to(device) for x in keep] if with_keep else None
        return t, m, s, kp, bases + t + m + mask_bases

    for with_scores in (False, True):
        for with_keep in (False, True):
            for odd_masks in (False, True):
                n = eligible_count(tensors, keep if with_keep else None)
                for k in ks_for(n):
                    zero_both(lambda d: build(d, with_scores, with_keep, odd_masks), k)


def test_zero_smallest_scores_alias_the_tensors():
    t = torch.randint(-20, 21, (3, 70001)).float()
    # scores that are the tensors themselves: the threshold at 0, so negatives zeroed in the
    # mask pass must not turn into ties of a later read
    k = int((t < 0).sum()) + int((t == 0).sum()) // 2

    def same(device):
        x = t.to(device, copy=True)
        m = torch.empty(x.shape, dtype=torch.bool, device=device)
        return [x], [m], [x], None, [x, m]
    zero_both(same, k)

    # each ranks the other
    a, b = t[:2].clone(), t[1:].clone()
    k2 = int((a < 0).sum() + (b < 0).sum()) + int((a == 0).sum() + (b == 0).sum()) // 2

    def crossed(device):
        xa, xb = a.to(device, copy=True), b.to(device, copy=True)
        m = [torch.empty(x.shape, dtype=torch.bool, device=device) for x in (xa, xb)]
        return [xa, xb], m, [xb, xa], None, [xa, xb] + m
    for kk in (1, k2, a.numel() + b.numel() - 1):
        zero_both(crossed, kk)

    # views of one buffer: scores overlap the tensors partly (shifted by half a tensor), and a
    # score that is a view of another dtype of the same bytes is not the same tensor
    flat = torch.randint(-5, 6, (4 * CHUNK + 10,)).float()
    n = CHUNK + 3

    def shifted(device):
        buf = flat.to(device, copy=True)
        tensors = [buf[:n], buf[n:2 * n]]
        scores = [buf[n // 2:n // 2 + n], buf[2 * n:3 * n]]
        m = [torch.empty(n, dtype=torch.bool, device=device) for _ in tensors]
        return tensors, m, scores, None, [buf] + m
    for kk in ks_for(2 * n):
        zero_both(shifted, kk)


def test_zero_smallest_tensors_overlap_each_other():
    """Two views of one buffer that overlap: both are ranked as they were before any zeroing,
    and each zeroes its own pruned elements (the reference's order: select, then zero)."""
    flat = torch.randint(-4, 5, (3 * CHUNK,)).float()

    def build(device):
        buf = flat.to(device, copy=True)
        tensors = [buf[:2 * CHUNK], buf[CHUNK:]]
        m = [torch.empty(2 * CHUNK, dtype=torch.bool, device=device) for _ in tensors]
        return tensors, m, None, None, [buf] + m
    for k in ks_for(4 * CHUNK):
        zero_both(build, k)


def test_zero_smallest_keep_is_the_masks():
    """keep given as the masks to write (iterative pruning in place): the selection uses keep as
    it was on entry."""
    t = torch.randint(-3, 4, (5, CHUNK + 77)).float()
    keep = torch.rand(t.shape) > 0.3
    t2 = torch.randn(999).double()
    keep2 = torch.rand(t2.shape) > 0.5

    def same(device):
        x, x2 = t.to(device, copy=True), t2.to(device, copy=True)
        m, m2 = keep.to(device, copy=True), keep2.to(device, copy=True)
        return [x, x2], [m, m2], None, [m, m2], [x, x2, m, m2]

    def crossed(device):  # masks[0] is keep[1]'s buffer and the other way round (same shapes)
        x, y = t.to(device, copy=True), (t * -1).to(device, copy=True)
        m, m2 = keep.to(device, copy=True), keep.logical_not().to(device)
        return [x, y], [m, m2], None, [m2, m], [x, y, m, m2]
    for k in ks_for(int(keep.sum()) + int(keep2.sum())):
        zero_both(same, k)
    for k in ks_for(t.numel()):
        zero_both(crossed, k)


def test_zero_smallest_errors_leave_everything_untouched():
    """NaN and a bad k are found on the device (with keep masks, k only after the launch):
    nothing may be zeroed or written, non-contiguous tensors and masks included."""
    w = torch.randn(40, 50, device="cuda")
    w_nan = w.clone()
    w_nan[3, 4] = float("nan")
    keep = [torch.rand(40, 50, device="cuda") > 0.5, torch.ones(40, 50, dtype=torch.bool, device="cuda")]
    eligible = int(keep[0].sum()) + 2000
    cases = [  # (second tensor, scores, keep, k, message)
        (w_nan, None, None, 10, "NaN"),
        (w_nan, None, keep, 10, "NaN"),
        (w, [w, w_nan], None, 10, "NaN"),
        (w, None, None, 4001, r"k must lie in \[0, 4000\]"),
        (w, None, None, -1, r"k must lie in \[0, 4000\]"),
        (w, None, keep, -1, rf"k must lie in \[0, {eligible}\]"),  # k < 0 must not run the mask pass
        (w, None, keep, eligible + 1, rf"k must lie in \[0, {eligible}\]"),
        (w, [w, w], keep, eligible + 1, rf"k must lie in \[0, {eligible}\]"),
    ]
    for second, scores, kp, k, match in cases:
        # the second tensor and mask non-contiguous (written after the selection, if at all)
        tensors = [w.clone(), second.t().contiguous().t()]
        masks = [torch.ones(40, 50, dtype=torch.bool, device="cuda"),
                 torch.ones(50, 40, dtype=torch.bool, device="cuda").t()]
        before = [x.clone() for x in tensors]
        with pytest.raises(ValueError, match=match):
            ZERO(tensors, masks, scores, kp, k)
        for x, b in zip(tensors, before):
            assert same_bits(x.cpu(), b.cpu()), match
        assert all(bool(m.all()) for m in masks), match


def test_zero_smallest_k_zero_zeroes_only_the_ineligible():
    x = torch.randn(3 * CHUNK + 1)
    keep = torch.rand(x.shape) > 0.5
    zero_both(plain([x], None, [keep]), 0)
    zero_both(plain([x]), 0)  # nothing pruned, nothing zeroed
    zero_both(plain([x], None, [torch.zeros_like(keep)]), 0)  # every element zeroed


def test_zero_smallest_argument_errors():
    v = torch.randn(4, 4, device="cuda")
    m = torch.empty(4, 4, dtype=torch.bool, device="cuda")
    with pytest.raises(ValueError, match="masks must hold one mask per tensor"):
        ZERO([v], [m, m], None, None, 1)
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        ZERO([v], [m.cpu()], None, None, 1)
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        ZERO([v], [v], None, None, 1)
    with pytest.raises(ValueError, match=r"scores\[0\]"):
        ZERO([v], [m], [torch.randn(3, device="cuda")], None, 1)
    with pytest.raises(ValueError, match="keep"):
        ZERO([v], [m], None, [v > 0, v > 0], 1)
    with pytest.raises(TypeError, match=r"tensors\[0\]"):
        ZERO([v.int()], [m], None, None, 1)
    with pytest.raises(ValueError, match=r"values\[1\]"):
        ZERO([v, v.cpu()], [m, m.cpu()], None, None, 1)


def test_zero_smallest_side_stream():
    x = torch.randint(-3, 4, (5 * CHUNK + 7,)).float()
    want = x.clone()
    want_mask = torch.empty(x.shape, dtype=torch.bool)
    _prune_reference.zero_smallest([want], [want_mask], None, None, 2 * CHUNK)
    got = x.cuda()
    mask = torch.empty(x.shape, dtype=torch.bool, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ZERO([got], [mask], None, None, 2 * CHUNK)
    s.synchronize()
    assert same_bits(got.cpu(), want) and torch.equal(mask.cpu(), want_mask)
