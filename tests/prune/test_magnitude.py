"""Exact magnitude selection: sparsedistill.magnitude_mask / magnitude_prune_ /
global_magnitude_masks and the select_smallest op, against sorting references."""
import pytest
import torch
import torch.nn.utils.prune as torch_prune

import sparsedistill
from sparsedistill.prune import reference as _prune_reference
from sparsedistill.prune.checks import resolve_amount

from _helpers import skip_unless_serving

OP = torch.ops.sparsedistill.select_smallest
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def pruned_count(mask):
    return int((~mask).sum())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (41, 1271), (3, 5, 17)])
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.9, 1.0, 5])
def test_exact_count_and_order(device, dtype, shape, amount):
    w = torch.randn(shape, device=device).to(dtype)
    n = w.numel()
    if isinstance(amount, int) and amount > n:
        pytest.skip("count above numel is an error, tested below")
    mask = sparsedistill.magnitude_mask(w, amount)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert pruned_count(mask) == resolve_amount(amount, n) == (amount if isinstance(amount, int) else round(amount * n))
    if 0 < pruned_count(mask) < n:
        assert w.abs()[mask].min() >= w.abs()[~mask].max()


@pytest.mark.parametrize("magnitude", [True, False])
@pytest.mark.parametrize("with_keep", [True, False])
def test_native_matches_reference_with_heavy_ties(device, magnitude, with_keep):
    skip_unless_serving("select_smallest", device)
    vals = [torch.randint(-3, 4, s, device=device).float() for s in [(300, 7), (1,), (0, 4), (70001,)]]
    vals[0][0, 0] = -0.0  # -0 and +0 are the same key
    keep = [torch.rand(v.shape, device=device) > 0.3 for v in vals] if with_keep else None
    n = sum(int(k.sum()) for k in keep) if with_keep else sum(v.numel() for v in vals)
    for k in [0, 1, n // 3, n // 2, n - 1, n]:
        got = OP(vals, keep, k, magnitude)
        want = _prune_reference.select_smallest(vals, keep, k, magnitude)
        for g, w in zip(got, want):
            assert torch.equal(g, w)


def test_ties_broken_by_lowest_flat_index_then_tensor_order(device):
    w = torch.tensor([[1.0, 2.0, 1.0], [1.0, -1.0, 3.0]], device=device)
    mask = sparsedistill.magnitude_mask(w, 2)  # four |w| == 1: the first two (flat 0, 2) go
    assert mask.tolist() == [[False, True, False], [True, True, True]]
    a, b = torch.ones(3, device=device), torch.ones(2, device=device)
    ma, mb = sparsedistill.global_magnitude_masks([a, b], 4)
    assert ma.tolist() == [False, False, False] and mb.tolist() == [False, True]


def test_global_masks_equal_concatenation(device):
    tensors = [torch.randn(s, device=device) for s in [(64, 33), (17,), (5, 3, 3, 3), (100, 100)]]
    for amount in [0.2, 0.75, 1234]:
        masks = sparsedistill.global_magnitude_masks(tensors, amount)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        want = sparsedistill.magnitude_mask(flat, amount)
        assert torch.equal(torch.cat([m.reshape(-1) for m in masks]), want)


def test_iterative_pruning_matches_torch_prune(device):
    lin = torch.nn.Linear(73, 41).to(device)
    ref = torch.nn.Linear(73, 41).to(device)
    ref.load_state_dict(lin.state_dict())
    mask = None
    for amount in [0.3, 0.5, 7]:
        torch_prune.l1_unstructured(ref, "weight", amount)
        mask = sparsedistill.magnitude_mask(lin.weight, amount, mask=mask)
        assert torch.equal(mask, ref.weight_mask.bool())


def test_scores_drive_the_selection(device):
    w = torch.randn(50, 20, device=device)
    scores = torch.rand(50, 20, device=device)
    mask = sparsedistill.magnitude_mask(w, 0.4, scores=scores)
    assert scores[mask].min() >= scores[~mask].max()


def test_magnitude_prune_in_place(device):
    w = torch.randn(30, 30, device=device)
    before = w.clone()
    mask = sparsedistill.magnitude_prune_(w, 0.5)
    assert torch.equal(w[mask], before[mask]) and (w[~mask] == 0).all()
    assert pruned_count(mask) == 450


def bad_calls(device):
    w = torch.randn(6, 5, device=device)
    nan = w.clone()
    nan[2, 3] = float("nan")
    return [
        ("amount", lambda: sparsedistill.magnitude_prune_(w, -0.1)),
        ("amount", lambda: sparsedistill.magnitude_prune_(w, 1.5)),
        ("amount", lambda: sparsedistill.magnitude_prune_(w, 31)),
        ("amount", lambda: sparsedistill.magnitude_prune_(w, -1)),
        ("amount", lambda: sparsedistill.magnitude_prune_(w, True)),
        ("tensors", lambda: sparsedistill.magnitude_prune_(w.long(), 0.5)),
        ("NaN", lambda: sparsedistill.magnitude_prune_(nan, 0.5)),
        ("NaN", lambda: sparsedistill.magnitude_prune_(w, 0.5, scores=nan)),
        ("scores", lambda: sparsedistill.magnitude_prune_(w, 0.5, scores=w[:3])),
        ("masks", lambda: sparsedistill.magnitude_prune_(w, 0.5, mask=w)),  # float, not bool
        ("amount", lambda: sparsedistill.magnitude_prune_(w, 29, mask=w > 0)),
    ], (w, nan)


def test_bad_input_names_the_argument_and_modifies_nothing(device):
    calls, tensors = bad_calls(device)
    before = [t.clone() for t in tensors]
    for name, call in calls:
        with pytest.raises((ValueError, TypeError), match=name):
            call()
    for t, b in zip(tensors, before):
        assert torch.equal(t, b) or (torch.isnan(t) == torch.isnan(b)).all()


def test_op_level_checks(device):
    w = torch.randn(4, 4, device=device)
    with pytest.raises(Exception, match="k must lie"):
        OP([w], None, 17, True)
    with pytest.raises(Exception, match="keep"):
        OP([w], [w > 0, w > 0], 1, True)


def test_nan_error_names_the_first_tensor(device):
    # One 65536-element chunk per tensor, so CPU threads see the NaNs in different tasks.
    vals = [torch.randn(65536, device=device) for _ in range(5)]
    vals[4][7] = float("nan")
    vals[1][9] = float("nan")
    for keep in (None, [torch.ones(65536, dtype=torch.bool, device=device)] * 5):
        with pytest.raises(ValueError, match=r"tensors\[1\] .*NaN"):
            OP(vals, keep, 3, True)


def test_opcheck(device):
    w = torch.randn(9, 13, device=device)
    torch.library.opcheck(OP, ([w, w[0]], None, 40, True))
    torch.library.opcheck(OP, ([w], [w > -0.5], 10, False))


PRUNE_OP = torch.ops.sparsedistill.zero_smallest


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_keep", [True, False])
@pytest.mark.parametrize("with_scores", [True, False])
def test_zero_smallest_zeroes_exactly_the_pruned(device, dtype, with_keep, with_scores):
    shapes = [(300, 7), (1,), (0, 4), (70001,), (33, 40)]
    tensors = [torch.randint(-3, 4, s, device=device).to(dtype) for s in shapes]
    tensors[-1] = tensors[-1].T  # a non-contiguous one (zeroed after the selection)
    scores = [torch.randint(0, 5, t.shape, device=device).to(dtype) for t in tensors] if with_scores else None
    keep = [torch.rand(t.shape, device=device) > 0.3 for t in tensors] if with_keep else None
    n = sum(int(k.sum()) for k in keep) if with_keep else sum(t.numel() for t in tensors)
    for k in [0, n // 3, n]:
        got = [t.clone() for t in tensors]
        masks = [torch.empty(t.shape, dtype=torch.bool, device=device) for t in tensors]
        masks[0] = masks[0].T.contiguous().T  # a non-contiguous mask, too
        PRUNE_OP(got, masks, scores, keep, k)
        want = _prune_reference.select_smallest(scores if with_scores else tensors, keep, k, not with_scores)
        for g, t, m, w in zip(got, tensors, masks, want):
            assert torch.equal(m, w)
            assert torch.equal(g, torch.where(w, t, torch.zeros_like(t)))


@pytest.mark.parametrize("score_dtype", [None, torch.float16, torch.float64])
def test_zero_smallest_ranks_ties_across_chunks(device, score_dtype):
    # Ties spread over several 65536-element chunks, so only some chunks hold the tie boundary;
    # scores of another dtype than the tensors, or the tensors themselves (aliased).
    t = torch.randint(-20, 21, (5, 70001), device=device).float()
    scores = None if score_dtype is None else [torch.randint(0, 9, t.shape, device=device).to(score_dtype)]
    for k in [1, 123457, 200001, t.numel() - 1]:
        got, mask = t.clone(), torch.empty(t.shape, dtype=torch.bool, device=device)
        PRUNE_OP([got], [mask], scores, None, k)
        want = _prune_reference.select_smallest(scores or [t], None, k, scores is None)[0]
        assert torch.equal(mask, want) and torch.equal(got, t * want)
    aliased = t.clone()  # the threshold at 0: negatives zeroed in the mask pass must not turn into ties
    k = int((t < 0).sum()) + int((t == 0).sum()) // 2
    PRUNE_OP([aliased], [mask], [aliased], None, k)
    want = _prune_reference.select_smallest([t], None, k, False)[0]
    assert torch.equal(mask, want) and torch.equal(aliased, t * want)
    # Scores that alias another of the tensors: each ranks the other.
    a, b = t[:3].clone(), t[2:].clone()
    k = int((a < 0).sum() + (b < 0).sum()) + int((a == 0).sum() + (b == 0).sum()) // 2
    ga, gb = a.clone(), b.clone()
    ma, mb = torch.empty_like(a, dtype=torch.bool), torch.empty_like(b, dtype=torch.bool)
    PRUNE_OP([ga, gb], [ma, mb], [gb, ga], None, k)
    want = _prune_reference.select_smallest([b, a], None, k, False)
    assert torch.equal(ma, want[0]) and torch.equal(mb, want[1])
    assert torch.equal(ga, a * want[0]) and torch.equal(gb, b * want[1])


def test_zero_smallest_leaves_tensors_untouched_on_error(device):
    w = torch.randn(40, 50, device=device)
    before = w.clone()
    w_nan = w.clone()
    w_nan[3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        PRUNE_OP([w, w_nan], [w > 0, w > 0], None, None, 10)
    assert torch.equal(w, before)
    with pytest.raises(ValueError, match="k must lie"):
        PRUNE_OP([w], [w > 0], None, None, w.numel() + 1)
    with pytest.raises(ValueError, match="scores"):
        PRUNE_OP([w], [w > 0], [torch.randn(3, device=device)], None, 1)
    assert torch.equal(w, before)
    with pytest.raises(ValueError, match="amount"):
        sparsedistill.magnitude_prune_(w, 1.5)
    assert torch.equal(w, before)


def test_magnitude_prune_matches_mask_then_zero(device):
    w = torch.randn(257, 129, device=device)
    ref = w.clone()
    mask = sparsedistill.magnitude_mask(ref, 0.7)
    got = sparsedistill.magnitude_prune_(w, 0.7)
    assert torch.equal(got, mask) and torch.equal(w, ref * mask)
    ws = [torch.randn(30, 30, device=device), torch.randn(100, device=device)]
    masks = sparsedistill.global_magnitude_prune_(ws, 0.5)
    assert sum(int((~m).sum()) for m in masks) == 500
    assert all(bool((w[~m] == 0).all()) for w, m in zip(ws, masks))


def test_zero_smallest_opcheck(device):
    w = torch.randn(20, 30, device=device)
    torch.library.opcheck(PRUNE_OP, ([w.clone(), w[0].clone()], [w > 0, w[0] > 0], None, None, 40))
    torch.library.opcheck(PRUNE_OP, ([w.clone()], [w > 0], [w.abs() + 1], [w > -0.5], 10))


def test_torch_compile_fullgraph(device):
    # Both selection ops inside a compiled graph (fake kernels, functionalisation of the
    # in-place zero_smallest), against eager on the same inputs.
    w = torch.randn(33, 65, device=device)

    def masks_then_prune(w, scores):
        keep = OP([w, scores], None, 500, True)
        pruned = w.clone()
        masks = [torch.empty_like(w, dtype=torch.bool)]
        PRUNE_OP([pruned], masks, [scores], None, 700)
        return keep[0], keep[1], pruned, masks[0]

    scores = torch.rand(33, 65, device=device)
    compiled = torch.compile(masks_then_prune, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(w, scores), masks_then_prune(w, scores)):
        assert torch.equal(got, want)
    fn = torch.compile(lambda t: sparsedistill.magnitude_mask(t, 0.3), fullgraph=True, backend="aot_eager")
    assert torch.equal(fn(w), sparsedistill.magnitude_mask(w, 0.3))
