"""Structured pruning (sparsedistill.prune: nm, structured, shrink, schedule): N:M masks, channel/group norms and masks,
shrinking of layer pairs and the cubic sparsity schedule, against direct loop references."""
import copy
import math

import pytest
import torch
from torch import nn

from sparsedistill.prune.checks import resolve_amount
from sparsedistill.prune import (CubicSparsitySchedule, channel_norms, cubic_sparsity_schedule,
                                      group_norms, nm_mask, shrink_conv_pair, shrink_linear_pair,
                                      shrink_mlp_, structured_mask, to_semi_structured)

FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def groups_along(t, m, dim):
    """(groups, m) view of t's consecutive runs of m along dim (reference helper)."""
    x = t.movedim(dim, -1)
    return x.reshape(-1, m)


def nm_reference(t, n, m, dim):
    """Loop reference: in each group, prune the m - n smallest |w|, lowest index first on ties."""
    groups = groups_along(t.abs().double(), m, dim)
    keep = torch.ones(groups.shape, dtype=torch.bool)
    for g, row in enumerate(groups.tolist()):
        for i in sorted(range(m), key=lambda i: (row[i], i))[: m - n]:
            keep[g, i] = False
    x = t.movedim(dim, -1)
    return keep.reshape(x.shape).movedim(-1, dim)


# ----------------------------------------------------------------------------- nm_mask
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape,n,m,dim", [
    ((8,), 2, 4, -1), ((3, 8), 2, 4, -1), ((8, 5), 2, 4, 0), ((7, 12), 1, 3, 1),
    ((2, 12, 3), 1, 3, 1), ((5, 3, 6), 5, 6, -1), ((4, 6, 2), 3, 4, 0), ((0, 8), 2, 4, 1),
    ((9, 16), 4, 8, -1)])
def test_nm_mask_validity(device, dtype, shape, n, m, dim):
    w = torch.randn(shape, device=device).to(dtype)
    before = w.clone()
    keep = nm_mask(w, n, m, dim)
    assert keep.dtype == torch.bool and keep.shape == w.shape and keep.device == w.device
    assert torch.equal(w, before)
    kg, ag = groups_along(keep.cpu(), m, dim), groups_along(w.abs().float().cpu(), m, dim)
    assert (kg.sum(-1) == n).all()  # exactly n kept per group
    if kg.numel():
        kept_min = ag.masked_fill(~kg, math.inf).amin(-1)
        pruned_max = ag.masked_fill(kg, -math.inf).amax(-1)
        assert (kept_min >= pruned_max).all()
    assert torch.equal(keep.cpu(), nm_reference(w.cpu(), n, m, dim))


def test_nm_mask_ties_prune_lowest_index_first(device):
    w = torch.tensor([[1.0, -1.0, 1.0, 0.5], [3.0, 3.0, 3.0, 3.0], [0.0, -0.0, 0.0, -0.0]], device=device)
    expected = torch.tensor([[False, True, True, False], [False, False, True, True],
                             [False, False, True, True]], device=device)
    assert torch.equal(nm_mask(w, 2, 4), expected)
    assert torch.equal(nm_mask(w.T.contiguous(), 2, 4, dim=0), expected.T)
    heavy = torch.randint(-2, 3, (6, 5, 24), device=device).float()  # many equal magnitudes
    for dim, (n, m) in [(-1, (2, 4)), (2, (3, 8)), (0, (1, 3)), (1, (4, 5))]:
        assert torch.equal(nm_mask(heavy, n, m, dim).cpu(), nm_reference(heavy.cpu(), n, m, dim))


@pytest.mark.parametrize("args,kwargs,exc,name", [
    ((torch.randn(4, 8),), dict(n=4, m=4), ValueError, "n"),
    ((torch.randn(4, 8),), dict(n=5, m=4), ValueError, "n"),
    ((torch.randn(4, 8),), dict(n=0, m=4), ValueError, "n"),
    ((torch.randn(4, 8),), dict(n=-1, m=4), ValueError, "n"),
    ((torch.randn(4, 8),), dict(n=2.0, m=4), TypeError, "n"),
    ((torch.randn(4, 8),), dict(n=1, m=0), ValueError, "m"),
    ((torch.randn(4, 8),), dict(n=1, m=-4), ValueError, "m"),
    ((torch.randn(4, 10),), dict(), ValueError, "dim"),
    ((torch.randn(6, 8),), dict(dim=0), ValueError, "dim"),
    ((torch.randn(4, 8),), dict(dim=2), ValueError, "dim"),
    ((torch.ones(4, 8, dtype=torch.int32),), dict(), TypeError, "tensor"),
    (([1.0, 2.0, 3.0, 4.0],), dict(), TypeError, "tensor"),
    ((torch.tensor([1.0, float("nan"), 2.0, 3.0]),), dict(), ValueError, "tensor"),
])
def test_nm_mask_errors(args, kwargs, exc, name):
    before = copy.deepcopy(args)
    with pytest.raises(exc, match=rf"\b{name}\b"):
        nm_mask(*args, **kwargs)
    if isinstance(args[0], torch.Tensor):
        torch.testing.assert_close(args[0], before[0], rtol=0, atol=0, equal_nan=True)


