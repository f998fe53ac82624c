"""sparsedistill.prune as a drop-in for torch.nn.utils.prune: the same masks (bool here, float
there), parameters, buffers, state_dict keys and outputs as torch on tie-free weights;
checkpoints load both ways; iterative, global and mixed pruning; remove_all, sparsity_report;
bad input raises naming the argument and leaves the module untouched."""
import copy
import inspect
import io

import pytest
import torch
import torch.nn.utils.prune as tp
from torch import nn

from sparsedistill import prune as sp


def make_model(device):
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16),
                         nn.ReLU(), nn.Linear(16, 5)).to(device)


def model_input(device):
    return torch.randn(2, 3, 6, 6, device=device)


def twins(device):
    ours = make_model(device)
    return ours, copy.deepcopy(ours)


def masks_of(model):
    return {k: v for k, v in model.named_buffers() if k.endswith("_mask")}


def assert_same_pruning(ours, theirs, x):
    """Same masks (ours bool), names, state_dict keys (in order) and forward outputs."""
    om, tm = masks_of(ours), masks_of(theirs)
    assert om.keys() == tm.keys() and om
    for k in om:
        assert om[k].dtype == torch.bool, k
        assert tm[k].dtype.is_floating_point and bool(((tm[k] == 0) | (tm[k] == 1)).all())
        assert torch.equal(om[k], tm[k].bool()), k
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def snapshot(model):
    return [(k, v.detach().clone()) for k, v in model.state_dict().items()]


def assert_unchanged(model, snap, hooks):
    now = snapshot(model)
    assert [k for k, _ in now] == [k for k, _ in snap]
    for (k, a), (_, b) in zip(now, snap):
        assert a.dtype == b.dtype, k
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=k)
    assert [(m, dict(m._forward_pre_hooks)) for m in model.modules()] == hooks


# name -> (what to call on sp / tp, kwargs); the RNG is reseeded before each call.
CASES = {
    "l1_frac": lambda P, m: P.l1_unstructured(m[0], "weight", amount=0.3),
    "l1_count": lambda P, m: P.l1_unstructured(m[3], "weight", amount=77),
    "l1_bias": lambda P, m: P.l1_unstructured(m[3], "bias", amount=0.5),
    "l1_scores": lambda P, m: P.l1_unstructured(
        m[3], "weight", 0.6, importance_scores=m[3].weight.detach() * torch.arange(
            m[3].weight.shape[1], device=m[3].weight.device)),
    "random_unstructured": lambda P, m: P.random_unstructured(m[0], "weight", amount=0.4),
    "ln_l2_dim0": lambda P, m: P.ln_structured(m[0], "weight", amount=0.5, n=2, dim=0),
    "ln_l1_dim1": lambda P, m: P.ln_structured(m[3], "weight", amount=3, n=1, dim=1),
    "ln_inf_dim_neg": lambda P, m: P.ln_structured(m[0], "weight", 0.25, float("inf"), -1),
    "ln_scores": lambda P, m: P.ln_structured(m[5], "weight", 0.5, 2, 0,
                                              importance_scores=m[5].weight.detach().flip(0)),
    "random_structured": lambda P, m: P.random_structured(m[0], "weight", amount=0.5, dim=0),
    "identity": lambda P, m: P.identity(m[3], "weight"),
    "custom_from_mask": lambda P, m: P.custom_from_mask(
        m[5], "weight", mask=(torch.arange(80, device=m[5].weight.device) % 3 != 0).view(5, 16).float()),
}


def apply_both(case, ours, theirs, seed=0):
    torch.manual_seed(seed)
    r1 = case(sp, ours)
    torch.manual_seed(seed)
    r2 = case(tp, theirs)
    return r1, r2


