"""sparsedistill.prune as a drop-in for torch.nn.utils.prune: the same masks (bool here, float
there, or torch's dtypes with set_mask_dtype), parameters, buffers, state_dict keys and outputs as
torch on tie-free weights; checkpoints load both ways; iterative, global and mixed pruning;
torch's private helpers; patched compute_mask; integer tensors; soft masks; torch's error types;
remove_all, sparsity_report; bad input raises naming the argument and leaves the module untouched."""
import copy
import inspect
import io
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as tp
from torch import nn

from sparsedistill import prune as sp


@pytest.fixture(autouse=True)
def _bool_masks():
    """Every test starts (and leaves) with the default mask dtype."""
    sp.set_mask_dtype(torch.bool)
    yield
    sp.set_mask_dtype(torch.bool)


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
    (lambda m: sp.l1_unstructured(m[3], "wieght", 0.3), "name", AttributeError),  # as torch
    (lambda m: sp.l1_unstructured(m[1], "weight", 0.3), "name", AttributeError),
    (lambda m: sp.identity(m[3], "training"), "name", TypeError),  # not a parameter: as torch
    (lambda m: sp.global_unstructured([(m[3], "weight"), (m[5], "nope")], sp.L1Unstructured,
                                      amount=0.2), "name", AttributeError),
    (lambda m: sp.ln_structured(m[3], "bias", 0.5, 2, 0), "structured", ValueError),
    (lambda m: sp.ln_structured(m[3], "weight", 0.5, 2, 2), "dim", IndexError),
    (lambda m: sp.random_structured(m[3], "weight", 0.5, -3), "dim", IndexError),
    (lambda m: sp.l1_unstructured(m[3], "weight", 0.5, importance_scores=torch.ones(3)),
     "importance_scores", ValueError),
    (lambda m: sp.custom_from_mask(m[3], "weight", torch.ones(3)), "mask", ValueError),
    (lambda m: sp.custom_from_mask(m[3], "weight", torch.ones(3)), "mask", AssertionError),  # torch's type
    (lambda m: sp.l1_unstructured(m[5], "weight", 2, importance_scores=torch.ones(5)), "importance_scores",
     AssertionError),
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


def test_nan_weights(device):
    m = nn.Linear(4, 3).to(device)
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


# ----------------------------------------------------------------------------- torch's private helpers
TORCH_HELPERS = ["_validate_pruning_amount_init", "_validate_pruning_amount", "_compute_nparams_toprune",
                 "_validate_pruning_dim", "_validate_structured_pruning", "_compute_norm"]


def test_torch_private_helpers_are_exposed_and_agree_with_our_counts():
    from sparsedistill.prune import torch_compat
    for h in TORCH_HELPERS:
        assert getattr(sp, h) is getattr(tp, h) is getattr(torch_compat, h), h
    assert not set(TORCH_HELPERS) & set(sp.__all__)  # private: not star-exported
    with pytest.raises(TypeError):
        sp._validate_pruning_amount_init("half")
    with pytest.raises(ValueError):
        sp._validate_pruning_amount_init(1.5)
    with pytest.raises(ValueError):
        sp._validate_pruning_amount(21, 20)
    with pytest.raises(ValueError):
        sp._validate_structured_pruning(torch.ones(3))
    with pytest.raises(IndexError):
        sp._validate_pruning_dim(torch.ones(3, 4), 2)
    t = torch.randn(3, 4, 5)
    assert torch.equal(sp._compute_norm(t, 2, -1), torch.norm(t, p=2, dim=[0, 1]))
    for amount in (0.0, 0.125, 0.25, 0.5, 0.7, 1.0, 0, 3, 20):  # our counts are torch's rounding
        lin = nn.Linear(5, 4)
        sp.l1_unstructured(lin, "weight", amount)
        assert int((~lin.weight_mask).sum()) == sp._compute_nparams_toprune(amount, 20), amount