def test_to_semi_structured_error_paths():
    w = torch.randn(32, 64)
    keep = nm_mask(w, 2, 4)
    with pytest.raises(TypeError, match="weight"):
        to_semi_structured(w.double(), keep)
    with pytest.raises(TypeError, match="weight"):
        to_semi_structured(w.int(), keep)
    with pytest.raises(ValueError, match="weight"):
        to_semi_structured(w.reshape(2, 16, 64), keep.reshape(2, 16, 64))
    with pytest.raises(TypeError, match="mask"):
        to_semi_structured(w, keep.float())
    with pytest.raises(TypeError, match="mask"):
        to_semi_structured(w, keep[:16])
    with pytest.raises(ValueError, match="2:4"):
        to_semi_structured(w, nm_mask(w, 3, 4))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            to_semi_structured(w, keep)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="needs an Ampere+ GPU")
def test_to_semi_structured_cuda():
    w = torch.randn(128, 128, device="cuda", dtype=torch.float16)
    keep = nm_mask(w, 2, 4)
    sparse = to_semi_structured(w, keep)
    x = torch.randn(128, 64, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(sparse @ x, (w * keep) @ x, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- norms and masks
@pytest.mark.parametrize("shape,dim", [((6, 5), 0), ((6, 5), 1), ((8, 3, 3, 3), 0), ((8, 3, 3, 3), 1),
                                       ((7,), 0)])
@pytest.mark.parametrize("order", [1, 2, 3, math.inf])
def test_channel_norms_match_direct(device, shape, dim, order):
    w = torch.randn(shape, device=device, dtype=torch.float64)
    direct = torch.stack([w.select(dim, i).abs().pow(order).sum().pow(1 / order) if order != math.inf
                          else w.select(dim, i).abs().max() for i in range(shape[dim])])
    torch.testing.assert_close(channel_norms(w, n=order, dim=dim), direct)


def test_group_norms_match_direct(device):
    w = torch.randn(12, 10, device=device)  # 4 "heads" of 3 rows
    direct = torch.stack([w[3 * h:3 * h + 3].norm() for h in range(4)])
    torch.testing.assert_close(group_norms(w, 3), direct)
    halves = torch.stack([w[:, :5].abs().sum(), w[:, 5:].abs().sum()])
    torch.testing.assert_close(group_norms(w, 5, n=1, dim=1), halves)
    assert channel_norms(w.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="group_size"):
        group_norms(w, 5)
    with pytest.raises(ValueError, match=r"\bn\b"):
        group_norms(w, 3, n=0)
    with pytest.raises(TypeError, match="weight"):
        channel_norms(w.long())
    with pytest.raises(ValueError, match="dim"):
        channel_norms(w, dim=-3)


@pytest.mark.parametrize("amount", [0, 0.0, 0.3, 0.5, 0.99, 1.0, 3, 12])
def test_structured_mask_counts(device, amount):
    w = torch.randn(12, 7, device=device)
    keep = structured_mask(w, amount)
    assert keep.shape == (12,) and keep.dtype == torch.bool
    k = resolve_amount(amount, 12)
    assert int((~keep).sum()) == k
    norms = w.norm(dim=1)
    if 0 < k < 12:
        assert norms[keep].min() >= norms[~keep].max()


def test_structured_mask_ties_and_groups(device):
    w = torch.ones(6, 4, device=device)
    w[4] = 0.5
    assert structured_mask(w, 3).tolist() == [False, False, True, True, False, True]
    heads = torch.randn(4, 3, 8, device=device)
    heads[2] *= 0.01  # the weakest head
    heads[0] *= 0.1
    keep = structured_mask(heads.reshape(12, 8), 0.5, group_size=3)
    assert keep.tolist() == [False] * 3 + [True] * 3 + [False] * 3 + [True] * 3
    keep = structured_mask(heads.reshape(12, 8).T, 1, dim=1, group_size=3)
    assert keep.tolist() == [True] * 6 + [False] * 3 + [True] * 3
    with pytest.raises(ValueError, match="group_size"):
        structured_mask(w, 1, group_size=4)
    with pytest.raises(ValueError, match="amount"):
        structured_mask(w, 7)
    with pytest.raises(TypeError, match="amount"):
        structured_mask(w, "half")
    bad = w.clone()
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="weight"):
        structured_mask(bad, 1)


# ----------------------------------------------------------------------------- shrinking
def zero_units(h, keep, dim=1):
    shape = [1] * h.dim()
    shape[dim] = -1
    return h * keep.reshape(shape).to(h.dtype)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("act", [torch.relu, nn.functional.gelu, torch.tanh, lambda h: h * h + 1])
def test_shrink_linear_pair_equivalence(device, bias, act):
    fc1 = nn.Linear(10, 16, bias=bias, device=device, dtype=torch.float64)
    fc2 = nn.Linear(16, 5, bias=bias, device=device, dtype=torch.float64)
    originals = [p.clone() for p in (*fc1.parameters(), *fc2.parameters())]
    keep = structured_mask(fc1.weight, 0.4)
    new1, new2 = shrink_linear_pair(fc1, fc2, keep)
    assert (new1.in_features, new1.out_features, new2.in_features, new2.out_features) == (10, 10, 10, 5)
    assert (new1.bias is None) == (new2.bias is None) == (not bias)
    assert new1.weight.dtype == torch.float64 and new2.weight.device == fc2.weight.device
    assert new1 is not fc1 and new1.weight.data_ptr() != fc1.weight.data_ptr()
    x = torch.randn(3, 7, 10, device=device, dtype=torch.float64)
    torch.testing.assert_close(new2(act(new1(x))), fc2(zero_units(act(fc1(x)), keep, dim=-1)))
    for p, q in zip(originals, (*fc1.parameters(), *fc2.parameters())):
        assert torch.equal(p, q)
    new1, new2 = shrink_linear_pair(fc1.float(), fc2.float(), torch.ones(16, dtype=torch.bool))
    torch.testing.assert_close(new2(act(new1(x.float()))), fc2(act(fc1(x.float()))))


def test_shrink_linear_pair_errors_and_flags():
    fc1, fc2 = nn.Linear(4, 6), nn.Linear(6, 2)
    fc1.weight.requires_grad_(False)
    fc1.eval()
    new1, new2 = shrink_linear_pair(fc1, fc2, torch.tensor([True, False] * 3))
    assert not new1.weight.requires_grad and new1.bias.requires_grad and not new1.training and new2.training
    new1, new2 = shrink_linear_pair(fc1.bfloat16(), fc2.bfloat16(), torch.zeros(6, dtype=torch.bool))
    assert new1.weight.shape == (0, 4) and new2.weight.dtype == torch.bfloat16
    assert torch.equal(new2(new1(torch.randn(3, 4, dtype=torch.bfloat16))), fc2.bias.detach().expand(3, 2))
    with pytest.raises(ValueError, match="keep"):
        shrink_linear_pair(fc1, fc2, torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="keep"):
        shrink_linear_pair(fc1, fc2, torch.ones(6))
    with pytest.raises(ValueError, match="fc2"):
        shrink_linear_pair(fc1, nn.Linear(5, 2), torch.ones(6, dtype=torch.bool))
    with pytest.raises(TypeError, match="fc1"):
        shrink_linear_pair(nn.Conv2d(4, 6, 1), fc2, torch.ones(6, dtype=torch.bool))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("act", [torch.relu, nn.functional.gelu])
def test_shrink_conv_pair_equivalence(device, bias, act):
    conv1 = nn.Conv2d(3, 12, 3, padding=1, bias=bias, device=device, dtype=torch.float64)
    conv2 = nn.Conv2d(12, 4, (3, 2), stride=2, dilation=(1, 2), bias=bias, device=device, dtype=torch.float64)
    before = copy.deepcopy((conv1, conv2))
    keep = structured_mask(conv1.weight, 5)
    new1, new2 = shrink_conv_pair(conv1, conv2, keep)
    assert new1.weight.shape == (7, 3, 3, 3) and new2.weight.shape == (4, 7, 3, 2)
    assert new2.stride == (2, 2) and new2.dilation == (1, 2) and (new1.bias is None) == (not bias)
    x = torch.randn(2, 3, 9, 11, device=device, dtype=torch.float64)
    torch.testing.assert_close(new2(act(new1(x))), conv2(zero_units(act(conv1(x)), keep)))
    assert torch.equal(conv1.weight, before[0].weight) and torch.equal(conv2.weight, before[1].weight)


def test_shrink_conv_pair_errors():
    keep = torch.ones(8, dtype=torch.bool)
    with pytest.raises(ValueError, match="groups"):
        shrink_conv_pair(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 2, 1), keep)
    with pytest.raises(ValueError, match="groups"):
        shrink_conv_pair(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 1, groups=8), keep)
    with pytest.raises(ValueError, match="conv2"):
        shrink_conv_pair(nn.Conv2d(4, 8, 3), nn.Conv2d(6, 2, 1), keep)
    with pytest.raises(TypeError, match="conv2"):
        shrink_conv_pair(nn.Conv2d(4, 8, 3), nn.Linear(8, 2), keep)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))

    def forward(self, x):
        return x + self.mlp(x)