@pytest.mark.parametrize("case", list(CASES))
def test_each_function_matches_torch(device, case):
    ours, theirs = twins(device)
    r1, r2 = apply_both(CASES[case], ours, theirs)
    assert type(r1) is type(r2) and isinstance(r1, nn.Module)  # both return the module
    assert_same_pruning(ours, theirs, model_input(device))
    assert sp.is_pruned(ours) and tp.is_pruned(ours) and sp.is_pruned(theirs)
    hooks = [h for m in ours.modules() for h in m._forward_pre_hooks.values()]
    torch_hooks = [h for m in theirs.modules() for h in m._forward_pre_hooks.values()]
    assert [type(h).__name__ for h in hooks] == [type(h).__name__ for h in torch_hooks]
    assert all(isinstance(h, type(t)) for h, t in zip(hooks, torch_hooks))  # our classes subclass torch's


FUNCTIONS = ["identity", "random_unstructured", "l1_unstructured", "random_structured", "ln_structured",
             "global_unstructured", "custom_from_mask", "remove", "is_pruned"]
CLASSES = ["Identity", "RandomUnstructured", "L1Unstructured", "RandomStructured", "LnStructured",
           "CustomFromMask", "PruningContainer"]


def test_same_api_as_torch():
    for f in FUNCTIONS:
        assert inspect.signature(getattr(sp, f)).parameters == inspect.signature(getattr(tp, f)).parameters, f
    for c in CLASSES:
        assert issubclass(getattr(sp, c), getattr(tp, c)), c
        assert inspect.signature(getattr(sp, c).apply).parameters == \
            inspect.signature(getattr(tp, c).apply).parameters, c
    assert sp.BasePruningMethod is tp.BasePruningMethod


def test_gradients_reach_orig_like_torch(device):
    ours, theirs = twins(device)
    apply_both(CASES["l1_frac"], ours, theirs)
    x = model_input(device)
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    torch.testing.assert_close(ours[0].weight_orig.grad, theirs[0].weight_orig.grad)
    assert bool((ours[0].weight_orig.grad[~ours[0].weight_mask] == 0).all())


@pytest.mark.parametrize("first,second", [("l1_frac", "l1_frac"), ("l1_frac", "ln_l2_dim0"),
                                          ("ln_l2_dim0", "l1_frac"), ("l1_count", "ln_l1_dim1"),
                                          ("random_unstructured", "random_unstructured"),
                                          ("random_unstructured", "random_structured"),
                                          ("custom_from_mask", "ln_scores"),
                                          ("identity", "l1_scores")])
def test_iterative_pruning_matches_torch(device, first, second):
    ours, theirs = twins(device)
    apply_both(CASES[first], ours, theirs, seed=1)
    apply_both(CASES[second], ours, theirs, seed=2)
    apply_both(CASES[second], ours, theirs, seed=3)  # a third round on what remains
    assert_same_pruning(ours, theirs, model_input(device))
    containers = [h for m in ours.modules() for h in m._forward_pre_hooks.values()
                  if isinstance(h, tp.PruningContainer)]
    assert containers and all(isinstance(c, sp.PruningContainer) for c in containers)


def test_amount_applies_to_what_remains(device):
    lin = nn.Linear(10, 10).to(device)
    sp.l1_unstructured(lin, "weight", 0.5)
    sp.l1_unstructured(lin, "weight", 0.5)
    assert int((~lin.weight_mask).sum()) == 75 and lin.weight_mask.dtype == torch.bool
    sp.l1_unstructured(lin, "weight", 25)  # a count: all that remains
    assert not lin.weight_mask.any() and len(lin._forward_pre_hooks[next(iter(lin._forward_pre_hooks))]) == 3


@pytest.mark.parametrize("first_is_torch", [True, False])
def test_mixing_with_torch_pruning(device, first_is_torch):
    """A torch-pruned module pruned again here (and the reverse) gives torch's masks."""
    mixed, ref = twins(device)
    a, b = (tp, sp) if first_is_torch else (sp, tp)
    torch.manual_seed(0)
    a.l1_unstructured(mixed[3], "weight", 0.4)
    a.l1_unstructured(mixed[3], "weight", 0.2)  # the other side's container
    b.ln_structured(mixed[3], "weight", 0.5, 2, 0)
    tp.l1_unstructured(ref[3], "weight", 0.4)
    tp.l1_unstructured(ref[3], "weight", 0.2)
    tp.ln_structured(ref[3], "weight", 0.5, 2, 0)
    assert torch.equal(mixed[3].weight_mask.bool(), ref[3].weight_mask.bool())
    if first_is_torch:  # re-pruned here: the mask became bool
        assert mixed[3].weight_mask.dtype == torch.bool
    x = model_input(device)
    torch.testing.assert_close(mixed(x), ref(x), rtol=0, atol=0)
    sp.remove(mixed[3], "weight")
    assert not sp.is_pruned(mixed)


