"""A transformer language model compressed end to end on real text (issue 17):

    python -m sparsedistill.demo lm [--quick] [--out lm_demo.md]

1. corpus: the Python standard library's own source (train / validation split by file,
   train.text.stdlib_corpus); a byte-level BPE (Hugging Face tokenizers) trained on the
   training split;
2. teacher: a GPT-style TinyLM trained on it, cached on disk (~/.cache/sparsedistill, keyed by
   its config, steps and a hash of the corpus), so later runs reuse it;
3. students: half the depth, initialised from every other teacher block (DistilBERT's recipe),
   distilled with the fused linear loss (logits never materialised), and the same student
   trained on hard labels only;
4. pruning of the distilled student: one-shot magnitude, Wanda and SparseGPT (prune_model) at
   50/70/90%, each then fine-tuned sparse with distillation (MaskedPruner), and gradual
   magnitude pruning while distilling;
5. inference: sparsify(), greedy decoding with a KV cache (tokens/s at batch 1) and prefill
   (tokens/s at batch 16), checkpoint bytes (save_pretrained, safetensors).

Writes a markdown table (and a CSV and a PNG plot next to it). --quick: tiny sizes, a smoke
test of every stage (the test suite runs it), not a result.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from .._timing import median_ms
from .lm import LMConfig, TinyLM, autocast, native_bf16, perplexity, train_lm
from .loops import progress_bar
from .text import encode, random_windows, stdlib_corpus, train_tokenizer


@dataclass
class DemoConfig:
    corpus_bytes: int = 6 << 20
    # 12 blocks of width 256 with a tied head: the blocks hold 80% of the weights, so that a
    # half-depth student can be 40% smaller, as DistilBERT is (with 8192 x 192 untied embeddings
    # and 6 blocks, halving the depth removed only 23%).
    model: LMConfig = field(default_factory=lambda: LMConfig(
        vocab_size=8192, d_model=256, n_layers=12, n_heads=4, d_ff=1024, max_len=256, tie_embeddings=True))
    seq_len: int = 128
    teacher_steps: int = 1500
    student_steps: int = 400
    finetune_steps: int = 100
    sparsities: tuple = (0.5, 0.7, 0.9)
    all_weights_sparsity: float = 0.85  # the gradual run over every weight, the tied embedding included
    eval_windows: int = 96
    calibration_batches: int = 8
    seed: int = 0
    bf16: bool | None = None  # bfloat16 autocast for training; None: where the CPU computes bf16 natively


QUICK = DemoConfig(corpus_bytes=300_000, model=LMConfig(vocab_size=1024, d_model=64, n_layers=4, n_heads=4, d_ff=128,
                                                        max_len=128, tie_embeddings=True),
                   seq_len=64, teacher_steps=30, student_steps=20, finetune_steps=5, sparsities=(0.5, 0.9),
                   all_weights_sparsity=0.9, eval_windows=8, calibration_batches=2)


class Stages:
    """Prints each stage with the elapsed time and an estimate of what remains (from the
    planned work units of the stages left)."""

    def __init__(self, units: dict):
        self.units, self.start, self.done = dict(units), time.perf_counter(), 0.0

    def __call__(self, name: str):
        elapsed = time.perf_counter() - self.start
        left = sum(self.units.values())
        eta = elapsed / self.done * left if self.done else float("nan")
        print(f"[{elapsed:6.0f} s] {name} (about {eta:.0f} s left)" if self.done else f"[{elapsed:6.0f} s] {name}",
              flush=True)
        self.done += self.units.pop(name, 0.0)


def cache_dir() -> str:
    return os.environ.get("SPARSEDISTILL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "sparsedistill"))


def corpus_and_tokens(cfg: DemoConfig):
    train_text, val_text, test_text = stdlib_corpus(cfg.corpus_bytes)
    key = hashlib.sha256((train_text + "\0" + repr(cfg.model.vocab_size)).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir(), "lm", key)
    os.makedirs(path, exist_ok=True)
    tok_file = os.path.join(path, "tokenizer.json")
    if os.path.exists(tok_file):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(tok_file)
    else:
        tok = train_tokenizer(train_text, cfg.model.vocab_size)
        tok.save(tok_file)
    ids = {"train": encode(tok, train_text), "validation": encode(tok, val_text), "test": encode(tok, test_text)}
    sizes = {"train": len(train_text), "validation": len(val_text), "test": len(test_text)}
    return tok, ids, sizes, path


def teacher_model(cfg: DemoConfig, train_ids, path: str):
    key = hashlib.sha256(repr((asdict(cfg.model), cfg.teacher_steps, cfg.seq_len, cfg.seed, cfg.bf16)).encode())
    file = os.path.join(path, f"teacher-{key.hexdigest()[:16]}.pt")
    torch.manual_seed(cfg.seed)
    teacher = TinyLM(cfg.model)
    if os.path.exists(file):
        teacher.load_state_dict(torch.load(file, weights_only=True))
        return teacher.eval(), True
    train_lm(teacher, train_ids, cfg.teacher_steps, seq_len=cfg.seq_len, lr=3e-3, seed=cfg.seed, bf16=cfg.bf16,
             log_every=max(cfg.teacher_steps // 20, 1), desc="teacher")
    torch.save(teacher.state_dict(), file)
    return teacher.eval(), False


def half_depth_student(teacher: TinyLM) -> TinyLM:
    """Every other teacher block, with the teacher's embeddings, final norm and head."""
    c = teacher.config
    student = TinyLM(replace(c, n_layers=max(c.n_layers // 2, 1)))
    sd = {k: v for k, v in teacher.state_dict().items() if not k.startswith("layers.")}
    for i, j in enumerate(range(0, c.n_layers, 2)[: student.config.n_layers]):
        sd.update({f"layers.{i}.{k}": v for k, v in teacher.layers[j].state_dict().items()})
    student.load_state_dict(sd)
    return student


def fit(student, teacher, train_ids, steps, cfg, *, distill: bool, pruner=None, seed: int = 1, lr: float = 2e-3,
        desc: str = ""):
    """AdamW with a cosine schedule; distill: the fused linear loss from hidden states
    (T=2, alpha=0.5), else next-token cross-entropy. pruner: MaskedPruner stepped each step."""
    import sparsedistill as sd
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed + 1000 * cfg.seed)
    student.train()
    bar = progress_bar(steps, desc, enabled=bool(desc))
    for step in range(steps):
        w = random_windows(train_ids, cfg.seq_len, 16, g)
        x, y = w[:, :-1], w[:, 1:]
        # The blocks under bf16 autocast where enabled; the loss in float32 (the hidden states
        # are float32 after the final LayerNorm, which autocast keeps in float32).
        if distill:
            with autocast(cfg.bf16):
                with torch.no_grad():
                    h_t = teacher.hidden(x)
                h_s = student.hidden(x)
            loss = sd.fused_linear_distillation_loss(h_s.float(), student.lm_head.weight, h_t.float(),
                                                     teacher.lm_head.weight, y, T=2.0, alpha=0.5)
        else:
            with autocast(cfg.bf16):
                logits = student(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        if pruner is not None:
            pruner.step(step)  # prunes on schedule and re-zeroes what the optimiser moved
        bar.update(1)
    bar.close()
    student.eval()
    return student


@torch.no_grad()
def top1(model, ids, seq_len, windows) -> float:
    n = min((ids.numel() - 1) // seq_len, windows)
    idx = torch.arange(n).unsqueeze(1) * seq_len + torch.arange(seq_len + 1)
    w = ids[idx]
    hits = 0
    for i in range(0, n, 16):
        b = w[i:i + 16]
        hits += int((model(b[:, :-1]).argmax(-1) == b[:, 1:]).sum())
    return hits / (n * seq_len)


def linear_weights(model):
    return {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def counts(model) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    return params, params - zeros


@torch.inference_mode()
def speed(model, ids, cfg, reps: int) -> tuple[float, float]:
    """(decode tokens/s at batch 1, prefill tokens/s at batch 16), from medians of `reps`."""
    prompt = ids[: cfg.seq_len // 2].unsqueeze(0)
    new = cfg.seq_len // 2
    model.generate(prompt, 4)
    decode_ms = median_ms(lambda: model.generate(prompt, new), reps, warmup=0)
    batch = ids[: 16 * cfg.seq_len].view(16, cfg.seq_len)
    prefill_ms = median_ms(lambda: model(batch), reps)
    return new / decode_ms * 1e3, batch.numel() / prefill_ms * 1e3


def saved_bytes(model) -> int:
    import sparsedistill as sd
    with tempfile.TemporaryDirectory() as d:
        sd.save_pretrained(model, d)
        return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))


def run(cfg: DemoConfig, out: str, quick: bool) -> list[dict]:
    import sparsedistill as sd
    if cfg.bf16 is None:
        cfg = replace(cfg, bf16=native_bf16())
    torch.manual_seed(cfg.seed)
    n_prune = 3 * len(cfg.sparsities)
    # Work units: roughly seconds on the 2-core machine of the committed run (0.42 s per
    # teacher step under bf16 autocast); the estimate rescales them by the measured pace.
    stages = Stages({"corpus and tokenizer": 3, "teacher": cfg.teacher_steps * 0.42,
                     "distilled student": cfg.student_steps * 0.45, "hard-label student": cfg.student_steps * 0.25,
                     "one-shot pruning + sparse distillation": n_prune * (cfg.finetune_steps * 0.45 + 10),
                     "gradual pruning while distilling": cfg.student_steps * 1.0, "measure": 20 * (5 + n_prune)})
    stages("corpus and tokenizer")
    tok, ids, sizes, path = corpus_and_tokens(cfg)
    train_ids, val_ids, test_ids = ids["train"], ids["validation"], ids["test"]
    print("corpus: " + ", ".join(f"{sizes[k] / 1e6:.2f} MB {k} ({ids[k].numel()} tokens)" for k in ids)
          + f"; vocabulary {tok.get_vocab_size()}", flush=True)
    stages("teacher")
    teacher, cached = teacher_model(cfg, train_ids, path)
    print("teacher: " + ("loaded from the cache" if cached else "trained and cached") + f" ({path})", flush=True)
    stages("distilled student")
    base = half_depth_student(teacher)
    distilled = fit(copy.deepcopy(base), teacher, train_ids, cfg.student_steps, cfg, distill=True, desc="distil")
    stages("hard-label student")
    hard = fit(copy.deepcopy(base), teacher, train_ids, cfg.student_steps, cfg, distill=False, desc="hard labels")
    models = {"teacher": teacher, "student (distilled)": distilled, "student (hard labels)": hard}
    stages("one-shot pruning + sparse distillation")
    g = torch.Generator().manual_seed(5 + 1000 * cfg.seed)
    calib = [random_windows(train_ids, cfg.seq_len, 8, g)[:, :-1] for _ in range(cfg.calibration_batches)]
    pruned_ppl = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        for s in cfg.sparsities:
            m = copy.deepcopy(distilled)
            report = sd.prune_model(m, s, method=method, calibration=calib)
            pruned_ppl[(method, s, False)] = perplexity(m, val_ids, cfg.seq_len, max_windows=cfg.eval_windows)
            weights = linear_weights(m)
            masks = {k: report.masks[k] for k in weights if k in report.masks}
            pruner = sd.MaskedPruner({k: weights[k] for k in masks}, lambda step: 0.0, masks=masks)
            fit(m, teacher, train_ids, cfg.finetune_steps, cfg, distill=True, pruner=pruner, lr=5e-4, seed=7)
            pruner.remove()
            pruned_ppl[(method, s, True)] = perplexity(m, val_ids, cfg.seq_len, max_windows=cfg.eval_windows)
            models[f"{method} {s:.0%} + distill"] = m
    stages("gradual pruning while distilling")
    gradual = copy.deepcopy(base)
    blocks = {k: v for k, v in linear_weights(gradual).items() if k.startswith("layers.")}
    top = max(cfg.sparsities)
    pruner = sd.MaskedPruner(blocks, sd.CubicSparsitySchedule(0.0, top, 0, max(cfg.student_steps * 3 // 4, 1)))
    fit(gradual, teacher, train_ids, cfg.student_steps, cfg, distill=True, pruner=pruner, desc="gradual (blocks)")
    pruner.remove()
    models[f"gradual magnitude {top:.0%} while distilling"] = gradual
    # The embeddings and the LM head hold most weights of a model this small: to reach 10x
    # fewer nonzeros than the teacher they must be pruned too (one global threshold).
    everything = copy.deepcopy(base)
    all_2d = {n: p for n, p in everything.named_parameters() if p.dim() == 2}
    pruner = sd.MaskedPruner(all_2d, sd.CubicSparsitySchedule(0.0, cfg.all_weights_sparsity, 0,
                                                               max(cfg.student_steps * 3 // 4, 1)))
    fit(everything, teacher, train_ids, cfg.student_steps, cfg, distill=True, pruner=pruner, desc="gradual (all)")
    pruner.remove()
    models[f"gradual magnitude {cfg.all_weights_sparsity:.0%} of all weights while distilling"] = everything
    stages("measure")
    rows = []
    reps = 3 if quick else 7
    for name, m in models.items():
        params, nnz = counts(m)
        row = dict(model=name, ppl=perplexity(m, val_ids, cfg.seq_len, max_windows=cfg.eval_windows),
                   test_ppl=perplexity(m, test_ids, cfg.seq_len, max_windows=cfg.eval_windows),
                   top1=top1(m, test_ids, cfg.seq_len, cfg.eval_windows), params=params, nonzeros=nnz)
        # Storage: every Linear that is at least half zeros saved compressed. Speed: the layers
        # sparsify measures faster at one row per call (decoding) are swapped in.
        stored = copy.deepcopy(m)
        sd.sparsify(stored, measure=False, exclude=())
        row["bytes"] = saved_bytes(stored)
        fast = copy.deepcopy(m)
        row["sparse_layers"] = len(sd.sparsify(fast, batch_size=1, seq_len=1, exclude=()).replaced)
        row["decode_tok_s"], row["prefill_tok_s"] = speed(fast, val_ids, cfg, reps)
        rows.append(row)
        print(f"  {name}: ppl {row['ppl']:.2f}, top-1 {row['top1']:.4f}, nonzeros {nnz}, "
              f"decode {row['decode_tok_s']:.0f} tok/s", flush=True)
    write_report(rows, pruned_ppl, cfg, out, quick, sizes, {k: v.numel() for k, v in ids.items()})
    return rows


def machine_and_commit() -> str:
    """'<CPU model>, <cores> cores, git <commit>' (the commit when run from a git checkout)."""
    import platform
    import subprocess
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"{cpu}, {os.cpu_count()} cores, git {commit}"


def write_report(rows, pruned_ppl, cfg, out, quick, sizes, tokens):
    base = os.path.splitext(out)[0]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    by, m = {r["model"]: r for r in rows}, cfg.model
    t, s, h = by["teacher"], by["student (distilled)"], by["student (hard labels)"]
    lines = [f"# Compressing a transformer LM on the Python standard library{' (quick: not a result)' if quick else ''}", "",
             f"Corpus: the stdlib's source split by file, {sizes['train'] / 1e6:.1f} MB train ({tokens['train']} "
             f"tokens), {sizes['validation'] / 1e6:.2f} MB validation ({tokens['validation']}), "
             f"{sizes['test'] / 1e6:.2f} MB test ({tokens['test']}); BPE {m.vocab_size}. Teacher {m.n_layers} x "
             f"{m.d_model} (tied embeddings: {m.tie_embeddings}) trained {cfg.teacher_steps} steps; students "
             f"{m.n_layers // 2} x {m.d_model}, {cfg.student_steps} steps; fine-tuning {cfg.finetune_steps} steps; "
             f"bf16 autocast for training: {cfg.bf16}; seed {cfg.seed}. {machine_and_commit()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, one run. Validation ppl: the first {cfg.eval_windows} windows of "
             f"{cfg.seq_len} tokens of the validation split (also used for the one-shot table below); test ppl and "
             "top-1: the same on the test split, used for nothing else. Decode: greedy with a KV cache, batch 1; "
             "prefill: batch 16; both with the layers sparsify() measured faster at one row per call ('sparse "
             "layers'). Saved MB: safetensors, every Linear at least half zeros compressed.", "",
             "| model | val ppl | test ppl | test top-1 | params | nonzeros | saved MB | sparse layers | decode tok/s "
             "| prefill tok/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ppl']:.2f} | {r['test_ppl']:.2f} | {r['top1']:.4f} | {r['params'] / 1e6:.2f} M | "
                     f"{r['nonzeros'] / 1e6:.2f} M | {r['bytes'] / 1e6:.2f} | {r['sparse_layers']} | {r['decode_tok_s']:.0f} | "
                     f"{r['prefill_tok_s']:.0f} |")
    lines += ["", "## Targets", ""]
    fewer = 1 - s["params"] / t["params"]
    faster = s["decode_tok_s"] / t["decode_tok_s"] - 1
    lines.append(f"- Distilled student: {fewer:.0%} fewer parameters (target >= 40%), decode {faster:+.0%} "
                 f"(target >= +60%), top-1 {s['top1'] / t['top1']:.1%} of the teacher's (target >= 97%), "
                 f"{'better' if s['test_ppl'] < h['test_ppl'] else 'not better'} than the hard-label student "
                 f"(test ppl {s['test_ppl']:.2f} vs {h['test_ppl']:.2f}, top-1 {s['top1']:.4f} vs {h['top1']:.4f}).")
    sparse = [r for r in rows if "+ distill" in r["model"] or "gradual" in r["model"]]
    best = max(sparse, key=lambda r: (t["nonzeros"] / r["nonzeros"] >= 10, r["top1"]))
    lines.append(f"- Pruned and distilled, best with >= 10x fewer nonzeros if any: {best['model']}: "
                 f"{t['nonzeros'] / best['nonzeros']:.1f}x fewer nonzeros than the teacher, top-1 loss "
                 f"{1 - best['top1'] / t['top1']:.1%} (target <= 5% at >= 10x), decode {best['decode_tok_s']:.0f} vs the "
                 f"dense student's {s['decode_tok_s']:.0f} tok/s.")
    for sp in cfg.sparsities:
        mag = pruned_ppl[("magnitude", sp, True)]
        act = min(pruned_ppl[("wanda", sp, True)], pruned_ppl[("sparsegpt", sp, True)])
        lines.append(f"- At {sp:.0%}: best activation-aware + distillation ppl {act:.2f} vs magnitude + "
                     f"distillation {mag:.2f} ({'better' if act < mag else 'not better'}).")
    lines += ["", "## Perplexity after one-shot pruning (before / after sparse distillation)", "",
              "| method | " + " | ".join(f"{sp:.0%}" for sp in cfg.sparsities) + " |",
              "| --- | " + " | ".join("---" for _ in cfg.sparsities) + " |"]
    for method in ("magnitude", "wanda", "sparsegpt"):
        lines.append(f"| {method} | " + " | ".join(
            f"{pruned_ppl[(method, sp, False)]:.1f} / {pruned_ppl[(method, sp, True)]:.1f}" for sp in cfg.sparsities) + " |")
    lines += ["", "One-shot pruning prunes the Linears inside the blocks; the tied embedding and LM head "
              f"({m.vocab_size * m.d_model / 1e6:.1f} M of the student's {s['params'] / 1e6:.1f} M weights here) stay "
              "dense there, and only the last gradual run prunes them too. Saved MB: an nn.Embedding is stored dense "
              "even when pruned, so that run's file is no smaller than the 90% blocks run's."]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in ("magnitude", "wanda", "sparsegpt"):
            for tuned, style in ((False, "--"), (True, "-")):
                ax.plot(cfg.sparsities, [pruned_ppl[(method, sp, tuned)] for sp in cfg.sparsities], style, marker="o",
                        label=f"{method}{' + distillation' if tuned else ''}")
        ax.axhline(s["ppl"], color="gray", lw=0.8, label="dense distilled student")
        ax.set_xlabel("sparsity of the block Linears")
        ax.set_ylabel("validation perplexity")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(base + ".png", dpi=120)
        plt.close(fig)
    except ImportError:
        pass
    print("\n".join(lines))
    print(f"wrote {out}, {base}.csv")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparsedistill.demo lm", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of every stage, not a result")
    p.add_argument("--out", default="lm_demo.md")
    p.add_argument("--seed", type=int, default=0, help="seed of the teacher's and the students' training")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 even where the CPU has native bf16")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = replace(QUICK if args.quick else DemoConfig(), seed=args.seed, bf16=False if args.no_bf16 else None)
    run(cfg, args.out, args.quick)
    return 0