# ----------------------------------------------------------------------------- patching compute_mask
UNACCELERATED = ["Identity", "RandomUnstructured", "RandomStructured", "CustomFromMask"]
OWN_COMPUTE = {c: vars(getattr(sp, c))["compute_mask"] for c in ("L1Unstructured", "LnStructured")}
PATCH_CASES = {
    "Identity": lambda m: sp.identity(m, "weight"),
    "RandomUnstructured": lambda m: sp.random_unstructured(m, "weight", 0.5),
    "RandomStructured": lambda m: sp.random_structured(m, "weight", 0.5, 0),
    "CustomFromMask": lambda m: sp.custom_from_mask(m, "weight", torch.ones_like(m.weight)),
    "L1Unstructured": lambda m: sp.l1_unstructured(m, "weight", 0.5),
    "LnStructured": lambda m: sp.ln_structured(m, "weight", 0.5, 2, 0),
}


def test_unaccelerated_methods_run_torchs_compute_mask():
    for c in UNACCELERATED:
        assert "compute_mask" not in vars(getattr(sp, c)), c
        assert getattr(sp, c).compute_mask is getattr(tp, c).compute_mask, c


@pytest.mark.parametrize("pre_pruned", [False, True])
@pytest.mark.parametrize("cls", list(PATCH_CASES))
@pytest.mark.parametrize("target", ["torch.nn.utils.prune", "sparsedistill.prune"])
def test_patched_compute_mask_takes_effect(device, target, cls, pre_pruned):
    """mock.patch of torch's class or ours replaces the mask, as with torch (the fast L1/Ln
    path steps aside too); on pre-pruned tensors the patched method gets torch's slicing."""
    m = nn.Linear(6, 4).to(device)
    if pre_pruned:
        sp.l1_unstructured(m, "weight", 0.25)
    forced = torch.ones_like(m.weight)  # float, as mocks in torch's tests return
    forced[1, 2] = forced[3, 0] = 0
    with mock.patch(f"{target}.{cls}.compute_mask") as cm:
        if pre_pruned:  # the patched method sees what remains: prune all of it
            cm.side_effect = lambda t, default_mask: torch.zeros_like(default_mask)
        else:
            cm.return_value = forced
        PATCH_CASES[cls](m)
    assert cm.called and m.weight_mask.dtype == torch.bool
    assert torch.equal(m.weight_mask, torch.zeros_like(m.weight_mask) if pre_pruned else forced.bool())
    torch.testing.assert_close(m.weight, m.weight_orig * m.weight_mask, rtol=0, atol=0)
    # unpatched again: our classes are back as they were
    assert all(getattr(sp, c).compute_mask is f for c, f in OWN_COMPUTE.items())
    assert all("compute_mask" not in vars(getattr(sp, c)) for c in UNACCELERATED)
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1., 2., 3., 4.], [-4., -3., -2., -1.]]))
    sp.l1_unstructured(lin, "weight", 3)  # |2| ties: the lowest index goes first
    assert lin.weight_mask.tolist() == [[False, False, True, True], [True, True, True, False]]


@pytest.mark.parametrize("pre_pruned", [False, True])
@pytest.mark.parametrize("cls", list(PATCH_CASES))
@pytest.mark.parametrize("target", ["torch.nn.utils.prune", "sparsedistill.prune"])
def test_failing_patched_compute_mask_leaves_module_alone(device, target, cls, pre_pruned):
    model = make_model(device)
    if pre_pruned:
        sp.l1_unstructured(model[3], "weight", 0.25)
    snap = snapshot(model)
    hooks = [(m, dict(m._forward_pre_hooks)) for m in model.modules()]
    with mock.patch(f"{target}.{cls}.compute_mask") as cm:
        cm.side_effect = RuntimeError("HA!")
        with pytest.raises(RuntimeError, match="HA!"):
            PATCH_CASES[cls](model[3])
    assert_unchanged(model, snap, hooks)


