"""Activation-aware one-shot pruning: calibration statistics, Wanda scores, SparseGPT against a
port of the published step, and prune_model's sequential pipeline (on a plain block model and,
when transformers is installed, on a tiny LlamaForCausalLM built from a config)."""
import copy

import pytest
import torch
from torch import nn

import sparsedistill as sd
from sparsedistill.prune import collect_statistics, prune_model, sparsegpt_prune_, wanda_scores
from sparsedistill.prune.reference import sparsegpt_published


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x, scale=1.0):
        return x + scale * self.down(torch.relu(self.up(self.norm(x))))


class Tiny(nn.Module):
    def __init__(self, d=16, n=3, vocab=50):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(n))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids, scale=1.0):
        x = self.embed(ids)
        for b in self.layers:
            x = b(x, scale=scale)
        return self.head(x)


def batches(n=3, vocab=50):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (2, 9), generator=g) for _ in range(n)]


def no_hooks(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_statistics_match_a_direct_computation():
    model = Tiny()
    seen = []
    h = model.layers[1].down.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().reshape(-1, 32)))
    stats = collect_statistics(model, batches(), hessian=True, dtype=torch.float64)
    h.remove()
    x = torch.cat(seen).double()
    s = stats["layers.1.down"]
    assert s.rows == x.shape[0] == 54
    torch.testing.assert_close(s.sq_sum, x.square().sum(0))
    torch.testing.assert_close(s.hessian, x.t() @ x)
    assert set(stats) == {"layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down",
                          "layers.2.up", "layers.2.down", "head"}
    w = model.layers[1].down.weight
    torch.testing.assert_close(wanda_scores(w, s), (w.abs().double() * x.norm(dim=0)).float())
    assert no_hooks(model)


def test_statistics_remove_hooks_and_restore_mode_on_error():
    model = Tiny().train()
    model.layers[0].eval()
    with pytest.raises(IndexError):
        collect_statistics(model, [torch.tensor([[1, 2]]), torch.tensor([[99]])])  # 99: out of vocab
    assert no_hooks(model)
    assert model.training and not model.layers[0].training and model.layers[1].training


