"""MaskedPruner, the training loops, shrink_dead_units_, the metrics, and a small run of the
digits pipeline (skipped without scikit-learn)."""
import copy

import pytest
import torch
from torch import nn

from sparsedistill import CubicSparsitySchedule, SparseLinear
from sparsedistill.train import cpu_latency_ms, evaluate, model_stats
from sparsedistill.prune.checks import resolve_amount
from sparsedistill.prune import shrink_dead_units_
from sparsedistill.train import MaskedPruner, fit_distill, progress_bar, train_hard_labels


def _mlp(*widths):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _loader(n=96, features=12, classes=3, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, :classes].argmax(1))  # a learnable rule
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def test_pruner_exact_sparsity_and_zeros_survive_training():
    model = _mlp(12, 33, 17, 3)  # odd sizes
    loader = _loader()
    schedule = CubicSparsitySchedule(0.0, 0.8, 0, 12, frequency=2)
    pruner = MaskedPruner(model, schedule)
    # weight decay and momentum would move pruned weights back off zero without apply_()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    history = train_hard_labels(model, loader, opt, epochs=4, pruner=pruner, progress=False)
    assert len(history) == 4 and history[-1]["sparsity"] == pruner.sparsity
    k = resolve_amount(0.8, pruner.total)
    assert pruner.pruned == k and sum(int((~m).sum()) for m in pruner.masks) == k
    for p, m in zip(pruner.params, pruner.masks):
        assert torch.count_nonzero(p[~m]) == 0
    assert sum(int(torch.count_nonzero(p)) for p in pruner.params) == pruner.total - k
    # the gradient hook zeroes the pruned entries' gradients
    x, y = loader[0]
    nn.functional.cross_entropy(model(x), y).mul(2).backward()
    for p, m in zip(pruner.params, pruner.masks):
        assert torch.count_nonzero(p.grad[~m]) == 0 and torch.count_nonzero(p.grad[m]) > 0
    pruner.remove()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert any(torch.count_nonzero(p.grad[~m]) > 0 for p, m in zip(pruner.params, pruner.masks))


def test_pruner_never_unprunes_and_follows_the_schedule():
    w = nn.Parameter(torch.randn(10, 10))
    pruner = MaskedPruner({"w": w}, lambda step: [0.5, 0.3, 0.7][step])
    assert pruner.step(0) == 0.5 and pruner.pruned == 50
    before = [m.clone() for m in pruner.masks]
    pruner.step(1)  # lower target: nothing comes back
    assert pruner.pruned == 50 and torch.equal(before[0], pruner.masks[0])
    pruner.step(2)
    assert pruner.pruned == 70 and not (pruner.masks[0] & ~before[0]).any()


@pytest.mark.parametrize("args, exc, match", [
    (([], lambda s: 0.5), ValueError, "params"),
    (([torch.zeros(3, dtype=torch.int64)], lambda s: 0.5), TypeError, "params"),
    (([nn.Parameter(torch.ones(3))], 0.5), TypeError, "schedule"),
])
def test_pruner_errors_name_the_argument(args, exc, match):
    with pytest.raises(exc, match=match):
        MaskedPruner(*args)
    pruner = MaskedPruner([nn.Parameter(torch.ones(3))], lambda s: 0.5)
    with pytest.raises(ValueError, match="sparsity"):
        pruner.prune_to(1.5)


def test_fit_errors_name_the_argument():
    model, loader = _mlp(12, 8, 3), _loader()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="teacher"):
        fit_distill("x", model, loader, opt, progress=False)
    with pytest.raises(TypeError, match="optimizer"):
        fit_distill(model, model, loader, "sgd", progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train_hard_labels(model, loader, opt, epochs=0, progress=False)
    with pytest.raises(TypeError, match="pruner"):
        train_hard_labels(model, loader, opt, pruner=object(), progress=False)


def test_fit_distill_learns_from_the_teacher(capsys):
    loader = _loader()
    teacher = _mlp(12, 32, 3)
    train_hard_labels(teacher, loader, torch.optim.Adam(teacher.parameters(), 1e-2), epochs=30, progress=False)
    student = _mlp(12, 8, 3)
    history = fit_distill(teacher, student, loader, torch.optim.Adam(student.parameters(), 1e-2),
                          T=2.0, alpha=0.5, epochs=30, progress=True, desc="kd")
    assert history[-1]["soft"] < history[0]["soft"] and set(history[0]) >= {"loss", "soft", "hard"}
    assert evaluate(student, loader) > 0.8
    assert "kd" in capsys.readouterr().err  # the progress bar (tqdm or the built-in one)
    assert teacher.training is False


def test_builtin_progress_bar(capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (
        (_ for _ in ()).throw(ImportError(name)) if name.startswith("tqdm") else real_import(name, *a, **k)))
    bar = progress_bar(4, "steps")
    for _ in range(4):
        bar.update()
    bar.set_postfix_str("loss=1")
    bar.close()
    err = capsys.readouterr().err
    assert "steps" in err and "4/4" in err and "loss=1" in err


def test_shrink_dead_units_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.GELU(), nn.Dropout(0.1), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 4))
    with torch.no_grad():
        model[0].weight[[1, 4]] = 0   # dead rows: constant units (GELU(bias)) folded into model[3].bias
        model[3].weight[:, 2] = 0     # dead column: unit 2 of the first hidden layer unused
        model[5].weight[:, 6] = 0     # unit 6 of the second hidden layer unused
    x = torch.randn(5, 6)
    model.eval()
    expected = model(x)
    removed = shrink_dead_units_(model)
    assert removed == {"0": 3, "3": 1}
    assert model[0].out_features == 6 and model[3].out_features == 6 and model[5].in_features == 6
    torch.testing.assert_close(model(x), expected)
    assert shrink_dead_units_(model) == {}


