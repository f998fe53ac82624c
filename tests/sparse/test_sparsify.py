"""sparsify for transformers (rows per call, filters, tied weights, plans, reasons, bytes) and
SparseLinear's N-D forward. Timing decisions are checked for consistency, never for speed."""
import copy
import json

import pytest
import torch
from torch import nn

import sparsedistill
from sparsedistill.sparse import DEFAULT_EXCLUDE, SparseLinear, SparsifyPlan, apply_plan, sparsify
from sparsedistill.sparse.sparsify import state_dict_bytes


class Block(nn.Module):
    """An attention-like block: q/k/v see (batch, seq) rows, the pooler one row per sequence."""

    def __init__(self, d=48):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.pooler = nn.Linear(d, d)

    def forward(self, x):
        h = self.query(x) + self.key(x) + self.value(x)
        h = self.down(torch.relu(self.up(h)))
        return h, self.pooler(h[:, 0])


def pruned_block(sparsity=0.9):
    torch.manual_seed(3)
    block = Block()
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.Linear):
                sparsedistill.magnitude_prune_(m.weight, sparsity)
    return block


def test_filters_heads_and_min_sparsity():
    block = pruned_block()
    block.up.weight.data = torch.randn_like(block.up.weight)  # dense again
    report = sparsify(block, measure=False)
    reasons = {d.name: d.reason for d in report.decisions}
    assert report.replaced == ["query", "key", "value", "down"]
    assert "DEFAULT_EXCLUDE" in reasons["pooler"] and "min_sparsity" in reasons["up"]
    assert type(block.pooler) is nn.Linear and isinstance(block.query, SparseLinear)
    assert "*pooler*" in DEFAULT_EXCLUDE

    block = pruned_block()
    report = sparsify(block, measure=False, include=["query", "*down"], exclude=())
    assert report.replaced == ["query", "down"]
    assert {d.reason for d in report.decisions if not d.replaced} == {"not matched by include"}
    block = pruned_block()
    assert sparsify(block, measure=False, exclude="*e*").replaced == ["up", "down"]  # one pattern


def test_exclude_patterns_are_fnmatch():
    block = pruned_block()
    report = sparsify(block, measure=False, exclude=["q*", "pooler"])
    assert set(report.replaced) == {"key", "value", "up", "down"}


def test_tied_weights_stay_dense():
    model = nn.Sequential(nn.Embedding(40, 16), nn.Linear(16, 16), nn.Linear(16, 40, bias=False))
    model[2].weight = model[0].weight  # an LM head tied to the embedding
    with torch.no_grad():
        sparsedistill.magnitude_prune_(model[1].weight, 0.9)
        sparsedistill.magnitude_prune_(model[0].weight, 0.9)
    report = sparsify(model, measure=False, exclude=())
    assert report.replaced == ["1"]
    assert report.decisions[1].reason == "weight tied to 0.weight"
    assert model[2].weight is model[0].weight


def test_rows_per_call_from_batch_seq_and_example_inputs():
    block = pruned_block()
    report = sparsify(copy.deepcopy(block), batch_size=3, seq_len=7, reps=2, min_time_s=0, exclude=())
    assert all(d.rows == 21 for d in report.decisions)
    x = torch.randn(2, 5, 48)
    report = sparsify(copy.deepcopy(block), example_inputs=(x,), reps=2, min_time_s=0, exclude=())
    rows = {d.name: d.rows for d in report.decisions}
    assert rows["query"] == rows["down"] == 10 and rows["pooler"] == 2
    report = sparsify(copy.deepcopy(block), example_inputs={"x": x}, reps=2, min_time_s=0)
    assert {d.name: d.rows for d in report.decisions}["up"] == 10


def test_layer_not_called_by_example_inputs():
    model = nn.ModuleDict({"used": nn.Linear(8, 8), "unused": nn.Linear(8, 8)})
    for m in model.values():
        sparsedistill.magnitude_prune_(m.weight.data, 0.9)
    model.forward = lambda x: model["used"](x)
    report = sparsify(model, example_inputs=(torch.randn(4, 8),), reps=2, min_time_s=0)
    assert {d.name: d.reason for d in report.decisions}["unused"] == "not called by example_inputs"


