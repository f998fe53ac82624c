"""Speed of activation-aware one-shot pruning (issue 15), in one run:

1. per-row selection (Wanda's comparison groups): sparsedistill.magnitude_mask(group="row")
   against torch.sort(dim=-1, stable=True) (what Wanda's code does) and torch.topk per row, on
   4096x4096 and 11008x4096, float32 and bfloat16;
2. whole-model Wanda (given the calibration statistics) of a randomly initialised Llama-shaped
   model of about 1B parameters (TinyLlama's shapes), against one pass over the weights' bytes
   (the time to read them once, measured in the same run);
3. SparseGPT on one 4096x4096 layer from a Hessian of 128x2048 calibration tokens, against the
   port of the published step (reference.sparsegpt_published), with the difference of results.

    python -m benchmarks.oneshot_speed [--quick]   # a few minutes on 2 CPU cores
Writes benchmarks/results/<stamp>_oneshot_speed_<device>.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from sparsedistill._timing import median_ms

from . import _common as C


def per_row_selection(device, reps, shapes):
    import sparsedistill as sd
    rows = []
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            w = torch.randn(shape, device=device).to(dtype)
            k = shape[1] // 2
            ours = median_ms(lambda: sd.magnitude_mask(w, 0.5, group="row"), reps, device)

            def by_sort():
                idx = torch.sort(w.abs(), dim=-1, stable=True)[1][:, :k]
                return torch.ones_like(w, dtype=torch.bool).scatter_(1, idx, False)

            def by_topk():
                idx = torch.topk(w.abs(), k, dim=-1, largest=False)[1]
                return torch.ones_like(w, dtype=torch.bool).scatter_(1, idx, False)
            assert torch.equal(sd.magnitude_mask(w, 0.5, group="row"), by_sort())
            t_sort, t_topk = median_ms(by_sort, reps, device), median_ms(by_topk, reps, device)
            rows.append(dict(shape="x".join(map(str, shape)), dtype=str(dtype).split(".")[-1], ours_ms=ours,
                             sort_ms=t_sort, topk_ms=t_topk, vs_sort=t_sort / ours, vs_topk=t_topk / ours))
            print(rows[-1], flush=True)
    return rows


def llama_linears(layers=22, hidden=2048, inter=5632, kv=256, device="cpu", dtype=torch.float32):
    """The Linear weights of a TinyLlama-1.1B-shaped decoder (random), as {name: weight}."""
    g = torch.Generator(device).manual_seed(0)
    out = {}
    for i in range(layers):
        for name, shape in (("q_proj", (hidden, hidden)), ("k_proj", (kv, hidden)), ("v_proj", (kv, hidden)),
                            ("o_proj", (hidden, hidden)), ("gate_proj", (inter, hidden)),
                            ("up_proj", (inter, hidden)), ("down_proj", (hidden, inter))):
            out[f"layers.{i}.{name}"] = torch.randn(shape, generator=g, device=device).to(dtype)
    return out


def whole_model_wanda(device, layers):
    import sparsedistill as sd
    from sparsedistill.prune import LinearStats
    weights = llama_linears(layers=layers, device=device)
    stats = {n: LinearStats(1, torch.rand(w.shape[1], device=device) + 0.1) for n, w in weights.items()}
    nbytes = sum(w.numel() * w.element_size() for w in weights.values())
    params = sum(w.numel() for w in weights.values())
    # One pass: the time to read every weight once (a sum), warm, in this run.
    for _ in range(2):
        t = time.perf_counter()
        for w in weights.values():
            w.sum()
        read_s = time.perf_counter() - t

    from sparsedistill.prune.oneshot import wanda_prune_

    def fused(ws):  # what prune_model(method="wanda") runs: one op per layer, no scores tensor
        return [wanda_prune_(w, stats[n], 0.5) for n, w in ws.items()]  # masks kept, as in its report

    def fused_no_masks(ws):  # prune_model(keep_masks=False), and Wanda's own code: no masks kept
        for n, w in ws.items():
            wanda_prune_(w, stats[n], 0.5, return_mask=False)

    def composed(ws):  # the composable path: a scores tensor, then the per-row selection
        for n, w in ws.items():
            sd.magnitude_prune_(w, 0.5, scores=sd.wanda_scores(w, stats[n]), group="row")

    row = dict(params=params, weight_gb=nbytes / 1e9, read_pass_s=read_s)
    # The clones first: the last prunes `weights` itself.
    for name, prune_all in (("composed", composed), ("wanda", fused), ("wanda_no_masks", fused_no_masks)):
        work = {n: w.clone() for n, w in weights.items()} if name != "wanda_no_masks" else weights
        first = {n: w.clone() for n, w in list(work.items())[:7]}  # warm the kernels on one block
        prune_all(first)
        del first
        t = time.perf_counter()
        kept = prune_all(work)
        row[f"{name}_s"] = time.perf_counter() - t
        del kept
        row[f"{name}_passes"] = row[f"{name}_s"] / read_s
        row[f"{name}_sparsity"] = sum(int((w == 0).sum()) for w in work.values()) / params
        del work
    row["passes"], row["sparsity"] = row["wanda_no_masks_passes"], row["wanda_no_masks_sparsity"]
    print(row, flush=True)
    return row


def sparsegpt_layer(device, tokens, size):
    from sparsedistill.prune import sparsegpt_prune_
    from sparsedistill.prune.reference import sparsegpt_published
    g = torch.Generator(device).manual_seed(0)
    X = torch.randn(tokens, size, generator=g, device=device) * (torch.rand(size, generator=g, device=device) + 0.1)
    t = time.perf_counter()
    H = X.t() @ X
    hessian_s = time.perf_counter() - t
    W = torch.randn(size, size, generator=g, device=device)
    out = {}
    for name, fn in (("ours", lambda: sparsegpt_prune_(W.clone(), H, 0.5)),
                     ("published", lambda: sparsegpt_published(W, H, 0.5, exact=True))):
        fn()
        t = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t
    w = W.clone()
    sparsegpt_prune_(w, H, 0.5)
    ref = sparsegpt_published(W, H, 0.5, exact=True)
    row = dict(layer=f"{size}x{size}", tokens=tokens, hessian_s=hessian_s, ours_s=out["ours"],
               published_s=out["published"], speedup=out["published"] / out["ours"],
               max_abs_diff=float((w - ref).abs().max()), max_abs_w=float(ref.abs().max()))
    print(row, flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="smaller sizes: a plumbing check")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--parts", default="selection,wanda,sparsegpt", help="comma-separated subset to run")
    args = p.parse_args(argv)
    device = C.resolve_device(args.device)
    quick = args.quick
    parts = set(args.parts.split(","))
    shapes = [(512, 4096)] if quick else [(4096, 4096), (11008, 4096)]
    sel = per_row_selection(device, 3 if quick else 5, shapes) if "selection" in parts else []
    model = whole_model_wanda(device, 1 if quick else 22) if "wanda" in parts else None
    sgpt = (sparsegpt_layer(device, 2048 if quick else 128 * 2048, 512 if quick else 4096)
            if "sparsegpt" in parts else None)
    info = dict(machine=C.cpu_model() if device == "cpu" else torch.cuda.get_device_name(),
                torch=torch.__version__, threads=torch.get_num_threads(),
                commit=C.git_commit(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(args.out, f"{stamp}_oneshot_speed_{device}{'_quick' if quick else ''}")
    os.makedirs(args.out, exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(dict(info=info, selection=sel, wanda_model=model, sparsegpt=sgpt), f, indent=1)
    lines = [f"# One-shot pruning speed on {device}", "",
             f"{info['machine']}, torch {info['torch']}, {info['threads']} threads, git {info['commit']}.", "",
             "## Per-row selection (prune 50% of each row)", "",
             "| weight | dtype | ours ms | torch.sort ms | torch.topk ms | vs sort | vs topk |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['shape']} | {r['dtype']} | {r['ours_ms']:.2f} | {r['sort_ms']:.2f} | {r['topk_ms']:.2f} | "
              f"{r['vs_sort']:.1f}x | {r['vs_topk']:.1f}x |" for r in sel]
    if model:
        lines += ["", "## Whole-model Wanda, given the statistics (scores, per-row selection, zeroing)", "",
                  f"{model['params'] / 1e9:.2f} B parameters in the Linears ({model['weight_gb']:.2f} GB float32); "
                  f"one read pass over the weights {model['read_pass_s']:.3f} s.", "",
                  f"- `wanda_prune_(return_mask=False)` (what `prune_model(method=\"wanda\", keep_masks=False)` "
                  f"runs: one op per layer ranks by |W| times the column norms and zeroes as it goes, no mask "
                  f"written): {model['wanda_no_masks_s']:.2f} s = **{model['wanda_no_masks_passes']:.2f} passes** "
                  f"(target <= 3); sparsity {model['wanda_no_masks_sparsity']:.3f}.",
                  f"- `wanda_prune_` keeping every keep-mask (as `prune_model`'s report does; "
                  f"{model['params'] / 1e9:.2f} GB of fresh bools, whose first touch is slow on a VM): "
                  f"{model['wanda_s']:.2f} s = {model['wanda_passes']:.1f} passes.",
                  f"- composed (`wanda_scores`, then `magnitude_prune_(scores=..., group=\"row\")`): "
                  f"{model['composed_s']:.2f} s = {model['composed_passes']:.1f} passes.", ""]
    if sgpt:
        lines += ["## SparseGPT, one layer", "",
                  f"{sgpt['layer']}, Hessian of {sgpt['tokens']} tokens (X^T X: {sgpt['hessian_s']:.2f} s, "
                  f"the same for both): ours {sgpt['ours_s']:.2f} s, published step (torch port) "
                  f"{sgpt['published_s']:.2f} s: **{sgpt['speedup']:.2f}x**; largest difference of the "
                  f"pruned weights {sgpt['max_abs_diff']:.2e} (weights up to {sgpt['max_abs_w']:.2f}).", ""]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {base}.md, .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