def test_torch_pruning_on_top_of_ours_keeps_bool_masks(device):
    """torch's apply adds to our container, whose masks stay bool; torch's remove undoes it."""
    ours, theirs = twins(device)
    for P, m in ((sp, ours), (sp, ours), (tp, theirs), (tp, theirs)):
        P.l1_unstructured(m[3], "weight", 0.3)
    tp.ln_structured(ours[3], "weight", 0.25, 1, 0)
    tp.ln_structured(theirs[3], "weight", 0.25, 1, 0)
    assert ours[3].weight_mask.dtype == torch.bool
    assert_same_pruning(ours, theirs, model_input(device))
    tp.remove(ours[3], "weight")
    tp.remove(theirs[3], "weight")
    assert torch.equal(ours[3].weight, theirs[3].weight) and not tp.is_pruned(ours)


@pytest.mark.parametrize("case", ["l1_frac", "ln_l2_dim0", "custom_from_mask", "l1_bias"])
def test_state_dict_round_trip_both_ways(device, case, tmp_path):
    ours, theirs = twins(device)
    apply_both(CASES[case], ours, theirs)
    x = model_input(device)
    # torch-pruned checkpoint -> a module pruned here with another mask (other weights)
    target = make_model(device)
    torch.manual_seed(5)
    CASES[case](sp, target)
    target.load_state_dict(theirs.state_dict())
    assert all(m.dtype == torch.bool for m in masks_of(target).values())
    assert_same_pruning(target, theirs, x)
    # ours -> a torch-pruned module
    target = make_model(device)
    torch.manual_seed(5)
    CASES[case](tp, target)
    target.load_state_dict(ours.state_dict())
    assert_same_pruning(ours, target, x)
    # through a file, weights_only
    path = tmp_path / "ckpt.pt"
    torch.save(ours.state_dict(), path)
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(theirs.state_dict())
    buf = io.BytesIO()
    torch.save(theirs.state_dict(), buf)
    buf.seek(0)
    fresh = make_model(device)
    torch.manual_seed(5)
    CASES[case](sp, fresh)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert_same_pruning(fresh, theirs, x)
    fresh.load_state_dict(loaded)
    assert_same_pruning(fresh, theirs, x)


@pytest.mark.parametrize("case", ["l1_frac", "ln_l1_dim1", "identity", "l1_bias"])
def test_remove_matches_torch(device, case):
    ours, theirs = twins(device)
    apply_both(CASES[case], ours, theirs)
    apply_both(CASES["l1_frac"], ours, theirs)
    for model, P in ((ours, sp), (theirs, tp)):
        for m in model.modules():
            for h in list(m._forward_pre_hooks.values()):
                P.remove(m, h._tensor_name)
    assert not sp.is_pruned(ours) and not masks_of(ours)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), k
    assert all(isinstance(p, nn.Parameter) for p in ours.parameters())
    with pytest.raises(ValueError, match="has to be pruned"):
        sp.remove(ours[0], "weight")


@pytest.mark.parametrize("kwargs", [dict(amount=0.35), dict(amount=500), dict(amount=0.0),
                                    dict(amount=1.0)])
