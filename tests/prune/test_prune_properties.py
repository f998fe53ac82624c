"""Properties of the pruning ops on random inputs (hypothesis): exact counts, kept >= pruned,
the tie rule, and native kernels bitwise equal to the reference."""
import torch
from hypothesis import given, strategies as st

import sparsedistill
from sparsedistill.prune import reference
from _helpers import native_serves
from _strategies import float_tensors, shapes_2d

DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64])


@st.composite
def selections(draw):
    dtype = draw(DTYPES)
    tensors = [draw(float_tensors(draw(shapes_2d), dtype, allow_inf=True)) for _ in range(draw(st.integers(1, 3)))]
    keep = None
    if draw(st.booleans()):
        keep = [torch.rand(t.shape, generator=torch.Generator().manual_seed(i)) > 0.3 for i, t in enumerate(tensors)]
    eligible = sum(int(m.sum()) for m in keep) if keep else sum(t.numel() for t in tensors)
    return tensors, keep, draw(st.integers(0, eligible)), draw(st.booleans())


def flat_keys(tensors, magnitude):
    return torch.cat([reference.order_keys(t, magnitude) for t in tensors]) if tensors else torch.zeros(0)


@given(selections())
def test_select_smallest_prunes_exactly_k_and_keeps_the_largest(case):
    tensors, keep, k, magnitude = case
    masks = torch.ops.sparsedistill.select_smallest(tensors, keep, k, magnitude)
    flat = torch.cat([m.reshape(-1) for m in masks])
    eligible = torch.cat([m.reshape(-1) for m in keep]) if keep else torch.ones_like(flat)
    assert not (flat & ~eligible).any()  # the not-eligible stay False
    assert int((eligible & ~flat).sum()) == k
    keys = flat_keys(tensors, magnitude)
    pruned, kept = keys[eligible & ~flat], keys[flat]
    if pruned.numel() and kept.numel():
        assert kept.min() >= pruned.max()
        # ties at the threshold: the pruned ones come first in (tensor, flat index) order
        tie = keys == pruned.max()
        order = torch.nonzero(tie & eligible).squeeze(1)
        assert (~flat[order]).int().diff().le(0).all() if order.numel() > 1 else True
    if native_serves("select_smallest", "cpu"):
        for got, want in zip(masks, reference.select_smallest(tensors, keep, k, magnitude)):
            assert torch.equal(got, want)


@given(selections())
def test_zero_smallest_zeroes_exactly_the_pruned(case):
    tensors, keep, k, _ = case
    work = [t.clone() for t in tensors]
    masks = [torch.empty(t.shape, dtype=torch.bool) for t in tensors]
    torch.ops.sparsedistill.zero_smallest(work, masks, None, keep, k)
    want = reference.select_smallest(tensors, keep, k, True)
    for t, w, m, ref in zip(tensors, work, masks, want):
        assert torch.equal(m, ref)
        assert torch.equal(w[m], t[m]) and bool((w[~m] == 0).all())


@given(selections())
def test_public_functions_agree_with_the_op(case):
    tensors, keep, k, _ = case
    masks = sparsedistill.global_magnitude_masks(tensors, k, masks=keep)
    work = [t.clone() for t in tensors]
    pruned = sparsedistill.global_magnitude_prune_(work, k, masks=keep)
    for m, p, ref in zip(masks, pruned, reference.select_smallest(tensors, keep, k, True)):
        assert torch.equal(m, ref) and torch.equal(p, ref)


@given(st.data())
def test_nm_mask_keeps_n_of_every_m(data):
    n, m = data.draw(st.sampled_from([(2, 4), (1, 4), (4, 8), (1, 3), (7, 16), (3, 33)]))
    rows = data.draw(st.integers(0, 7))
    groups = data.draw(st.integers(1, 5))
    x = data.draw(float_tensors((rows, groups * m), data.draw(DTYPES), allow_inf=True))
    keep = torch.ops.sparsedistill.nm_mask(x, n, m, True)
    g = keep.reshape(-1, m)
    assert (g.sum(-1) == n).all()
    keys = x.detach().abs().double().reshape(-1, m)
    for row, kr in zip(keys, g):
        if n < m and n > 0:
            assert row[kr].min() >= row[~kr].max()
    if native_serves("nm_mask", "cpu"):
        assert torch.equal(keep, reference.nm_mask(x, n, m, True))


@given(st.integers(1, 9), st.integers(1, 70), st.integers(0, 2**31 - 1), st.sampled_from([0.3, 0.5, 0.7]))
def test_wanda_mask_does_not_depend_on_rescaling_an_input_feature(rows, cols, seed, sparsity):
    """Dividing column j of W by 2^e and multiplying feature j of X by 2^e (an exact
    reparametrisation: a LayerNorm gain moved into the next Linear) leaves |W_ij| * ||X_j||, and so
    Wanda's mask, unchanged. This is why Wanda survives outlier features and magnitude does not."""
    from sparsedistill.prune import LinearStats, wanda_prune_
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    sq_sum = torch.rand(cols, generator=g) * 10 + 0.1
    e = torch.randint(-6, 7, (cols,), generator=g).float()
    keep = wanda_prune_(w.clone(), LinearStats(5, sq_sum), sparsity)
    rescaled = wanda_prune_(w / 2**e, LinearStats(5, sq_sum * 4**e), sparsity)
    assert torch.equal(keep, rescaled)
