"""Quality of one-shot pruning on a language model trained here on real text: validation
perplexity of a TinyLM (sparsedistill.train.lm) trained on the Python standard library's source
(BPE by Hugging Face tokenizers), pruned at 50% and 70% unstructured and at 2:4 by magnitude (per
layer and global), Wanda and SparseGPT, each from the same dense checkpoint.

    python -m benchmarks.prune_quality            # ~5 minutes on 2 CPU cores
    python -m benchmarks.prune_quality --steps 60 --tiny   # plumbing check in seconds
    python -m benchmarks.prune_quality --demo-teacher      # the LM demo's 12 x 256 teacher (issue 17),
                                                           # from its cache (trained there if missing)

Writes benchmarks/results/<stamp>_prune_quality.{md,json} (and a plot with matplotlib).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from . import _common as C
from .outlier_features import activation_spread, spread_table, with_outlier_features

CASES = [("50%", 0.5, None), ("70%", 0.7, None), ("2:4", None, (2, 4))]
# label -> (prune_model's method, group): each method at its default comparison group, and
# magnitude per row / Wanda per layer, which separate the activation weighting from the group.
METHODS = {"magnitude": ("magnitude", None), "magnitude_row": ("magnitude", "row"),
           "global_magnitude": ("global_magnitude", None), "wanda": ("wanda", None),
           "wanda_layer": ("wanda", "tensor"), "sparsegpt": ("sparsegpt", None)}
TITLES = {"magnitude": "magnitude (per layer)", "magnitude_row": "magnitude (per row)",
          "global_magnitude": "magnitude (global)", "wanda": "Wanda (per row)",
          "wanda_layer": "Wanda (per layer)", "sparsegpt": "SparseGPT"}
# Outlier features put into the trained model (benchmarks.outlier_features): 4 of the model's
# channels 16x larger, fixed before any run of this table; LLaMA-class models show a handful
# of dimensions 20-100x the median (LLM.int8(), Wanda's motivation).
OUTLIER_FEATURES, OUTLIER_SCALE = 4, 16.0


def main(argv=None) -> int:
    from sparsedistill.prune import prune_model
    from sparsedistill.train.lm import LMConfig, TinyLM, native_bf16, perplexity, train_lm
    from sparsedistill.train.text import encode, random_windows, stdlib_corpus, train_tokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--tiny", action="store_true", help="a 2-layer model on 1 MB of text")
    p.add_argument("--demo-teacher", action="store_true",
                   help="prune the teacher of `python -m sparsedistill.demo lm` (its corpus, tokenizer and cache)")
    p.add_argument("--calib", type=int, default=64, help="calibration sequences (of --seq tokens)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if args.demo_teacher:
        from sparsedistill.train import lm_demo
        demo = lm_demo.DemoConfig(bf16=native_bf16())
        tok, ids, _, cache = lm_demo.corpus_and_tokens(demo)
        train_ids, val_ids = ids["train"], ids["validation"]
        model, cached = lm_demo.teacher_model(demo, train_ids, cache)
        cfg, args.steps, args.seq = demo.model, demo.teacher_steps, demo.seq_len
        how = "loaded from its cache" if cached else "trained now"
        print(f"the LM demo's teacher ({'from its cache' if cached else 'trained now'})", flush=True)
    else:
        train_text, val_text, _ = stdlib_corpus((1 if args.tiny else 8) << 20)
        tok = train_tokenizer(train_text, vocab_size=2048 if args.tiny else 4096)
        train_ids, val_ids = encode(tok, train_text), encode(tok, val_text)
        cfg = LMConfig(vocab_size=tok.get_vocab_size(), max_len=args.seq,
                       **(dict(d_model=64, n_layers=2, n_heads=4, d_ff=256) if args.tiny else {}))
        model = TinyLM(cfg)
        train_lm(model, train_ids, args.steps, seq_len=args.seq, log_every=max(1, args.steps // 10))
    print(f"corpus: {train_ids.numel()} training tokens, {val_ids.numel()} validation tokens; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    train_s = time.perf_counter() - t0
    if not args.demo_teacher:
        how = f"trained in {train_s:.0f} s"
    g = torch.Generator().manual_seed(1)
    calib = [random_windows(train_ids, args.seq - 1, 8, g) for _ in range(max(1, args.calib // 8))]
    dense_ppl = perplexity(model, val_ids, args.seq)
    print(f"dense validation perplexity {dense_ppl:.2f} ({how})", flush=True)
    spread = activation_spread(model, calib)

    def prune_and_measure(dense, case, sparsity, pattern, method, dense_ppl):
        m = copy.deepcopy(dense)
        t = time.perf_counter()
        how, group = METHODS[method]
        report = prune_model(m, sparsity, method=how, calibration=calib, pattern=pattern, group=group)
        secs = time.perf_counter() - t
        ppl = perplexity(m, val_ids, args.seq)
        errs = [r.error for r in report.layers if r.error is not None]
        print(f"{case:>4} {method:>16}: ppl {ppl:8.2f} (+{ppl - dense_ppl:.2f}), "
              f"sparsity {report.sparsity:.3f}, {secs:.1f} s", flush=True)
        return dict(case=case, method=method, ppl=ppl, increase=ppl - dense_ppl, sparsity=report.sparsity,
                    prune_s=secs, mean_rel_error=sum(errs) / len(errs) if errs else None)

    rows = [prune_and_measure(model, case, sparsity, pattern, method, dense_ppl)
            for case, sparsity, pattern in CASES for method in METHODS
            if pattern is None or method in ("magnitude", "wanda", "sparsegpt")]
    # The same model with outlier features put in (an exact reparametrisation), at 50%.
    outlier_model, channels = with_outlier_features(model, OUTLIER_FEATURES, OUTLIER_SCALE)
    outlier_dense = perplexity(outlier_model, val_ids, args.seq)
    outlier_spread = activation_spread(outlier_model, calib)
    print(f"with outlier features {channels} x {OUTLIER_SCALE:g}: dense ppl {outlier_dense:.2f}", flush=True)
    outlier_rows = [prune_and_measure(outlier_model, "50%", 0.5, None, method, outlier_dense)
                    for method in ("magnitude", "wanda", "sparsegpt")]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(args.out, exist_ok=True)
    meta = dict(machine=C.cpu_model(), torch=torch.__version__, threads=torch.get_num_threads(),
                commit=C.git_commit(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))[:12],
                steps=args.steps, config=cfg.__dict__, dense_ppl=dense_ppl,
                calibration=f"{len(calib) * 8} sequences of {args.seq - 1} tokens from the training split",
                train_tokens=train_ids.numel(), val_tokens=val_ids.numel(), train_s=train_s)
    suffix = "_demo_teacher" if args.demo_teacher else "_tiny" if args.tiny else ""
    base = os.path.join(args.out, f"{stamp}_prune_quality{suffix}")
    with open(base + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows, activation_spread=spread, outlier_features=dict(
            channels=channels, scale=OUTLIER_SCALE, dense_ppl=outlier_dense, activation_spread=outlier_spread,
            rows=outlier_rows)), f, indent=1)
    by = {(r["case"], r["method"]): r for r in rows}
    lines = ["# One-shot pruning quality: TinyLM on the Python standard library's source",
             "",
             f"{meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, git {meta['commit']}. "
             f"Model {cfg.n_layers} layers x d {cfg.d_model} (ff {cfg.d_ff}, vocab {cfg.vocab_size}, "
             f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters), trained {args.steps} steps "
             f"of 16 x {args.seq} tokens"
             + (" (the LM demo's cached teacher)" if args.demo_teacher else f" ({train_s:.0f} s)")
             + f". Calibration: {meta['calibration']}. "
             "Pruned: every Linear of the blocks (not the LM head, not the embeddings).",
             "",
             f"Dense validation perplexity: **{dense_ppl:.2f}** ({val_ids.numel()} tokens of held-out files).",
             "",
             "| sparsity | " + " | ".join(TITLES.values()) + " | Wanda / magnitude increase | SparseGPT <= Wanda |",
             "| --- |" + " --- |" * (len(TITLES) + 2)]
    for case, _, _ in CASES:
        cell = lambda m: (f"{by[(case, m)]['ppl']:.2f} ({by[(case, m)]['increase']:+.2f})"  # noqa: E731
                          if (case, m) in by else "n/a")
        mag_up = by[(case, "magnitude")]["increase"]
        ratio = f"{by[(case, 'wanda')]['increase'] / mag_up:.2f}" if mag_up > 0 else "n/a"
        ok = by[(case, "sparsegpt")]["ppl"] <= by[(case, "wanda")]["ppl"]
        lines.append(f"| {case} | " + " | ".join(cell(m) for m in TITLES) + f" | {ratio} | {'yes' if ok else 'no'} |")
    lines += ["", "Targets (issue 15): at 50%, Wanda's increase (per row, the paper's) at most half of magnitude's "
              "(per layer, the paper's baseline): ratio <= 0.5; SparseGPT no worse than Wanda.", "",
              "Mean relative reconstruction error of the pruned layers on the calibration inputs "
              "(||(W - W')X||^2 / ||WX||^2, from prune_model's report):", "",
              "| sparsity | " + " | ".join(TITLES.values()) + " |", "| --- |" + " --- |" * len(TITLES)]
    for case, _, _ in CASES:
        errs = [by[(case, m)]["mean_rel_error"] if (case, m) in by else None for m in METHODS]
        lines.append(f"| {case} | " + " | ".join("n/a" if e is None else f"{e:.4f}" for e in errs) + " |")
    lines += ["", "## Why: the spread of the activations", "",
              "Wanda ranks |W_ij| * ||X_j||: where the input features' norms are alike it ranks as magnitude "
              "does. Per projection over the blocks, from the dense model's calibration inputs (at 50%):", "",
              *spread_table(spread), "",
              f"The same model with outlier features put in: channels {channels} of every block's two "
              f"LayerNorms x {OUTLIER_SCALE:g}, the input columns of q/k/v and up divided by {OUTLIER_SCALE:g} "
              f"(the same function: dense perplexity {outlier_dense:.2f} against {dense_ppl:.2f}). "
              "Wanda's and SparseGPT's masks do not depend on such a rescaling (their perplexities should "
              "repeat the table's); magnitude's do: it now prunes those columns of q/k/v and up whole, which "
              "costs what those channels carry in this model:", "",
              *spread_table(outlier_spread), "",
              "| 50% | magnitude (per layer) | Wanda | SparseGPT | Wanda / magnitude increase |",
              "| --- | --- | --- | --- | --- |"]
    ob = {r["method"]: r for r in outlier_rows}
    mag_up = ob["magnitude"]["increase"]
    ratio = f"{ob['wanda']['increase'] / mag_up:.2f}" if mag_up > 0 else "n/a"
    lines += ["| with outlier features | " + " | ".join(f"{ob[m]['ppl']:.2f} ({ob[m]['increase']:+.2f})"
                                                       for m in ("magnitude", "wanda", "sparsegpt"))
              + f" | {ratio} |", ""]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        cases = [c for c, _, _ in CASES]
        for i, method in enumerate(METHODS):
            xs = [j + i * 0.14 for j, c in enumerate(cases) if (c, method) in by]
            ys = [by[(c, method)]["ppl"] for c in cases if (c, method) in by]
            ax.bar(xs, ys, width=0.14, label=TITLES[method])
        ax.axhline(dense_ppl, color="k", ls="--", label="dense")
        ax.set_xticks([j + 0.35 for j in range(len(cases))], cases)
        ax.set_yscale("log")
        ax.set_ylabel("validation perplexity")
        ax.legend()
        fig.tight_layout()
        fig.savefig(base + ".png", dpi=120)
    except ImportError:
        print("plot skipped: matplotlib is not installed")
    print(f"wrote {base}.md, .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