def test_failure_while_reparametrizing_rolls_back(device):
    """An error after the module is touched (here a patched apply_mask) puts it back as it was."""
    model = make_model(device)
    sp.l1_unstructured(model[3], "weight", 0.25)
    snap = snapshot(model)
    hooks = [(m, list(m._forward_pre_hooks.items())) for m in model.modules()]
    for cls, call in ((sp.L1Unstructured, lambda: sp.l1_unstructured(model[0], "weight", 0.5)),
                      (sp.PruningContainer, lambda: sp.l1_unstructured(model[3], "weight", 0.5))):
        with mock.patch.object(cls, "apply_mask", side_effect=RuntimeError("late")), \
                pytest.raises(RuntimeError, match="late"):
            call()
        assert [(m, list(m._forward_pre_hooks.items())) for m in model.modules()] == hooks
        assert_unchanged(model, snap, [(m, dict(h)) for m, h in hooks])
    lstm = nn.LSTM(4, 4).to(device)
    with mock.patch.object(sp.L1Unstructured, "apply_mask", side_effect=RuntimeError("late")), \
            pytest.raises(RuntimeError):
        sp.l1_unstructured(lstm, "weight_ih_l0", 0.5)
    assert all(isinstance(p, nn.Parameter) for p in lstm._flat_weights)
    lstm(torch.randn(2, 1, 4, device=device))


# ----------------------------------------------------------------------------- integer tensors
def signed_perm(n, device):
    """Integers with distinct magnitudes (tie-free for L1), random signs."""
    return (torch.randperm(n) + 1) * (torch.randint(0, 2, (n,)) * 2 - 1)


def test_integer_parameters_and_scores_as_torch(device):
    ours = nn.Linear(4, 3).to(device)
    ours.register_parameter("steps", nn.Parameter(signed_perm(12, device).view(3, 4).to(device),
                                                  requires_grad=False))
    theirs = copy.deepcopy(ours)
    for amount in (5, 0.5):  # twice: the second on what remains
        sp.l1_unstructured(ours, "steps", amount)
        tp.l1_unstructured(theirs, "steps", amount)
        assert ours.steps_mask.dtype == torch.bool and torch.equal(ours.steps_mask, theirs.steps_mask.bool())
        assert ours.steps.dtype == torch.int64 and torch.equal(ours.steps, theirs.steps)
    # integer importance scores for float weights: local, global, structured
    ours, theirs = twins(device)
    s3 = signed_perm(128 * 16, device).view(16, 128).to(device)
    s5 = signed_perm(80, device).view(5, 16).to(device) * 10000
    for P, m in ((sp, ours), (tp, theirs)):
        P.l1_unstructured(m[3], "weight", 0.4, importance_scores=s3)
        P.l1_unstructured(m[3], "weight", 0.3, importance_scores=s3)
        P.global_unstructured([(m[3], "weight"), (m[5], "weight")], P.L1Unstructured, amount=300,
                              importance_scores={(m[3], "weight"): s3, (m[5], "weight"): s5})
    assert_same_pruning(ours, theirs, model_input(device))
    # ln_structured: torch cannot take the norm of an integer tensor; we rank the float norms
    lin = nn.Linear(16, 5).to(device)
    sp.ln_structured(lin, "weight", 2, 2, 0, importance_scores=s5)
    ref = nn.Linear(16, 5).to(device)
    tp.ln_structured(ref, "weight", 2, 2, 0, importance_scores=s5.double())
    assert torch.equal(lin.weight_mask, ref.weight_mask.bool())


def test_integer_ranking_is_exact_with_ties_lowest_index_first():
    p = sp.L1Unstructured(amount=2)
    big = torch.tensor([2**60 + 3, 2**60 + 1, -(2**60 + 2), 2**60])  # one float64 value for all
    assert p.compute_mask(big, torch.ones_like(big)).tolist() == [True, False, True, False]
    t = torch.tensor([2, 0, -2, 0, 2])  # |t| ties: the lowest index goes first
    mask = sp.L1Unstructured(amount=3).compute_mask(t, default_mask=torch.ones_like(t))
    assert mask.tolist() == [False, False, True, False, True]
    assert int((mask == 0).sum()) == sp._compute_nparams_toprune(3, t.numel())
    lin = nn.Linear(5, 1)
    lin.register_parameter("ids", nn.Parameter(big.clone(), requires_grad=False))
    sp.l1_unstructured(lin, "ids", 0.5)
    assert lin.ids_mask.tolist() == [True, False, True, False]
    assert lin.ids.tolist() == [2**60 + 3, 0, -(2**60 + 2), 0]