@pytest.mark.parametrize("pattern", [None, (2, 4)])
@pytest.mark.parametrize("blocksize", [32, 128])
def test_sparsegpt_matches_the_published_step(pattern, blocksize):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(500, 96, generator=g) * torch.rand(96, generator=g) * 3
    X[:, 5] = 0  # a dead input
    W = torch.randn(40, 96, generator=g)
    H = X.t() @ X
    w = W.clone()
    keep = sparsegpt_prune_(w, H, 0.5, pattern=pattern, blocksize=blocksize)
    n, m = (2, 4) if pattern else (0, 0)
    want = sparsegpt_published(W, H, 0.5, n, m, blocksize=blocksize, exact=True)
    torch.testing.assert_close(w, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(keep | (w == 0), w != 0 | ~keep)  # pruned weights are exactly zero
    assert (~keep).float().mean().item() == 0.5
    published = sparsegpt_published(W, H, 0.5, n, m, blocksize=blocksize)
    extra = int((published == 0).sum()) - int((w == 0).sum())
    assert 0 <= extra <= (96 // blocksize + 1) * (1 if pattern is None else 0) + 40  # `<=` threshold
    # Better reconstruction than magnitude on the same inputs.
    mag = W * (sd.nm_mask(W, 2, 4) if pattern else sd.magnitude_mask(W, 0.5))
    err = lambda V: ((X @ (W - V).t()) ** 2).sum()  # noqa: E731
    assert err(w) < err(mag)


def test_sparsegpt_bad_arguments():
    w, H = torch.randn(4, 8), torch.eye(8)
    before = w.clone()
    for kwargs, match in [(dict(sparsity=1.0), "sparsity"), (dict(sparsity=0.5, pattern=(4, 4)), "pattern"),
                          (dict(sparsity=0.5, pattern=(2, 3)), "pattern")]:
        with pytest.raises(ValueError, match=match):
            sparsegpt_prune_(w, H, **kwargs)
    with pytest.raises(ValueError, match="hessian"):
        sparsegpt_prune_(w, torch.eye(7), 0.5)
    assert torch.equal(w, before)


@pytest.mark.parametrize("method,pattern", [("magnitude", None), ("global_magnitude", None), ("wanda", None),
                                            ("sparsegpt", None), ("wanda", (2, 4)), ("sparsegpt", (2, 4)),
                                            ("magnitude", (2, 4))])
def test_prune_model_prunes_the_blocks(method, pattern):
    model = Tiny()
    head = model.head.weight.clone()
    report = prune_model(model, None if pattern else 0.5, method=method, calibration=batches(), pattern=pattern)
    names = [r.name for r in report.layers]
    assert names == [f"layers.{i}.{p}" for i in range(3) for p in ("up", "down")]
    assert torch.equal(model.head.weight, head)  # not in a block: untouched
    assert report.sparsity == pytest.approx(0.5)
    for r in report.layers:
        w = dict(model.named_modules())[r.name].weight
        assert torch.equal(report.masks[f"{r.name}.weight"], w != 0)
        if pattern:
            assert ((w != 0).reshape(-1, 4).sum(1) <= 2).all()
        if method == "wanda":
            assert torch.equal((w == 0).sum(1), torch.full((w.shape[0],), w.shape[1] // 2))
        if method != "global_magnitude":
            assert 0 <= r.error < 1
    assert no_hooks(model)


def test_sequential_inputs_are_those_of_the_partially_pruned_model():
    """The statistics of block L come from the outputs of the already pruned blocks < L: Wanda's
    mask of each block's first Linear equals the one computed from a plain forward of the final
    (pruned) model, whose input to that Linear does not depend on the Linear itself."""
    model = Tiny()
    dense = copy.deepcopy(model)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = prune_model(model, 0.5, method="wanda", calibration=batches())
    stats = collect_statistics(model, batches(), targets=[f"layers.{i}.up" for i in range(3)])
    for i in range(3):
        name = f"layers.{i}.up"
        w0 = original[name]
        want = sd.magnitude_mask(w0, 0.5, scores=wanda_scores(w0, stats[name]), group="row")
        assert torch.equal(report.masks[f"{name}.weight"], want)
    # Non-sequential takes every statistic from the dense model: the same first block, later
    # blocks ranked from dense inputs.
    r2 = prune_model(dense, 0.5, method="wanda", calibration=batches(), sequential=False)
    assert torch.equal(r2.masks["layers.0.up.weight"], report.masks["layers.0.up.weight"])
    assert not torch.equal(r2.masks["layers.2.up.weight"], report.masks["layers.2.up.weight"])


def test_keyword_inputs_reach_every_block():
    model = Tiny()
    ref = copy.deepcopy(model)
    calib = [{"ids": b, "scale": 0.5} for b in batches()]
    report = prune_model(model, 0.5, method="sparsegpt", calibration=calib)
    report_ref = prune_model(ref, 0.5, method="sparsegpt", calibration=[(b, 0.5) for b in batches()])
    for k in report.masks:
        assert torch.equal(report.masks[k], report_ref.masks[k])


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(sparsity=1.0), ValueError, "sparsity"),
    (dict(sparsity=-0.1), ValueError, "sparsity"),
    (dict(sparsity=0.5, pattern=(4, 4)), ValueError, "pattern"),
    (dict(sparsity=0.5, pattern=(5, 4)), ValueError, "pattern"),
    (dict(sparsity=0.3, pattern=(2, 4)), ValueError, "disagrees"),
    (dict(sparsity=0.5, calibration=None), ValueError, "calibration"),
    (dict(sparsity=0.5, calibration=[]), ValueError, "calibration"),
    (dict(sparsity=0.5, calibration=torch.zeros(2, 3, dtype=torch.long)), TypeError, "calibration"),
    (dict(sparsity=0.5, targets=["layers.0.norm"]), TypeError, "nn.Linear"),
    (dict(sparsity=0.5, targets=["nope"]), ValueError, "not a module"),
    (dict(sparsity=0.5, targets=["head"]), ValueError, "outside the blocks"),
    (dict(sparsity=0.5, method="obs"), ValueError, "method"),
    (dict(sparsity=0.5, blocks="decoder.layers"), ValueError, "blocks"),
    (dict(sparsity=0.5, keep_masks=None), TypeError, "keep_masks"),
    (dict(sparsity=0.5, group="column"), ValueError, "group"),
    (dict(sparsity=0.5, method="sparsegpt", group="row"), ValueError, "group"),
    (dict(sparsity=None, pattern=(2, 4), group="tensor"), ValueError, "group"),
])
def test_bad_arguments_leave_the_model_untouched(kwargs, err, match):
    model = Tiny()
    before = copy.deepcopy(model.state_dict())
    kwargs = {"method": "wanda", "calibration": batches(), **kwargs}
    with pytest.raises(err, match=match):
        prune_model(model, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert no_hooks(model)


@pytest.mark.parametrize("method,group", [("wanda", "tensor"), ("wanda", "row"), ("wanda", None),
                                          ("magnitude", "row"), ("magnitude", "tensor"), ("magnitude", None)])
def test_group_chooses_where_the_weights_compete(method, group):
    model = Tiny()
    dense = copy.deepcopy(model)
    stats = collect_statistics(dense, batches(), [f"layers.{i}.{p}" for i in range(3) for p in ("up", "down")])
    report = prune_model(model, 0.5, method=method, calibration=batches(), sequential=False, group=group)
    per = group or ("row" if method == "wanda" else "tensor")
    for name, st in stats.items():
        w = dense.get_submodule(name).weight.detach()
        scores = wanda_scores(w, st) if method == "wanda" else None
        want = sd.magnitude_mask(w, 0.5, scores=scores, group=per)
        assert torch.equal(report.masks[f"{name}.weight"], want)
        assert torch.equal(model.get_submodule(name).weight, w * want)


def test_error_inside_a_block_removes_the_hooks():
    model = Tiny()
    model.layers[1].down = nn.Linear(31, 16)  # wrong in_features: the block raises
    with pytest.raises(RuntimeError):
        prune_model(model, 0.5, method="wanda", calibration=batches())
    assert no_hooks(model)


@pytest.mark.parametrize("method", ["magnitude", "global_magnitude", "wanda", "sparsegpt"])
def test_prune_model_without_masks_prunes_the_same(method):
    kept, bare = Tiny(), Tiny()
    bare.load_state_dict(kept.state_dict())
    with_masks = prune_model(kept, 0.5, method=method, calibration=batches())
    without = prune_model(bare, 0.5, method=method, calibration=batches(), keep_masks=False)
    assert without.masks == {} and len(with_masks.masks) == 6
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), bare.state_dict().values()))
    assert without.sparsity == pytest.approx(with_masks.sparsity)
    assert [(r.name, r.sparsity, r.error) for r in without.layers] == [(r.name, r.sparsity, r.error)
                                                                       for r in with_masks.layers]