@pytest.mark.parametrize("with_scores", [False, True])
def test_global_unstructured_matches_torch(device, kwargs, with_scores):
    ours, theirs = twins(device)
    pairs = lambda m: [(m[0], "weight"), (m[3], "weight"), (m[3], "bias"), (m[5], "weight")]
    scores = lambda m: ({(m[3], "weight"): torch.randn_like(m[3].weight)} if with_scores else None)
    torch.manual_seed(3)
    sp.global_unstructured(pairs(ours), sp.L1Unstructured, importance_scores=scores(ours), **kwargs)
    torch.manual_seed(3)
    tp.global_unstructured(pairs(theirs), tp.L1Unstructured, importance_scores=scores(theirs), **kwargs)
    assert_same_pruning(ours, theirs, model_input(device))
    # again, on what remains, with torch's class as the method (the same fast path)
    sp.global_unstructured(iter(pairs(ours)), tp.L1Unstructured, amount=0.5)
    tp.global_unstructured(pairs(theirs), tp.L1Unstructured, amount=0.5)
    assert_same_pruning(ours, theirs, model_input(device))


@pytest.mark.parametrize("method", ["ours", "torch"])
def test_global_unstructured_random_and_after_local_pruning(device, method):
    ours, theirs = twins(device)
    apply_both(CASES["ln_l2_dim0"], ours, theirs)
    pairs = lambda m: [(m[0], "weight"), (m[5], "weight")]
    torch.manual_seed(7)
    sp.global_unstructured(pairs(ours), sp.RandomUnstructured if method == "ours" else tp.RandomUnstructured,
                           amount=0.3)
    torch.manual_seed(7)
    tp.global_unstructured(pairs(theirs), tp.RandomUnstructured, amount=0.3)
    assert_same_pruning(ours, theirs, model_input(device))
    with pytest.raises(TypeError, match="unstructured"):
        sp.global_unstructured(pairs(ours), sp.LnStructured, amount=0.3, n=2, dim=0)


def test_remove_all_and_sparsity_report(device):
    model = make_model(device)
    sp.l1_unstructured(model[0], "weight", 0.5)
    sp.ln_structured(model[0], "weight", 2, 2, 0)
    sp.global_unstructured([(model[3], "weight"), (model[5], "weight")], sp.L1Unstructured, amount=0.8)
    sp.identity(model[3], "bias")
    report = sp.sparsity_report(model)
    w0 = report["0.weight"]
    assert w0.masked and w0.numel == 216 and w0.shape == (8, 3, 3, 3)
    assert 108 < w0.zeros == int((~model[0].weight_mask).sum()) == int((model[0].weight == 0).sum())
    assert report["3.bias"].masked and report["3.bias"].zeros == int((model[3].bias == 0).sum())
    assert not report["0.bias"].masked and report["0.bias"].zeros == 0
    pruned = report["3.weight"].zeros + report["5.weight"].zeros
    assert pruned == round(0.8 * (128 * 16 + 16 * 5))
    total = sum(p.numel() for p in make_model("cpu").parameters())
    assert report.numel == total and report.zeros == sum(r.zeros for r in report.rows)
    assert report.sparsity == pytest.approx(report.zeros / total)
    text = str(report)
    assert "0.weight" in text and "total" in text and f"{100 * report.sparsity:.2f}%" in text
    assert len(sp.sparsity_report(model, include_unpruned=False).rows) == 4
    x = model_input(device)
    expected = model(x)
    done = sp.remove_all(model)
    assert sorted((type(m).__name__, n) for m, n in done) == [
        ("Conv2d", "weight"), ("Linear", "bias"), ("Linear", "weight"), ("Linear", "weight")]
    assert not sp.is_pruned(model) and not masks_of(model)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    after = sp.sparsity_report(model)
    assert not any(r.masked for r in after.rows) and after.zeros == report.zeros
    assert sp.remove_all(model) == []


def test_report_is_exact_before_the_next_forward():
    lin = nn.Linear(6, 4)
    sp.l1_unstructured(lin, "weight", 0.5)
    src = nn.Linear(6, 4)
    sp.l1_unstructured(src, "weight", 0.25)
    lin.load_state_dict(src.state_dict())  # lin.weight is stale until the next forward
    assert sp.sparsity_report(lin)["weight"].zeros == 6


