"""Pruning refuses what it cannot do right and is deterministic on what users do pass: tied
weights listed twice, overlapping views, meta tensors, expanded views, inference tensors, a
backward through pruned values, float64 ties after rounding."""
import pytest
import torch

import sparsedistill


def test_tied_weights_listed_twice_count_once_and_get_one_mask():
    w = torch.randn(200, 300)
    other = torch.randn(50, 60)
    want = sparsedistill.global_magnitude_masks([w, other], 0.5)
    for _ in range(20):  # the race it replaces gave a different count run to run
        a, b = w.clone(), other.clone()
        masks = sparsedistill.global_magnitude_prune_([a, b, a], 0.5)
        assert masks[0] is masks[2]
        assert torch.equal(masks[0], want[0]) and torch.equal(masks[1], want[1])
        assert torch.equal(a, w * want[0]) and torch.equal(b, other * want[1])
    masks = sparsedistill.global_magnitude_masks([w, other, w], 0.5)
    assert torch.equal(masks[2], want[0])


def test_tied_weights_need_the_same_scores():
    w = torch.randn(10, 10)
    with pytest.raises(ValueError, match=r"scores\[1\] must be scores\[0\]"):
        sparsedistill.global_magnitude_masks([w, w], 0.5, scores=[w.abs(), w.abs() + 1])


@pytest.mark.parametrize("views", ["slice", "transpose", "reshaped"])
def test_overlapping_views_are_refused(views):
    w = torch.randn(200, 100)
    other = {"slice": w[50:150], "transpose": w.t(), "reshaped": w.reshape(100, 200)}[views]
    before = w.clone()
    with pytest.raises(ValueError, match=r"tensors\[1\] overlaps tensors\[0\]"):
        sparsedistill.global_magnitude_prune_([w, other], 0.5)
    assert torch.equal(w, before)
    # disjoint views of one buffer are fine
    masks = sparsedistill.global_magnitude_prune_([w[:100], w[100:]], 0.5)
    assert sum(int((~m).sum()) for m in masks) == 10000


def test_meta_and_mixed_devices_are_refused():
    w = torch.randn(10, 10)
    with pytest.raises(ValueError, match=r"tensors\[1\] is a meta tensor"):
        sparsedistill.global_magnitude_prune_([w, torch.empty(5, device="meta")], 0.5)
    with pytest.raises(ValueError, match=r"tensors\[0\] is a meta tensor"):
        sparsedistill.magnitude_mask(torch.empty(5, device="meta"), 0.5)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"tensors\[1\] must be on the device"):
            sparsedistill.global_magnitude_masks([w, w.cuda()], 0.5)


def test_expanded_and_inference_tensors_are_not_pruned_in_place():
    e = torch.randn(1, 40).expand(30, 40)
    with pytest.raises(ValueError, match="expanded view"):
        sparsedistill.magnitude_prune_(e, 0.5)
    assert sparsedistill.magnitude_mask(e, 0.5).sum() == 600  # reading it is fine
    with torch.inference_mode():
        t = torch.randn(10)
    before = t.clone()
    with pytest.raises(RuntimeError, match="inference tensor"):
        sparsedistill.magnitude_prune_(t, 0.5)
    assert torch.equal(t, before)
    with torch.inference_mode():
        assert int((~sparsedistill.magnitude_prune_(t, 0.5)).sum()) == 5


@pytest.mark.parametrize("prune", ["tensor", "global"])
def test_backward_through_pruned_values_is_refused(device, prune):
    p = torch.randn(50, device=device, requires_grad=True)
    q = p * 1
    loss = (q * q).sum()
    if prune == "tensor":
        sparsedistill.magnitude_prune_(q, 0.5)
    else:
        sparsedistill.global_magnitude_prune_([q], 0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_float64_is_ranked_by_its_float32_rounding():
    # The documented rule (docs/api/prune.md): values are compared after rounding to float32;
    # values equal in float32 tie, and ties are pruned lowest index first.
    x = torch.tensor([1 + 1e-9, 1.0, 0.5], dtype=torch.float64)
    keep = sparsedistill.magnitude_mask(x, 2)
    assert keep.tolist() == [False, True, False]
    huge = torch.tensor([1e300, 1e39, 5.0], dtype=torch.float64)  # both round to inf in float32
    assert sparsedistill.magnitude_mask(huge, 1).tolist() == [True, True, False]
    assert sparsedistill.magnitude_mask(huge, 2).tolist() == [False, True, False]


def test_raw_op_with_inputs_aliasing_its_outputs_matches_the_reference(device):
    # Direct op calls may pass the keep masks as the masks to write, or tensors that overlap:
    # every backend reads such inputs before it writes (the CPU kernel used to re-read keep
    # after the mask pass had overwritten it, and raced on overlapping tensors).
    from sparsedistill.prune import reference
    g = torch.Generator().manual_seed(3)
    w = torch.randint(0, 3, (300, 400), generator=g).float().to(device)  # heavy ties
    m = (torch.rand(300, 400, generator=g) > 0.3).to(device)
    got_t, got_m = w.clone(), m.clone()
    torch.ops.sparsedistill.zero_smallest([got_t], [got_m], None, [got_m], 50000)
    want_t, want_m = w.clone(), torch.empty_like(m)
    reference.zero_smallest([want_t], [want_m], None, [m.clone()], 50000)
    assert torch.equal(got_t, want_t) and torch.equal(got_m, want_m)
    a, b = w.clone(), w.clone()
    got = [torch.empty(300, 400, dtype=torch.bool, device=device), torch.empty(100, 400, dtype=torch.bool, device=device)]
    want = [torch.empty_like(x) for x in got]
    torch.ops.sparsedistill.zero_smallest([a, a[100:200]], got, None, None, 60000)
    reference.zero_smallest([b, b[100:200]], want, None, None, 60000)
    assert all(torch.equal(x, y) for x, y in zip(got, want)) and torch.equal(a, b)