def test_random_pruning_of_an_integer_parameter_fails_as_torch_and_changes_nothing():
    errors = []
    for P in (tp, sp):
        m = nn.Linear(3, 2)
        m.register_parameter("ids", nn.Parameter(torch.arange(6), requires_grad=False))
        snap = snapshot(m)
        with pytest.raises(Exception) as e:
            P.random_unstructured(m, "ids", 2)  # torch.rand_like has no integer kernel
        errors.append(type(e.value))
        assert_unchanged(m, snap, [(m, {})])
    assert errors[0] is errors[1]


# ----------------------------------------------------------------------------- soft masks
def soft_mask(device):
    soft = torch.rand(5, 16, device=device)
    soft[0, :3] = 0
    soft[2] = 1  # exact ones: the entries later pruning ranks (torch's mask == 1)
    soft[4, ::2] = 1
    return soft


def assert_masks_equal(ours, theirs, x):
    """Same masks: float where torch's is not 0/1 (same dtype), bool where it is."""
    om, tm = masks_of(ours), masks_of(theirs)
    assert om.keys() == tm.keys() and om
    for k in om:
        soft = not bool(((tm[k] == 0) | (tm[k] == 1)).all())
        assert om[k].dtype == (tm[k].dtype if soft else torch.bool), k
        assert torch.equal(om[k].to(tm[k].dtype), tm[k]), k
    assert list(ours.state_dict()) == list(theirs.state_dict())
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_soft_custom_mask_is_applied_by_multiplication_as_torch(device):
    ours, theirs = twins(device)
    soft = soft_mask(device)
    for P, m in ((sp, ours), (tp, theirs)):
        P.custom_from_mask(m[5], "weight", soft)
    x = model_input(device)
    assert_masks_equal(ours, theirs, x)
    assert ours[5].weight_mask.dtype == torch.float32
    torch.testing.assert_close(ours[5].weight, ours[5].weight_orig * soft, rtol=0, atol=0)
    # pruning again (ours: the fast L1 path; random: torch's) ranks the entries still at 1
    for seed, case in enumerate((lambda P, m: P.l1_unstructured(m[5], "weight", 0.5),
                                 lambda P, m: P.random_unstructured(m[5], "weight", 3),
                                 lambda P, m: P.ln_structured(m[5], "weight", 1, 2, 0),
                                 lambda P, m: P.global_unstructured(
                                     [(m[5], "weight"), (m[3], "weight")], P.L1Unstructured, amount=0.3))):
        apply_both(case, ours, theirs, seed=seed)
        assert_masks_equal(ours, theirs, x)
    assert ours[5].weight_mask.dtype == torch.float32 and ours[3].weight_mask.dtype == torch.bool
    # checkpoints, both ways; remove
    target = make_model(device)
    sp.custom_from_mask(target[5], "weight", soft_mask(device))
    sp.l1_unstructured(target[3], "weight", 0.1)
    target.load_state_dict(theirs.state_dict())
    assert_masks_equal(target, theirs, x)
    for P, m in ((sp, ours), (tp, theirs)):
        P.remove(m[5], "weight")
    assert torch.equal(ours[5].weight, theirs[5].weight)


def test_soft_mask_direct_compute_mask_as_torch():
    t, soft = torch.randn(5, 16), soft_mask("cpu")
    default = (torch.rand(5, 16) > 0.3).float()
    for ours, theirs in ((sp.CustomFromMask(soft), tp.CustomFromMask(soft)),):
        assert torch.equal(ours.compute_mask(t, default.clone()), theirs.compute_mask(t, default.clone()))