BAD = [  # (call, argument named in the message, exception)
    (lambda m: sp.l1_unstructured(m[3], "weight", -0.1), "amount", ValueError),
    (lambda m: sp.l1_unstructured(m[3], "weight", 1.5), "amount", ValueError),
    (lambda m: sp.l1_unstructured(m[3], "weight", -3), "amount", ValueError),
    (lambda m: sp.l1_unstructured(m[5], "weight", 81), "amount", ValueError),
    (lambda m: sp.l1_unstructured(m[5], "weight", "half"), "amount", TypeError),
    (lambda m: sp.random_unstructured(m[5], "weight", 81), "amount", ValueError),
    (lambda m: sp.ln_structured(m[5], "weight", 6, 2, 0), "amount", ValueError),
    (lambda m: sp.random_structured(m[5], "weight", 1.01, 0), "amount", ValueError),
    (lambda m: sp.global_unstructured([(m[3], "weight"), (m[5], "weight")], sp.L1Unstructured,
                                      amount=128 * 16 + 81), "amount", ValueError),
    (lambda m: sp.l1_unstructured(m[3], "wieght", 0.3), "name", ValueError),
    (lambda m: sp.l1_unstructured(m[1], "weight", 0.3), "name", ValueError),
    (lambda m: sp.identity(m[3], "training"), "name", ValueError),
    (lambda m: sp.global_unstructured([(m[3], "weight"), (m[5], "nope")], sp.L1Unstructured,
                                      amount=0.2), "name", ValueError),
    (lambda m: sp.ln_structured(m[3], "bias", 0.5, 2, 0), "structured", ValueError),
    (lambda m: sp.ln_structured(m[3], "weight", 0.5, 2, 2), "dim", IndexError),
    (lambda m: sp.random_structured(m[3], "weight", 0.5, -3), "dim", IndexError),
    (lambda m: sp.l1_unstructured(m[3], "weight", 0.5, importance_scores=torch.ones(3)),
     "importance_scores", ValueError),
    (lambda m: sp.custom_from_mask(m[3], "weight", torch.ones(3)), "mask", ValueError),
    (lambda m: sp.custom_from_mask(m[5], "weight", torch.full((5, 16), 0.5)), "mask", ValueError),
    (lambda m: sp.remove(m[3], "weight"), "weight", ValueError),
]


@pytest.mark.parametrize("pre_pruned", [False, True])
@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_raises_and_changes_nothing(device, i, pre_pruned):
    call, word, exc = BAD[i]
    model = make_model(device)
    if pre_pruned:  # the failed call must also leave an existing pruning (and its hook) alone
        if i == len(BAD) - 1:
            pytest.skip("remove on a pruned module is valid")
        sp.l1_unstructured(model[5], "weight", 0.1)
        sp.l1_unstructured(model[5], "weight", 0.1)
        sp.l1_unstructured(model[3], "weight", 0.1)
    snap = snapshot(model)
    hooks = [(m, dict(m._forward_pre_hooks)) for m in model.modules()]
    with pytest.raises(exc, match=word):
        call(model)
    assert_unchanged(model, snap, hooks)


def test_non_float_parameter_and_nan_weights(device):
    m = nn.Linear(4, 3).to(device)
    m.register_parameter("steps", nn.Parameter(torch.arange(4, device=device), requires_grad=False))
    snap, hooks = snapshot(m), [(m, {})]
    with pytest.raises(TypeError, match="'steps'"):
        sp.l1_unstructured(m, "steps", 1)
    with torch.no_grad():
        m.weight[1, 2] = float("nan")
    snap, hooks = snapshot(m), [(m, {})]
    for call in (lambda: sp.l1_unstructured(m, "weight", 0.5),
                 lambda: sp.ln_structured(m, "weight", 1, 2, 0),
                 lambda: sp.global_unstructured([(m, "bias"), (m, "weight")], sp.L1Unstructured, amount=2)):
        with pytest.raises(ValueError, match="weight.*NaN"):
            call()
        assert_unchanged(m, snap, hooks)
    nan_scores = torch.zeros(3, device=device)
    nan_scores[0] = float("nan")
    with pytest.raises(ValueError, match="importance_scores.*NaN|NaN"):
        sp.l1_unstructured(m, "bias", 1, importance_scores=nan_scores)
    assert_unchanged(m, snap, hooks)