def test_masks_continue_in_masked_pruner():
    model = Tiny()
    report = prune_model(model, 0.5, method="wanda", calibration=batches())
    params = {k: dict(model.named_parameters())[k] for k in report.masks}
    pruner = sd.MaskedPruner(params, lambda step: 0.6, masks=report.masks)
    assert pruner.sparsity == pytest.approx(0.5)
    pruner.step(0)
    assert pruner.sparsity == pytest.approx(0.6, abs=1e-3)
    for name, p in params.items():
        assert not (p[~report.masks[name]] != 0).any()  # one-shot zeros stay
    loss = model(batches()[0]).sum()
    loss.backward()
    for name, p in params.items():
        assert not (p.grad[~pruner.masks[pruner.names.index(name)]] != 0).any()
    with pytest.raises(ValueError, match="masks"):
        sd.MaskedPruner(params, lambda s: 0.5, masks={"x": None})


def test_hugging_face_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, 120, (2, 16), generator=g) for _ in range(3)]
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = prune_model(model, 0.5, method="wanda", calibration=calib)
    assert len(report.layers) == 14 and report.sparsity == pytest.approx(0.5)
    assert torch.equal(model.lm_head.weight, original["lm_head"])
    assert no_hooks(model)
    # The second block's inputs were the first pruned block's outputs (no KV cache carried over).
    stats = collect_statistics(model, calib, targets=["model.layers.1.self_attn.q_proj"])
    w0 = original["model.layers.1.self_attn.q_proj"]
    want = sd.magnitude_mask(w0, 0.5, scores=wanda_scores(w0, stats["model.layers.1.self_attn.q_proj"]),
                             group="row")
    assert torch.equal(report.masks["model.layers.1.self_attn.q_proj.weight"], want)
    sgpt = prune_model(copy.deepcopy(model), None, method="sparsegpt", calibration=calib, pattern=(2, 4))
    assert sgpt.sparsity == pytest.approx(0.5)
