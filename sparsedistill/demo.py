"""Progressive compression end to end on real data: scikit-learn's bundled handwritten digits
(1,797 8x8 images, no download).

    python -m sparsedistill.demo [--quick] [--out results.md] [--seed 0]

Trains a wide teacher; distils a small student with the fused loss; prunes the student gradually
(cubic schedule, global magnitude masks) while distilling; converts it to its fastest exact form
(dead hidden units removed, linear layers sparsified where measured faster); and compares all of
it with the same student trained and pruned on hard labels alone. Writes a markdown table and a
CSV next to it. Needs scikit-learn (pip install "sparsedistill[demo]").
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import platform
import sys
import time

import torch
from torch import nn

from .prune import CubicSparsitySchedule, shrink_dead_units_
from .sparse import sparsify
from .train import MaskedPruner, cpu_latency_ms, evaluate, fit_distill, model_stats, train_hard_labels

# The full run; --quick divides the epochs (a smoke test, not a result).
# Why these settings, as measured over seeds: docs/performance.md, "The digits demo".
CONFIG = dict(teacher="cnn", teacher_channels=(32, 64), student=(128, 128), sparsity=0.75, T=2.0,
              alpha=0.7, teacher_epochs=40, teacher_lr=2e-3, student_epochs=150, lr=5e-3,
              prune_epochs=100, prune_lr=2e-3, batch_size=64, test_size=0.25, teacher_shifts=True)


# ----------------------------------------------------------------------------- data
def load_digits_split(seed: int, test_size: float = 0.25):
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1], a stratified split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError("the digits demo needs scikit-learn: pip install scikit-learn "
                          "(or pip install 'sparsedistill[demo]')") from e
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    as_x = lambda a: torch.tensor(a / 16.0, dtype=torch.float32)
    return as_x(x_tr), torch.tensor(y_tr), as_x(x_te), torch.tensor(y_te)


def shift_images(x: torch.Tensor, generator: torch.Generator, side: int = 8) -> torch.Tensor:
    """Each flattened side x side image moved by -1, 0 or +1 pixel in each direction (zero fill)."""
    imgs = torch.nn.functional.pad(x.view(-1, 1, side, side), (1, 1, 1, 1))
    out = torch.empty_like(x).view(-1, 1, side, side)
    dy, dx = torch.randint(0, 3, (2, x.shape[0]), generator=generator)
    for a in range(3):
        for b in range(3):
            rows = (dy == a) & (dx == b)
            out[rows] = imgs[rows, :, a:a + side, b:b + side]
    return out.view_as(x)


class Batches:
    """A re-iterable loader over in-memory tensors: a new seeded shuffle (and, with augment, new
    random shifts) on every pass. Cheaper than a DataLoader for data this small."""

    def __init__(self, x, y, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                 noise: float = 0.0, seed: int = 0):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.augment, self.noise = shuffle, augment, noise
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.generator) if self.shuffle else torch.arange(len(self.y))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            x = self.x[idx]
            if self.augment:
                x = shift_images(x, self.generator)
            if self.noise:
                x = x + self.noise * torch.randn(x.shape, generator=self.generator)
            yield x, self.y[idx]


# ----------------------------------------------------------------------------- models
def mlp(in_features: int, hidden, classes: int) -> nn.Sequential:
    layers, width = [], in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, classes))


def cnn(side: int, classes: int, channels=(32, 64), hidden: int = 256) -> nn.Sequential:
    """A small convolutional net on side x side images given flattened (the teacher: it is more
    accurate on digits than any MLP here, and shift-invariant, which distillation passes on)."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * (side // 2) ** 2, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def _optimizer(model, lr, epochs):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)


