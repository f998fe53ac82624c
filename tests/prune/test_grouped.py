"""Selection within groups (per output row, per column, tiles): the op select_smallest_grouped
on every backend against a sort-based oracle, and magnitude_mask(group=...) / nm_mask(scores=)."""
import pytest
import torch

import sparsedistill as sd
from sparsedistill.prune import reference as R
from _helpers import skip_unless_serving

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
CASES = [((7, 12), (1, 12)), ((8, 12), (2, 3)), ((5, 9), (5, 1)), ((3, 4099), (1, 4099)),
         ((64, 96), (16, 32)), ((1, 1), (1, 1)), ((0, 5), (1, 5)), ((4, 0), (2, 1))]


def oracle(values, keep, gr, gc, k, magnitude):
    """Per group, a stable sort of (key, position) in float64: the first k eligible are pruned."""
    x = values.double().abs() if magnitude else values.double()
    out = torch.zeros(values.shape, dtype=torch.bool)
    rows, cols = values.shape
    for gi in range(rows // gr if gr else 0):
        for gj in range(cols // gc if gc else 0):
            pos = [(r, c) for r in range(gi * gr, gi * gr + gr) for c in range(gj * gc, gj * gc + gc)]
            elig = [p for p in pos if keep is None or bool(keep[p])]
            ranked = sorted(range(len(elig)), key=lambda i: (float(x[elig[i]]), i))
            pruned = {elig[i] for i in ranked[:int(k[gi, gj])]}
            for p in elig:
                out[p] = p not in pruned
    return out


def random_case(shape, tile, dtype, device, with_keep, gen):
    v = (torch.randn(shape, generator=gen) * 3).round()  # many ties, signed zeros
    v[torch.rand(shape, generator=gen) < 0.1] *= -0.0
    v = v.to(dtype).to(device)
    keep = (torch.rand(shape, generator=gen) > 0.3).to(device) if with_keep else None
    elig = R.group_view(keep.cpu() if with_keep else torch.ones(shape, dtype=torch.bool), *tile).sum(1)
    k = (elig.double() * torch.rand(elig.shape, generator=gen)).round().long()
    return v, keep, k.reshape(shape[0] // tile[0], shape[1] // tile[1]).to(device)


@pytest.mark.parametrize("shape,tile", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_selection_is_exact(device, shape, tile, dtype):
    gen = torch.Generator().manual_seed(sum(shape) + sum(tile))
    for with_keep in (False, True):
        v, keep, k = random_case(shape, tile, dtype, device, with_keep, gen)
        for magnitude in (True, False):
            got = torch.ops.sparsedistill.select_smallest_grouped(v, keep, *tile, k, magnitude)
            if shape[0] * shape[1] <= 4 * 4099:
                want = oracle(v.cpu().float(), None if keep is None else keep.cpu(), *tile, k.cpu(), magnitude)
                assert torch.equal(got.cpu(), want)
            ref = R.select_smallest_grouped(v, keep, *tile, k, magnitude)
            assert torch.equal(got, ref)
            g = R.group_view(got.cpu(), *tile)
            elig = R.group_view(torch.ones(shape, dtype=torch.bool) if keep is None else keep.cpu(), *tile)
            assert torch.equal((elig & ~g).sum(1), k.cpu().reshape(-1))  # exact counts
            assert not (g & ~elig).any()                                   # not-eligible stay False


def test_native_grouped_equals_reference_on_large_rows(device):
    skip_unless_serving("select_smallest_grouped", device)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(33, 11008, generator=gen).to(device)
    k = torch.full((33, 1), 5504, dtype=torch.int64, device=device)
    got = torch.ops.sparsedistill.select_smallest_grouped(v, None, 1, 11008, k, True)
    assert torch.equal(got, R.select_smallest_grouped(v, None, 1, 11008, k, True))
    kept, pruned = v.abs()[got].view(33, -1), v.abs()[~got].view(33, -1)
    assert (kept.min(1).values >= pruned.max(1).values).all()  # kept >= pruned, row by row


def test_magnitude_mask_groups(device):
    w = torch.randn(6, 4, 3, device=device)
    rows = sd.magnitude_mask(w, 0.5, group="row")
    assert torch.equal(rows.reshape(6, -1).sum(1).cpu(), torch.full((6,), 6))
    flat = w.abs().reshape(6, -1)
    for r in range(6):
        m = rows.reshape(6, -1)[r]
        assert flat[r][m].min() >= flat[r][~m].max()
    cols = sd.magnitude_mask(w, 1, group="column")
    assert torch.equal((~cols).reshape(6, -1).sum(0).cpu(), torch.ones(12, dtype=torch.long))
    tiles = sd.magnitude_mask(w, 0.25, group=(3, 4))
    assert torch.equal(R.group_view((~tiles).reshape(6, -1), 3, 4).sum(1).cpu(), torch.full((6,), 3))
    assert torch.equal(sd.magnitude_mask(w, 0.5, group="tensor"), sd.magnitude_mask(w, 0.5))


@pytest.mark.parametrize("cols", [12, 2048])
def test_non_negative_scores_select_as_signed(device, cols):
    """Non-negative scores take the magnitude keys (the guided per-row path on long rows): the
    same selection as the signed reference, ties and zeros included."""
    gen = torch.Generator().manual_seed(cols)
    s = torch.rand(40, cols, generator=gen)
    s[3] = (s[3] * 4).round() / 4  # ties at the threshold
    s[5, ::2] = 0.0
    s[6, 1] = -0.0
    s = s.to(device)
    w = torch.randn(40, cols, device=device)
    got = sd.magnitude_mask(w, 0.5, scores=s, group="row")
    k = torch.full((40, 1), cols // 2, dtype=torch.int64, device=device)
    assert torch.equal(got, R.select_smallest_grouped(s, None, 1, cols, k, False))


def test_magnitude_mask_groups_iterative(device):
    w = torch.randn(8, 10, device=device)
    first = sd.magnitude_mask(w, 0.5, group="row")
    second = sd.magnitude_mask(w, 0.4, group="row", mask=first)   # 40% of the 5 left per row
    assert not (second & ~first).any()
    assert torch.equal((~second).sum(1).cpu(), torch.full((8,), 7))


def test_magnitude_prune_groups_in_place(device):
    w = torch.randn(5, 16, device=device)
    scores = torch.rand(5, 16, device=device)
    before = w.clone()
    v0 = w._version
    keep = sd.magnitude_prune_(w, 0.75, scores=scores, group="row")
    assert w._version > v0
    assert torch.equal(w, before * keep)
    assert torch.equal(keep, sd.magnitude_mask(before, 0.75, scores=scores, group="row"))
    for r in range(5):
        assert scores[r][keep[r]].min() >= scores[r][~keep[r]].max()


@pytest.mark.parametrize("group,err", [("rows", ValueError), ((3, 4), ValueError), ((0, 2), ValueError),
                                       ((1.5, 2), TypeError), ((1, 2, 3), ValueError)])
def test_bad_group_is_refused_untouched(group, err):
    w = torch.randn(4, 6)
    before = w.clone()
    with pytest.raises(err, match="group"):
        sd.magnitude_prune_(w, 0.5, group=group)
    assert torch.equal(w, before)


@pytest.mark.parametrize("amount", [1.5, -0.1, 7, "half"])
def test_bad_amount_per_group_is_refused(amount):
    w = torch.randn(4, 6)
    before = w.clone()
    with pytest.raises((ValueError, TypeError), match="amount"):
        sd.magnitude_prune_(w, amount, group="row")
    assert torch.equal(w, before)


def test_nm_mask_with_scores(device):
    w = torch.randn(6, 16, device=device)
    s = torch.rand(6, 16, device=device)
    keep = sd.nm_mask(w, 2, 4, scores=s)
    assert torch.equal(keep, sd.nm_mask(s, 2, 4))
    assert torch.equal(keep.reshape(-1, 4).sum(1).cpu(), torch.full((24,), 2))
    with pytest.raises(ValueError, match="scores"):
        sd.nm_mask(w, 2, 4, scores=s[:3])
    bad = s.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="scores"):
        sd.nm_mask(w, 2, 4, scores=bad)


def test_grouped_op_under_compile_and_opcheck():
    v = torch.randn(8, 12)
    k = torch.full((8, 1), 5, dtype=torch.int64)
    torch.library.opcheck(torch.ops.sparsedistill.select_smallest_grouped.default, (v, torch.rand(8, 12) > 0.2, 1, 12, k.clamp(max=3), True),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    fn = torch.compile(lambda x, kk: torch.ops.sparsedistill.select_smallest_grouped(x, None, 1, 12, kk, True),
                       fullgraph=True)
    assert torch.equal(fn(v, k), torch.ops.sparsedistill.select_smallest_grouped(v, None, 1, 12, k, True))


def zeroed_without_mask(v, keep, tile, k, scale):
    """values after zero_smallest_grouped with mask=None (no mask written)."""
    out = v.clone()
    torch.ops.sparsedistill.zero_smallest_grouped(out, None, keep, *tile, k, scale)
    return out


@pytest.mark.parametrize("shape,tile", [((7, 12), (1, 12)), ((8, 12), (2, 3)), ((5, 9), (5, 1)), ((3, 4099), (1, 4099))])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scaled", [False, True])
def test_zero_smallest_grouped_masks_and_zeroes(device, shape, tile, dtype, scaled):
    gen = torch.Generator().manual_seed(7)
    for with_keep in (False, True):
        v, keep, k = random_case(shape, tile, dtype, device, with_keep, gen)
        scale = (torch.rand(shape[1], generator=gen) * 2).to(device) if scaled else None
        got_v, got_m = v.clone(), torch.empty(shape, dtype=torch.bool, device=device)
        torch.ops.sparsedistill.zero_smallest_grouped(got_v, got_m, keep, *tile, k, scale)
        want_v, want_m = v.clone(), torch.empty_like(got_m)
        R.zero_smallest_grouped(want_v, want_m, keep, *tile, k, scale)
        assert torch.equal(got_m, want_m) and torch.equal(got_v, want_v)
        assert torch.equal(zeroed_without_mask(v, keep, tile, k, scale), want_v)
        scores = v.float().abs() * scale if scaled else v
        assert torch.equal(got_m, R.select_smallest_grouped(scores, keep, *tile, k, True))
        assert torch.equal(got_v, v * got_m)


@pytest.mark.parametrize("cols", [1024, 2049, 5632])
@pytest.mark.parametrize("scaled", [False, True])
def test_zero_smallest_grouped_on_continuous_rows(device, cols, scaled):
    """Rows without ties at the threshold (the one-pass mask-and-zero path), with exact zeros,
    infinities and magnitudes over many exponents, against the reference."""
    gen = torch.Generator().manual_seed(cols)
    v = torch.randn(9, cols, generator=gen) * torch.exp(torch.randn(9, cols, generator=gen) * 4)
    v[0, ::7] = 0.0
    v[1, 3] = float("inf")
    v[2, 5] = -float("inf")
    v = v.to(device)
    k = torch.tensor([0, 1, cols // 2, cols - 1, cols, 7, cols // 3, cols // 2 + 1, 2 * cols // 3],
                     dtype=torch.int64, device=device).unsqueeze(1)
    scale = (torch.rand(cols, generator=gen) * 3).to(device) if scaled else None
    got_v, got_m = v.clone(), torch.empty(v.shape, dtype=torch.bool, device=device)
    torch.ops.sparsedistill.zero_smallest_grouped(got_v, got_m, None, 1, cols, k, scale)
    want_v, want_m = v.clone(), torch.empty_like(got_m)
    R.zero_smallest_grouped(want_v, want_m, None, 1, cols, k, scale)
    assert torch.equal(got_m, want_m) and torch.equal(got_v, want_v)
    assert torch.equal(zeroed_without_mask(v, None, (1, cols), k, scale), want_v)
    assert torch.equal((~got_m).sum(1), k.squeeze(1))
    for signed in (False, True):  # the signed keys of select_smallest_grouped (magnitude=False)
        got = torch.ops.sparsedistill.select_smallest_grouped(v, None, 1, cols, k, not signed)
        assert torch.equal(got, R.select_smallest_grouped(v, None, 1, cols, k, not signed))


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("cols", [2048, 1003])
def test_row_selection_guided_by_the_previous_row(device, scaled, cols):
    """Many similar rows with one k (the guided path: the previous row's threshold brackets the
    next), then rows whose scale jumps (misses that fall back), rows with ties at the
    threshold and rows of zeros: exact against the reference."""
    gen = torch.Generator().manual_seed(3)
    rows = 96
    v = torch.randn(rows, cols, generator=gen)
    v[40:48] *= 1000.0                       # a jump in scale: the bracket misses
    v[48:56] = (v[48:56] * 4).round() / 4    # many ties at the threshold
    v[56:58] = 0.0                           # all zeros
    v[60:64, ::3] = 0.0
    v = v.to(device)
    k = torch.full((rows, 1), cols // 2, dtype=torch.int64, device=device)
    k[70:80] = cols // 5                     # k changes: the bracket misses once, then follows
    scale = (torch.rand(cols, generator=gen) + 0.5).to(device) if scaled else None
    got_v, got_m = v.clone(), torch.empty(v.shape, dtype=torch.bool, device=device)
    torch.ops.sparsedistill.zero_smallest_grouped(got_v, got_m, None, 1, cols, k, scale)
    want_v, want_m = v.clone(), torch.empty_like(got_m)
    R.zero_smallest_grouped(want_v, want_m, None, 1, cols, k, scale)
    assert torch.equal(got_m, want_m) and torch.equal(got_v, want_v)
    assert torch.equal(zeroed_without_mask(v, None, (1, cols), k, scale), want_v)
    if not scaled:
        got = torch.ops.sparsedistill.select_smallest_grouped(v, None, 1, cols, k, True)
        assert torch.equal(got, R.select_smallest_grouped(v, None, 1, cols, k, True))
        assert torch.equal((~got).sum(1), k.squeeze(1))


@pytest.mark.parametrize("case", ["k", "nan", "scale", "mask"])
def test_zero_smallest_grouped_rejects_without_writing(device, case):
    v = torch.randn(4, 8, device=device)
    m = torch.ones(4, 8, dtype=torch.bool, device=device)
    k = torch.full((4, 1), 4, dtype=torch.int64, device=device)
    scale = torch.ones(8, device=device)
    if case == "k":
        k[3, 0] = 9
    if case == "nan":
        v[3, 7] = float("nan")
    if case == "scale":
        scale = scale[:5]
    if case == "mask":
        m = m.float()
    before_v, before_m = v.clone(), m.clone()
    for fn in (R.zero_smallest_grouped, torch.ops.sparsedistill.zero_smallest_grouped):
        with pytest.raises(ValueError):
            fn(v, m, None, 1, 8, k, scale)
        assert torch.equal(v, before_v, ) if case != "nan" else torch.equal(v.isnan(), before_v.isnan())
        assert torch.equal(m, before_m)
        if case != "mask":  # and without a mask to write
            with pytest.raises(ValueError):
                fn(v, None, None, 1, 8, k, scale)
            assert torch.equal(v, before_v, ) if case != "nan" else torch.equal(v.isnan(), before_v.isnan())


def bits(t):
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


@pytest.mark.parametrize("dtype,tile,with_keep", [(torch.float32, (1, 2048), False), (torch.bfloat16, (1, 2048), False),
                                                  (torch.float32, (2, 1024), True), (torch.float16, (4, 512), False)])
@pytest.mark.parametrize("nan_row", [0, 37, 63])
def test_zero_without_mask_restores_the_rows_pruned_before_a_nan(device, dtype, tile, with_keep, nan_row):
    """In place without a mask, tiles are pruned before a later one shows NaN, then put back
    from the undo log: the rejected call leaves every bit as it was (zeros, -0.0, ties, zeros
    kept at a threshold of 0), and without the NaN the same call equals the reference."""
    gen = torch.Generator().manual_seed(nan_row)
    rows, cols = 64, 2048
    v = torch.randn(rows, cols, generator=gen)
    v[5:9] = (v[5:9] * 2).round() / 2          # ties at the threshold
    v[10, ::3] = 0.0
    v[11, ::5] = -0.0
    v[12, : 3 * cols // 4] = 0.0               # k below the zeros: zeros are kept at K = 0
    v[20:24] *= 1000.0                         # the guided band misses
    v = v.to(dtype).to(device)
    keep = (torch.rand(rows, cols, generator=gen) > 0.1).to(device) if with_keep else None
    grid = (rows // tile[0], cols // tile[1])
    eligible = tile[0] * tile[1] if keep is None else keep.reshape(grid[0], tile[0], grid[1], tile[1]).sum((1, 3))
    k = (torch.full(grid, tile[0] * tile[1] // 2, dtype=torch.int64) if keep is None
         else (eligible // 2).to(torch.int64)).to(device)
    k[12 // tile[0]] = (k[12 // tile[0]] // 4)
    scale = (torch.rand(cols, generator=gen) + 0.5).to(device)
    bad = v.clone()
    bad[nan_row, 1000] = float("nan")
    before = bad.clone()
    with pytest.raises(ValueError, match="NaN"):
        torch.ops.sparsedistill.zero_smallest_grouped(bad, None, keep, *tile, k, scale)
    assert torch.equal(bits(bad), bits(before))
    want = v.clone()
    R.zero_smallest_grouped(want, None, keep, *tile, k, scale)
    assert torch.equal(bits(zeroed_without_mask(v, keep, tile, k, scale)), bits(want))


def test_wanda_prune_equals_scores_then_selection(device):
    from sparsedistill.prune import LinearStats, wanda_prune_
    w = torch.randn(16, 40, device=device)
    stats = LinearStats(10, (torch.rand(40) * 5).to(device))
    want = sd.magnitude_mask(w, 0.5, scores=sd.wanda_scores(w, stats), group="row")
    w2 = w.clone()
    keep = wanda_prune_(w2, stats, 0.5)
    assert torch.equal(keep, want) and torch.equal(w2, w * want)
    strided = w.t().contiguous().t()  # same values, column-major: the copy path
    assert torch.equal(wanda_prune_(strided, stats, 0.5), want) and torch.equal(strided, w * want)
    for w3 in (w.clone(), w.t().contiguous().t()):  # no mask kept: the same weights
        assert wanda_prune_(w3, stats, 0.5, return_mask=False) is None and torch.equal(w3, w * want)
    big = torch.randn(40, 4096, device=device)
    big_stats = LinearStats(10, (torch.rand(4096) * 5).to(device))
    big[30, 7] = float("nan")
    before = big.clone()
    with pytest.raises(ValueError, match="NaN"):
        wanda_prune_(big, big_stats, 0.5, return_mask=False)
    assert torch.equal(big.isnan(), before.isnan()) and torch.equal(big.nan_to_num(), before.nan_to_num())


def test_zero_smallest_grouped_opcheck():
    v = torch.randn(6, 10)
    k = torch.full((6, 1), 4, dtype=torch.int64)
    for mask in (torch.empty(6, 10, dtype=torch.bool), None):
        args = (v, mask, None, 1, 10, k, torch.rand(10))
        torch.library.opcheck(torch.ops.sparsedistill.zero_smallest_grouped.default, args,
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("cluster", ["few_levels", "geometric"])
def test_row_selection_with_clustered_thresholds(device, cluster):
    """The keys near each row's threshold packed into a tiny range (a few levels with many
    ties, or geometrically crowded towards one value): the bucket rounds that select inside the
    band shrink slowly or not at all there, and must still give the exact k-th key."""
    gen = torch.Generator().manual_seed(11)
    rows, cols = 64, 2048
    v = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    near = (v.abs() - v.abs().median(dim=1, keepdim=True).values).abs().argsort(dim=1)[:, :400]
    level = torch.randint(0, 5, (rows, 400), generator=gen, dtype=torch.float64)
    if cluster == "few_levels":
        crowd = 0.7 * (1 + level * 2.0 ** -20)
    else:
        crowd = 0.7 * (1 + 2.0 ** -torch.randint(1, 40, (rows, 400), generator=gen).double())
    v.scatter_(1, near, crowd * torch.where(level > 2, 1.0, -1.0))
    v = v.float().to(device)
    k = torch.full((rows, 1), cols // 2, dtype=torch.int64, device=device)
    for scale in (None, torch.full((cols,), 1.5, device=device)):
        got_v, got_m = v.clone(), torch.empty(v.shape, dtype=torch.bool, device=device)
        torch.ops.sparsedistill.zero_smallest_grouped(got_v, got_m, None, 1, cols, k, scale)
        want_v, want_m = v.clone(), torch.empty_like(got_m)
        R.zero_smallest_grouped(want_v, want_m, None, 1, cols, k, scale)
        assert torch.equal(got_m, want_m) and torch.equal(got_v, want_v)
    got = torch.ops.sparsedistill.select_smallest_grouped(v, None, 1, cols, k, True)
    assert torch.equal(got, R.select_smallest_grouped(v, None, 1, cols, k, True))
    assert torch.equal((~got).sum(1), k.squeeze(1))