def test_shrink_mlp_in_place():
    block = Block().double()
    reference = copy.deepcopy(block)
    keep = shrink_mlp_(block, "mlp.0", "mlp.2", 0.25)
    assert int(keep.sum()) == 24 and torch.equal(keep, structured_mask(reference.mlp[0].weight, 0.25))
    assert block.mlp[0].out_features == 24 and block.mlp[2].in_features == 24
    x = torch.randn(5, 8, dtype=torch.float64)
    fc1, fc2 = reference.mlp[0], reference.mlp[2]
    torch.testing.assert_close(block(x), x + fc2(zero_units(nn.functional.gelu(fc1(x)), keep, dim=-1)))

    convs = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1))
    assert int(shrink_mlp_(convs, "0", "2", 2, n=1).sum()) == 4 and convs[2].in_channels == 4


@pytest.mark.parametrize("names,amount,exc,match", [
    (("mlp.0", "mlp.9"), 0.5, AttributeError, "fc2_name"),
    (("mlp.x", "mlp.2"), 0.5, AttributeError, "fc1_name"),
    (("", "mlp.2"), 0.5, ValueError, "fc1_name"),
    (("mlp.0", "mlp.1"), 0.5, TypeError, "fc1_name and fc2_name"),
    (("mlp.0", "mlp.0"), 0.5, ValueError, "fc1_name and fc2_name"),
    (("mlp.0", "mlp.2"), 1.5, ValueError, "amount"),
])
def test_shrink_mlp_errors_leave_module_unchanged(names, amount, exc, match):
    block = Block()
    state = copy.deepcopy(block.state_dict())
    with pytest.raises(exc, match=match):
        shrink_mlp_(block, *names, amount)
    assert block.mlp[0].out_features == 32
    assert all(torch.equal(v, block.state_dict()[k]) for k, v in state.items())