def _prune_stage(student, teacher, train, cfg, progress, desc):
    """Gradual pruning to cfg["sparsity"] over the first 2/3 of the stage, then fine-tuning with
    the mask fixed; distilled when a teacher is given, hard labels otherwise."""
    epochs = cfg["prune_epochs"]
    steps = epochs * len(train)
    schedule = CubicSparsitySchedule(0.0, cfg["sparsity"], 0, max(2 * steps // 3, 1),
                                     frequency=max(len(train) // 2, 1))
    pruner = MaskedPruner(student, schedule)
    opt, sched = _optimizer(student, cfg["prune_lr"], epochs)
    if teacher is not None:
        fit_distill(teacher, student, train, opt, T=cfg["T"], alpha=cfg["alpha"], epochs=epochs,
                    pruner=pruner, lr_scheduler=sched, progress=progress, desc=desc)
    else:
        train_hard_labels(student, train, opt, epochs=epochs, pruner=pruner, lr_scheduler=sched,
                          progress=progress, desc=desc)
    pruner.remove()
    return pruner


# ----------------------------------------------------------------------------- conversion
def fastest_form(model: nn.Module, in_features: int, reps: int):
    """Exact inference forms of a pruned model, each timed at batch 1: the masked dense model,
    its dead hidden units removed, that with sparsify() (per layer where measured faster), and
    that with every linear layer sparse (smallest on disk). Returns (name, model, timings)."""
    shrunk = copy.deepcopy(model)
    shrink_dead_units_(shrunk)
    measured = copy.deepcopy(shrunk)
    sparsify(measured, min_sparsity=0.5, batch_size=1, reps=max(reps // 4, 11))
    all_sparse = copy.deepcopy(shrunk)
    sparsify(all_sparse, min_sparsity=0.0, measure=False)
    candidates = {"masked dense": model, "shrunk dense": shrunk, "shrunk + sparsify": measured,
                  "shrunk, all sparse": all_sparse}
    timings = {name: cpu_latency_ms(m, 1, in_features, reps=reps) for name, m in candidates.items()}
    best = min(timings, key=timings.get)
    return best, candidates[best], candidates, timings


# ----------------------------------------------------------------------------- report
COLUMNS = ["model", "form", "accuracy", "params", "nonzeros", "size_kib", "latency_b1_ms", "latency_b64_ms"]


def measure(name, form, model, test, in_features, reps):
    stats = model_stats(model)
    return {"model": name, "form": form, "accuracy": evaluate(model, test), "params": stats["params"],
            "nonzeros": stats["nonzeros"], "size_kib": stats["size_bytes"] / 1024,
            "latency_b1_ms": cpu_latency_ms(model, 1, in_features, reps=reps),
            "latency_b64_ms": cpu_latency_ms(model, 64, in_features, reps=max(reps // 4, 20))}


def _fmt(key, value):
    if key == "accuracy":
        return f"{100 * value:.2f}%"
    if key in ("size_kib",):
        return f"{value:.1f}"
    if key.startswith("latency"):
        return f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown_table(rows) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(k, r[k]) for k in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def _compared(rows):
    """The rows of the teacher, the distilled pruned student and the no-teacher pruned student."""
    by = {r["model"]: r for r in rows}
    return by["teacher"], by["student distilled + pruned"], by["student pruned, no teacher"]


def targets(rows) -> list[str]:
    t, p, h = _compared(rows)
    checks = [
        ("nonzeros >= 10x fewer than the teacher", t["nonzeros"] / p["nonzeros"], 10.0,
         f"{t['nonzeros'] / p['nonzeros']:.1f}x"),
        ("accuracy loss <= 1.5 points", 1.5 - 100 * (t["accuracy"] - p["accuracy"]), 0.0,
         f"{100 * (t['accuracy'] - p['accuracy']):+.2f} points"),
        (">= 3x faster than the teacher at batch 1", t["latency_b1_ms"] / p["latency_b1_ms"], 3.0,
         f"{t['latency_b1_ms'] / p['latency_b1_ms']:.1f}x"),
        ("distilled >= no-teacher accuracy (pruned students)", p["accuracy"] - h["accuracy"], 0.0,
         f"{100 * p['accuracy']:.2f}% vs {100 * h['accuracy']:.2f}%"),
    ]
    return [f"- {'met' if value >= bound else 'MISSED'}: {what} ({shown})" for what, value, bound, shown in checks]


def seed_table(by_seed: dict) -> list[str]:
    """Markdown lines: the accuracies of every seed's run (the split, the initialisation and the
    shuffles change with the seed), and how often the distilled student matched the baseline."""
    lines = ["| seed | teacher | distilled + pruned | pruned, no teacher | distilled - no teacher | loss vs teacher |",
             "|---|---|---|---|---|---|"]
    gains, losses = [], []
    for seed, rows in by_seed.items():
        t, p, h = (r["accuracy"] for r in _compared(rows))
        gains.append(100 * (p - h))
        losses.append(100 * (t - p))
        lines.append(f"| {seed} | {100 * t:.2f}% | {100 * p:.2f}% | {100 * h:.2f}% | {gains[-1]:+.2f} | {losses[-1]:.2f} |")
    n = len(gains)
    lines += ["", f"Distilled >= no teacher in {sum(g >= 0 for g in gains)} of {n} seeds "
              f"(mean {sum(gains) / n:+.2f} points); accuracy loss <= 1.5 points in "
              f"{sum(x <= 1.5 for x in losses)} of {n} (mean {sum(losses) / n:.2f}, worst {max(losses):.2f})."]
    return lines


# ----------------------------------------------------------------------------- pipeline
def run(cfg: dict, seed: int, progress: bool = True, reps: int = 300, log=print) -> dict:
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits_split(seed, cfg["test_size"])
    features, classes = x_tr.shape[1], int(y_tr.max()) + 1
    shifted = Batches(x_tr, y_tr, cfg["batch_size"], shuffle=True, augment=cfg["teacher_shifts"], seed=seed)
    train = Batches(x_tr, y_tr, cfg["batch_size"], shuffle=True, seed=seed)
    test = Batches(x_te, y_te, 512)
    log(f"digits: {len(y_tr)} train / {len(y_te)} test, seed {seed}, torch threads {torch.get_num_threads()}")

    teacher = (cnn(8, classes, cfg["teacher_channels"]) if cfg["teacher"] == "cnn"
               else mlp(features, cfg["teacher"], classes))
    opt, sched = _optimizer(teacher, cfg["teacher_lr"], cfg["teacher_epochs"])
    train_hard_labels(teacher, shifted, opt, epochs=cfg["teacher_epochs"], lr_scheduler=sched,
                      progress=progress, desc="teacher")

    students = {}
    for kind in ("distilled", "no teacher"):
        torch.manual_seed(seed + 1)  # the same initial student for both
        student = mlp(features, cfg["student"], classes)
        opt, sched = _optimizer(student, cfg["lr"], cfg["student_epochs"])
        if kind == "distilled":
            fit_distill(teacher, student, train, opt, T=cfg["T"], alpha=cfg["alpha"],
                        epochs=cfg["student_epochs"], lr_scheduler=sched, progress=progress, desc="student KD")
        else:
            train_hard_labels(student, train, opt, epochs=cfg["student_epochs"], lr_scheduler=sched,
                              progress=progress, desc="student CE")
        dense = copy.deepcopy(student)
        pruner = _prune_stage(student, teacher if kind == "distilled" else None, train, cfg, progress,
                              "prune KD" if kind == "distilled" else "prune CE")
        students[kind] = (dense, student, pruner)

    rows = [measure("teacher", "dense", teacher, test, features, reps)]
    for kind, label in (("distilled", "student distilled"), ("no teacher", "student, no teacher")):
        rows.append(measure(label, "dense", students[kind][0], test, features, reps))
    forms = {}
    for kind, label in (("distilled", "student distilled + pruned"), ("no teacher", "student pruned, no teacher")):
        pruned, pruner = students[kind][1], students[kind][2]
        best, model, candidates, timings = fastest_form(pruned, features, reps)
        forms[kind] = {"chosen": best, "timings_b1_ms": timings, "weight_sparsity": pruner.sparsity}
        rows.append(measure(label, best, model, test, features, reps))
        if kind == "distilled":  # the smallest stored form, for the record
            rows.append(measure(label + " (smallest form)", "shrunk, all sparse",
                                candidates["shrunk, all sparse"], test, features, reps))
    return {"rows": rows, "forms": forms}


def write_report(result: dict, cfg: dict, seed: int, wall_s: float, out: str, by_seed: dict | None = None) -> str:
    rows, forms = result["rows"], result["forms"]
    lines = [
        "# Progressive compression on scikit-learn digits",
        "",
        f"`python -m sparsedistill.demo --seed {seed}"
        + (f" --seeds {','.join(str(s) for s in by_seed if s != seed)}" if by_seed and len(by_seed) > 1 else "")
        + f"`; {wall_s:.0f} s wall on "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Test split: held-out 25%, stratified.",
        "",
        "Config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()),
        "",
        markdown_table(rows),
        "",
        "Accuracy on the test split; params: elements of all parameters (a sparse layer stores only its "
        "nonzeros); size: bytes of torch.save(state_dict); latency: median of one forward on CPU.",
        "",
        "## Targets",
        "",
        *targets(rows),
        "",
        "## Inference form of the pruned students (batch-1 latency, ms; the fastest is used above)",
        "",
    ]
    for kind, f in forms.items():
        timings = ", ".join(f"{name} {ms:.4f}" for name, ms in f["timings_b1_ms"].items())
        lines.append(f"- {kind}: weight sparsity {f['weight_sparsity']:.4f}; {timings}; chosen: **{f['chosen']}**")
    if by_seed and len(by_seed) > 1:
        lines += ["", f"## Over seeds (`--seeds {','.join(map(str, by_seed))}`: the same run per seed)", "",
                  *seed_table(by_seed)]
    text = "\n".join(lines) + "\n"
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as fh:
            fh.write(text)
        with open(os.path.splitext(out)[0] + ".csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return text


def main(argv=None) -> int:
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm"]:  # the transformer language model (train/lm_demo.py)
        from .train.lm_demo import main as lm_main
        return lm_main(argv[1:])
    if argv[:1] == ["digits"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="python -m sparsedistill.demo [digits | lm]", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few epochs only (a smoke test, not a result)")
    parser.add_argument("--out", default="demo_digits.md", help="markdown report; the CSV goes next to it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default="", help="more seeds to run the whole pipeline with (e.g. 1,2,3): "
                        "a table of their accuracies is added to the report (about 30 s each)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        extra = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    cfg = dict(CONFIG)
    if args.quick:
        cfg.update(teacher_epochs=4, student_epochs=10, prune_epochs=10)
    start = time.perf_counter()
    result = run(cfg, args.seed, progress=not args.no_progress, reps=100 if args.quick else 300)
    by_seed = {args.seed: result["rows"]}
    for seed in extra:
        if seed not in by_seed:
            print(f"seed {seed} ...", flush=True)
            by_seed[seed] = run(cfg, seed, progress=False, reps=20, log=lambda *a: None)["rows"]
    print(write_report(result, cfg, args.seed, time.perf_counter() - start, args.out, by_seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