def test_model_stats_and_latency():
    dense = nn.Linear(40, 30)
    with torch.no_grad():
        dense.weight[:, :30] = 0
    stats = model_stats(dense)
    assert stats["params"] == 40 * 30 + 30 and stats["nonzeros"] == 10 * 30 + int(torch.count_nonzero(dense.bias))
    sparse = SparseLinear.from_linear(dense)
    small = model_stats(sparse)
    assert small["params"] == 300 + 30 and small["size_bytes"] < stats["size_bytes"]
    assert cpu_latency_ms(sparse, 2, 40, reps=3, warmup=1) > 0
    with pytest.raises(ValueError, match="batch_size"):
        cpu_latency_ms(dense, 0, 40)
    with pytest.raises(TypeError, match="model"):
        model_stats("model")


def test_demo_names_the_missing_package(monkeypatch):
    import sys
    from sparsedistill import demo

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="scikit-learn"):
        demo.load_digits_split(0)


def test_digits_pipeline_small():
    pytest.importorskip("sklearn")
    from sparsedistill import demo

    x_tr, y_tr, x_te, y_te = demo.load_digits_split(0)
    assert x_tr.shape == (1347, 64) and x_te.shape == (450, 64) and 0 <= x_tr.min() and x_tr.max() <= 1
    torch.manual_seed(0)
    train = demo.Batches(x_tr, y_tr, 64, shuffle=True, seed=0)
    test = demo.Batches(x_te, y_te, 512)
    teacher = demo.mlp(64, (128,), 10)
    train_hard_labels(teacher, train, torch.optim.Adam(teacher.parameters(), 3e-3), epochs=6, progress=False)
    student = demo.mlp(64, (32, 32), 10)
    pruner = MaskedPruner(student, CubicSparsitySchedule(0.0, 0.75, 0, 6 * len(train), frequency=5))
    opt = torch.optim.AdamW(student.parameters(), 5e-3, weight_decay=1e-2)
    fit_distill(teacher, student, train, opt, T=2.0, alpha=0.7, epochs=8, pruner=pruner, progress=False)
    pruner.remove()
    k = resolve_amount(0.75, pruner.total)
    assert pruner.pruned == k
    assert sum(int(torch.count_nonzero(p)) for p in pruner.params) == pruner.total - k
    for p, m in zip(pruner.params, pruner.masks):
        assert torch.count_nonzero(p[~m]) == 0
    accuracy = evaluate(student, test)
    assert accuracy > 0.8, accuracy  # chance is 0.1
    best, final, _, timings = demo.fastest_form(copy.deepcopy(student), 64, reps=5)
    assert best in timings and evaluate(final, test) == pytest.approx(accuracy, abs=1 / 450)


def test_demo_seed_table_counts_wins_and_losses():
    from sparsedistill import demo

    def rows(t, p, h):
        return [{"model": "teacher", "accuracy": t}, {"model": "student distilled + pruned", "accuracy": p},
                {"model": "student pruned, no teacher", "accuracy": h}]
    lines = demo.seed_table({0: rows(0.99, 0.98, 0.97), 3: rows(1.0, 0.98, 0.985)})
    assert lines[2] == "| 0 | 99.00% | 98.00% | 97.00% | +1.00 | 1.00 |"
    assert lines[3] == "| 3 | 100.00% | 98.00% | 98.50% | -0.50 | 2.00 |"
    assert lines[-1] == ("Distilled >= no teacher in 1 of 2 seeds (mean +0.25 points); accuracy loss "
                         "<= 1.5 points in 1 of 2 (mean 1.50, worst 2.00).")


def test_demo_quick_command_writes_the_report(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from sparsedistill import demo

    out = tmp_path / "demo.md"
    assert demo.main(["--quick", "--no-progress", "--seeds", "1", "--out", str(out)]) == 0
    text = out.read_text()
    for row in ("| teacher | dense |", "| student distilled + pruned |", "| student pruned, no teacher |",
                "## Over seeds (`--seeds 0,1`", "| 1 | "):
        assert row in text
    assert (tmp_path / "demo.csv").exists()
    with pytest.raises(SystemExit):
        demo.main(["--quick", "--seeds", "one"])
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err