# ----------------------------------------------------------------------------- schedule
def test_cubic_schedule_key_points():
    s = lambda step, freq=1: cubic_sparsity_schedule(step, 0.1, 0.9, 100, 200, freq)  # noqa: E731
    assert s(0) == s(99) == 0.1 and s(100) == pytest.approx(0.1)
    assert s(150) == pytest.approx(0.9 - 0.8 * 0.5 ** 3)
    assert s(175) == pytest.approx(0.9 - 0.8 * 0.25 ** 3)
    assert s(200) == s(10_000) == 0.9
    assert s(199) == pytest.approx(0.9 - 0.8 * 0.01 ** 3)
    assert s(129, 10) == s(120, 10) == s(120) and s(130, 10) == s(130) != s(129, 10)
    assert s(199, 30) == s(190) and s(200, 30) == 0.9
    values = [s(t, f) for f in (1, 7) for t in range(0, 260)]
    for f in range(2):
        run = values[f * 260:(f + 1) * 260]
        assert all(a <= b for a, b in zip(run, run[1:]))
    increments = [s(t + 1) - s(t) for t in range(100, 199)]
    assert all(a >= b for a, b in zip(increments, increments[1:]))  # prunes fast early, slowly late
    down = [cubic_sparsity_schedule(t, 0.9, 0.1, 100, 200) for t in range(0, 260)]  # s_i > s_f works too
    assert down[0] == 0.9 and down[-1] == 0.1 and all(a >= b for a, b in zip(down, down[1:]))
    sched = CubicSparsitySchedule(0.1, 0.9, 100, 200, frequency=10)
    assert [sched(t) for t in (50, 125, 250)] == [s(50, 10), s(125, 10), s(250, 10)]


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(initial_sparsity=-0.1), ValueError, "initial_sparsity"),
    (dict(final_sparsity=1.5), ValueError, "final_sparsity"),
    (dict(final_sparsity=float("nan")), ValueError, "final_sparsity"),
    (dict(end_step=100), ValueError, "end_step"),
    (dict(end_step=50), ValueError, "end_step"),
    (dict(start_step=1.5), TypeError, "start_step"),
    (dict(frequency=0), ValueError, "frequency"),
    (dict(frequency=True), TypeError, "frequency"),
    (dict(step=3.0), TypeError, "step"),
])
def test_cubic_schedule_errors(kwargs, exc, name):
    args = dict(step=10, initial_sparsity=0.0, final_sparsity=0.8, start_step=100, end_step=200, frequency=1)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        cubic_sparsity_schedule(**args)
    if "step" not in kwargs:
        args.pop("step")
        with pytest.raises(exc, match=name):
            CubicSparsitySchedule(**args)