def test_measured_decisions_are_consistent():
    block = pruned_block()
    x = torch.randn(2, 5, 48)
    want = block(x)
    report = sparsify(block, batch_size=2, seq_len=5, reps=5, min_time_s=0, margin=0.1)
    for d in report.decisions:
        if d.name == "pooler":
            assert d.speedup is None and not d.replaced
            continue
        assert d.dense_ms > 0 and d.sparse_ms > 0 and d.speedup > 0
        assert d.replaced == (d.speedup >= 1.1)
        assert ("faster at 10 rows per call" in d.reason) if d.replaced else ("at 10 rows per call" in d.reason)
        assert isinstance(block.get_submodule(d.name), SparseLinear) == d.replaced
    for got, ref in zip(block(x), want):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert "checkpoint tensors" in str(report)


def test_plan_applies_to_another_instance():
    block = pruned_block()
    report = sparsify(block, measure=False, exclude=["up"])
    plan = SparsifyPlan.from_dict(json.loads(json.dumps(report.plan.to_dict())))
    other = pruned_block()
    x = torch.randn(3, 4, 48)
    assert apply_plan(other, plan) == report.replaced
    assert [n for n, m in other.named_modules() if isinstance(m, SparseLinear)] == report.replaced
    for a, b in zip(other(x), block(x)):
        torch.testing.assert_close(a, b)
    assert apply_plan(pruned_block(), report) == report.replaced  # a report works too


@pytest.mark.parametrize("plan, exc, match", [
    ({"modules": {"query": [48, 48], "nope": [1, 1]}}, ValueError, "does not have"),
    ({"modules": {"query": [48, 48], "up": [48, 48]}}, ValueError, "shape"),
    ({"modules": {"query": [48, 48], "": [48, 48]}}, TypeError, "not an nn.Linear"),
    ({"layers": {}}, ValueError, "modules"),
    ("query", TypeError, "plan must be"),
])
def test_bad_plan_replaces_nothing(plan, exc, match):
    block = pruned_block()
    with pytest.raises(exc, match=match):
        apply_plan(block, plan)
    assert not any(isinstance(m, SparseLinear) for m in block.modules())


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(min_sparsity=1.5), ValueError, "min_sparsity"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(seq_len=True), ValueError, "seq_len"),
    (dict(seq_len=2.0), ValueError, "seq_len"),
    (dict(margin=1.0), ValueError, "margin"),
    (dict(reps=0), ValueError, "reps"),
    (dict(min_time_s=-1), ValueError, "min_time_s"),
    (dict(include=[3]), TypeError, "include"),
    (dict(exclude=[None]), TypeError, "exclude"),
])
def test_bad_arguments_leave_the_model(kwargs, exc, match):
    block = pruned_block()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with pytest.raises(exc, match=match):
        sparsify(block, **kwargs)
    assert all(type(m) is not SparseLinear for m in block.modules())
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        sparsify("model")


def test_failing_example_forward_leaves_the_model():
    block = pruned_block()
    with pytest.raises(RuntimeError):
        sparsify(block, example_inputs=(torch.randn(2, 5, 7),))
    assert not any(isinstance(m, SparseLinear) for m in block.modules())
    assert not any(m._forward_pre_hooks for m in block.modules())


def test_checkpoint_bytes_in_the_report():
    block = pruned_block()
    dense_bytes = state_dict_bytes(block)
    report = sparsify(block, measure=False, exclude=())
    assert report.bytes_before == dense_bytes
    assert report.bytes_after == state_dict_bytes(block) < dense_bytes
    assert report.bytes_after == sum(t.numel() * t.element_size() for t in block.state_dict().values())


def test_sparsify_under_inference_mode():
    block = pruned_block()
    x = torch.randn(2, 3, 48)
    with torch.inference_mode():
        want = block(x)
        sparsify(block, measure=False)
        got = block(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 48), (2, 5, 48), (2, 3, 4, 48), (0, 48), (2, 0, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_nd_forward_matches_dense(device, shape, bias):
    linear = nn.Linear(48, 30, bias=bias, device=device)
    layer = SparseLinear.from_linear(linear, amount=0.8)
    dense = layer.to_dense()
    x = torch.randn(shape, device=device)
    y = layer(x)
    assert y.shape == (*shape[:-1], 30)
    torch.testing.assert_close(y, dense(x))
    xt = torch.randn(5, 48, 2, device=device).transpose(1, 2)  # non-contiguous (5, 2, 48)
    torch.testing.assert_close(layer(xt), dense(xt))