# ----------------------------------------------------------------------------- torch's error types
ERROR_CASES = {
    "unknown_name": lambda P, m: P.l1_unstructured(m[0], "wieght", 0.5),
    "no_such_parameter": lambda P, m: P.l1_unstructured(m[1], "weight", 0.5),
    "plain_attribute": lambda P, m: P.identity(m[0], "training"),
    "buffer": lambda P, m: P.l1_unstructured(m[2], "running_mean", 1),
    "none_parameter": lambda P, m: P.random_unstructured(m[3], "bias", 1),
    "scores_shape": lambda P, m: P.l1_unstructured(m[0], "weight", 1, importance_scores=torch.ones(3)),
    "mask_shape": lambda P, m: P.custom_from_mask(m[0], "weight", torch.ones(3)),
    "amount": lambda P, m: P.l1_unstructured(m[0], "weight", 13),
    "structured_amount": lambda P, m: P.random_structured(m[0], "weight", 4, 0),
    "structured_1d": lambda P, m: P.ln_structured(m[0], "bias", 1, 2, 0),
    "dim": lambda P, m: P.ln_structured(m[0], "weight", 1, 2, 2),
    "negative_dim": lambda P, m: P.random_structured(m[0], "weight", 1, -3),
    "remove_unpruned": lambda P, m: P.remove(m[0], "weight"),
    "global_unknown_name": lambda P, m: P.global_unstructured([(m[0], "weight"), (m[3], "nope")],
                                                              P.L1Unstructured, amount=1),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_have_torchs_types(case):
    def model():
        return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))
    with pytest.raises(Exception) as theirs:
        ERROR_CASES[case](tp, model())
    m = model()
    snap = snapshot(m)
    hooks = [(x, dict(x._forward_pre_hooks)) for x in m.modules()]
    with pytest.raises(type(theirs.value)):
        ERROR_CASES[case](sp, m)
    assert_unchanged(m, snap, hooks)


# ----------------------------------------------------------------------------- direct compute_mask
def test_compute_mask_called_directly_as_torch():
    """Called directly, compute_mask has torch's semantics (amount of the whole tensor, then
    combined with default_mask); a PruningContainer applies it to what remains."""
    t = torch.randn(6, 5)
    default = (torch.rand(6, 5) > 0.3).long()
    default[2] = 0  # a dead row
    pairs = [(sp.L1Unstructured(amount=7), tp.L1Unstructured(amount=7)),
             (sp.L1Unstructured(amount=0.4), tp.L1Unstructured(amount=0.4)),
             (sp.LnStructured(0.5, 2, 0), tp.LnStructured(0.5, 2, 0)),
             (sp.LnStructured(2, 1, -1), tp.LnStructured(2, 1, -1)),
             (sp.LnStructured(0, 1, 0), tp.LnStructured(0, 1, 0))]
    for ours, theirs in pairs:
        expected = theirs.compute_mask(t, default.clone())
        got = ours.compute_mask(t, default.clone())
        assert got.dtype == torch.bool and torch.equal(got, expected.bool())
        with sp.mask_dtype(None):
            got = ours.compute_mask(t, default.clone())
        assert got.dtype == expected.dtype and torch.equal(got, expected)
        torch.testing.assert_close(ours.prune(t, default.clone()), theirs.prune(t, default.clone()))
    for last in range(1, len(pairs) + 1):
        containers = []
        for side in (0, 1):
            c = (sp, tp)[side].PruningContainer()
            c._tensor_name = "x"
            for pair in pairs[:last]:
                pair[side]._tensor_name = "x"
                c.add_pruning_method(pair[side])
            containers.append(c)
        expected = containers[1].compute_mask(t, default.clone())
        assert torch.equal(containers[0].compute_mask(t, default.clone()), expected.bool())
        with sp.mask_dtype(None):
            got = containers[0].compute_mask(t, default.clone())
        assert got.dtype == expected.dtype and torch.equal(got, expected)


