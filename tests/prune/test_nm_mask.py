"""The nm_mask op (N:M keep-masks along the last dim): native kernels against the pure-PyTorch
reference, bitwise, on ties, every dtype, odd shapes and group sizes; opcheck; errors.
sparsedistill.nm_mask (the public wrapper, any dim) is tested in test_structured.py."""
import pytest
import torch

from sparsedistill.prune import reference as _prune_reference
from sparsedistill._library import serves
from sparsedistill.prune import nm_mask

from _helpers import native_serves, skip_unless_native

OP = torch.ops.sparsedistill.nm_mask
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# (n, m): 2:4 and 4:8 have register paths on CUDA; m above 32 sorts on the CPU
NM = [(2, 4), (1, 4), (3, 4), (4, 8), (1, 3), (2, 5), (7, 16), (10, 33), (20, 64), (0, 4), (4, 4), (1, 1)]


def check(x, n, m, magnitude):
    got = OP(x, n, m, magnitude)
    assert got.dtype == torch.bool and got.shape == x.shape and got.device == x.device
    assert got.is_contiguous()
    assert (got.reshape(-1, m).sum(-1) == n).all()
    if native_serves("nm_mask", x.device.type):  # else the op is the reference itself
        assert torch.equal(got.cpu(), _prune_reference.nm_mask(x.cpu(), n, m, magnitude))
    return got


def test_native_kernel_serves(device):
    skip_unless_native(device)
    assert serves("nm_mask", device) != "reference (pure PyTorch)"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", NM)
@pytest.mark.parametrize("magnitude", [True, False])
def test_heavy_ties_match_reference(device, dtype, n, m, magnitude):
    x = torch.randint(-2, 3, (7, 3, 2 * m), device=device).to(dtype)
    x[0, 0, 0] = -0.0
    keep = check(x, n, m, magnitude)
    assert (keep.reshape(-1, m).sum(-1) == n).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (3, 7), (20, 64)])
def test_random_values_odd_shapes(device, dtype, n, m):
    for shape in [(m,), (41, 31 * m), (3, 5, 7, m), (0, m), (5, 0)]:
        x = torch.randn(shape, device=device).to(dtype)
        for magnitude in (True, False):
            check(x, n, m, magnitude)


def test_tie_rule_lower_index_pruned_first(device):
    x = torch.tensor([[1.0, -1.0, 1.0, 0.5], [3.0, 3.0, 3.0, 3.0], [0.0, -0.0, 0.0, -0.0],
                      [-1.0, 1.0, -1.0, 1.0]], device=device)
    want_mag = [[False, True, True, False], [False, False, True, True], [False, False, True, True],
                [False, False, True, True]]
    assert OP(x, 2, 4, True).tolist() == want_mag
    # by value: -0 == +0 (ties by index), negatives below positives
    want_val = [[True, False, True, False], [False, False, True, True], [False, False, True, True],
                [False, True, False, True]]
    assert OP(x, 2, 4, False).tolist() == want_val


def test_float64_compared_in_float64(device):
    # 1 and 1 + 1e-12 are one float32 but two float64 values: the larger one is kept
    x = torch.tensor([1.0 + 1e-12, 1.0, 1.0, 1.0 - 1e-12], dtype=torch.float64, device=device)
    assert OP(x, 1, 4, True).tolist() == [True, False, False, False]
    assert OP(x, 2, 4, False).tolist() == [True, False, True, False]


@pytest.mark.parametrize("magnitude", [True, False])
def test_nan_ranks_above_numbers(device, magnitude):
    """The op orders NaN like torch.sort (above every number, NaNs tied); the public
    sparsedistill.nm_mask rejects NaN before calling it."""
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[nan, 1.0, -nan, 2.0], [inf, nan, -inf, 0.0], [nan, nan, nan, nan]], device=device)
    for n in range(5):
        check(x, n, 4, magnitude)
    assert OP(x, 1, 4, magnitude)[2].tolist() == [False, False, False, True]


def test_special_values(device):
    for dtype in DTYPES:
        x = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -1e-40, 6e-8, -6e-8,
                          1e30, -1e30, 1.0, -1.0], device=device).to(dtype)
        for m in (4, 3, 6, 12):
            for n in range(m + 1):
                check(x, n, m, True)
                check(x, n, m, False)


def test_non_contiguous_input(device):
    x = torch.randint(-3, 4, (12, 10), device=device).float()
    check(x.t(), 2, 4, True)  # (10, 12): made contiguous by the op
    check(x[:, ::2].t(), 1, 4, False)


def test_wrapper_calls_the_op_along_any_dim(device):
    x = torch.randint(-3, 4, (4, 8, 12), device=device).to(torch.bfloat16)
    for dim in range(3):
        want = OP(x.movedim(dim, -1).contiguous(), 2, 4, True).movedim(-1, dim)
        got = nm_mask(x, 2, 4, dim)
        assert torch.equal(got, want) and got.is_contiguous()


@pytest.mark.parametrize("args,exc,match", [
    ((torch.randn(4, 8), 5, 4, True), ValueError, r"n must lie in \[0, m\]"),
    ((torch.randn(4, 8), -1, 4, True), ValueError, r"n must lie in \[0, m\]"),
    ((torch.randn(4, 8), 0, 0, True), ValueError, r"m must be >= 1"),
    ((torch.randn(4, 10), 2, 4, True), ValueError, r"divisible by m = 4"),
    ((torch.randn(()), 1, 1, True), ValueError, r"at least one dim"),
    ((torch.ones(4, 8, dtype=torch.int32), 2, 4, True), TypeError, r"floating point"),
])
def test_op_errors(device, args, exc, match):
    x, *rest = args
    with pytest.raises(exc, match=match):
        OP(x.to(device), *rest)
    with pytest.raises(exc, match=match):
        _prune_reference.nm_mask(x.to(device), *rest)


def test_opcheck(device):
    samples = [
        (torch.randn(9, 16, device=device), 2, 4, True),
        (torch.randint(-2, 3, (3, 5, 24), device=device).to(torch.bfloat16), 3, 8, False),
        (torch.randn(6, 7, device=device, dtype=torch.float64).t(), 2, 3, True),
        (torch.randn(0, 8, device=device, dtype=torch.float16), 1, 4, True),
        (torch.randn(4, 40, device=device, requires_grad=True), 20, 40, True),
    ]
    for args in samples:
        torch.library.opcheck(OP, args)


def test_torch_compile_fullgraph(device):
    x = torch.randn(8, 16, device=device)
    fn = torch.compile(lambda t: OP(t, 2, 4, True), fullgraph=True, backend="aot_eager")
    assert torch.equal(fn(x), OP(x, 2, 4, True))