# ----------------------------------------------------------------------------- float masks
def test_mask_dtype_setting_api():
    assert sp.get_mask_dtype() == torch.bool
    assert sp.set_mask_dtype(torch.float16) == torch.bool and sp.get_mask_dtype() == torch.float16
    assert sp.set_mask_dtype(None) == torch.float16 and sp.get_mask_dtype() is None
    assert sp.set_mask_dtype(torch.bool) is None
    for bad in (torch.int64, torch.complex64, "float32", float, 1):
        with pytest.raises(TypeError, match="mask dtype"):
            sp.set_mask_dtype(bad)
        assert sp.get_mask_dtype() == torch.bool
    with sp.mask_dtype(torch.float32):
        assert sp.get_mask_dtype() == torch.float32
        with sp.mask_dtype(None):
            assert sp.get_mask_dtype() is None
        assert sp.get_mask_dtype() == torch.float32
    with pytest.raises(ZeroDivisionError), sp.mask_dtype(None):
        _ = 1 / 0
    assert sp.get_mask_dtype() == torch.bool

    @sp.mask_dtype(torch.float64)
    def prune_in_float64(m):
        return sp.l1_unstructured(m, "weight", 0.5).weight_mask.dtype
    assert prune_in_float64(nn.Linear(4, 4)) == torch.float64 and sp.get_mask_dtype() == torch.bool
    assert "set_mask_dtype" in sp.torch_compat.__doc__ and "mask_dtype(" in sp.torch_compat.__doc__


@pytest.mark.parametrize("case", list(CASES))
def test_torch_mask_dtypes_match_torch_exactly(device, case):
    """With set_mask_dtype(None) every mask is what torch makes, dtype included, also after
    pruning again, globally, and through a checkpoint."""
    ours, theirs = twins(device)
    target = copy.deepcopy(ours).double()
    ours.double()
    theirs.double()
    x = model_input(device).double()
    steps = [CASES[case], CASES["l1_frac"],
             lambda P, m: P.global_unstructured([(m[0], "weight"), (m[3], "weight")], P.L1Unstructured,
                                                amount=0.2)]
    with sp.mask_dtype(None):
        for step in steps:
            apply_both(step, ours, theirs)
    om, tm = masks_of(ours), masks_of(theirs)
    assert om.keys() == tm.keys()
    for k in om:
        assert om[k].dtype == tm[k].dtype == torch.float64 and torch.equal(om[k], tm[k]), k
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    for step in steps:  # the same pruning with bool masks: a float checkpoint loads into them
        step(sp, target)
    target.load_state_dict(ours.state_dict())
    assert all(m.dtype == torch.bool for m in masks_of(target).values())
    torch.testing.assert_close(target(x), theirs(x), rtol=0, atol=0)


def test_float_masks_for_arithmetic(device):
    lin = nn.Linear(8, 4).to(device)
    sp.l1_unstructured(lin, "weight", 0.5)
    with pytest.raises(RuntimeError):  # why the switch exists: bool masks refuse arithmetic
        1 - lin.weight_mask
    with sp.mask_dtype(torch.float32):
        model = nn.Linear(8, 4).to(device).double()  # masks in the chosen dtype, not the parameter's
        sp.l1_unstructured(model, "weight", 0.5)
        sp.random_unstructured(model, "bias", 1)
        sp.l1_unstructured(lin, "weight", 0.5)  # re-pruning a bool-masked tensor: the new mask is float
    for mask in (model.weight_mask, model.bias_mask, lin.weight_mask):
        assert mask.dtype == torch.float32
    assert bool(((1 - model.weight_mask) == (model.weight_mask == 0)).all())
    assert float(model.weight_mask.mean()) == 0.5 and float(lin.weight_mask.mean()) == 0.25
    x = torch.randn(3, 8, device=device)
    torch.testing.assert_close(F.linear(x, model.weight_mask), x @ model.weight_mask.T)
    torch.testing.assert_close(model.weight, model.weight_orig * model.weight_mask.double(), rtol=0, atol=0)
    sp.l1_unstructured(model, "weight", 0.5)  # the default again: this mask is bool
    assert model.weight_mask.dtype == torch.bool and int(model.weight_mask.sum()) == 8
    assert lin.weight_mask.dtype == torch.float32  # masks made earlier keep their dtype
