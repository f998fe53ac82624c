"""Benchmark: exact magnitude pruning (sparsedistill) against torch.nn.utils.prune and kthvalue.

    python benchmarks/bench_prune.py                 # cuda if available, else cpu
    python benchmarks/bench_prune.py --quick         # small shapes, smoke run
    python benchmarks/bench_prune.py --device cpu --amounts 0.9 --csv benchmarks/results/prune.csv

Kernels (float32 randn weights, k = round(amount * numel); restoring weights is not timed):
  prune_tensor  per weight: torch_prune (prune.l1_unstructured on an nn.Linear + prune.remove),
                kthvalue (a = w.abs(); w.mul_(a > a.flatten().kthvalue(k).values)),
                sparsedistill (sparsedistill.magnitude_prune_(w, amount))
  prune_global  a 100-tensor model of 2**26 (67.1M) parameters: torch_global (global_unstructured
                + prune.remove on each), sparsedistill (global_magnitude_prune_: masks and zeroing in one pass)
  select_100m   CUDA only, the keep-mask of 10000x10000: topk / sort thresholds (a > thr) vs
                sparsedistill.magnitude_mask
Peak memory: what one step needs beyond its inputs, as in bench_distill.py (CPU: each measurement
in a fresh process). The check allows sparsedistill's mask to differ from torch's only where |w|
equals the threshold (a tie, where either choice is exact).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import sys

import torch
from torch.nn.utils import prune

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__:  # python -m benchmarks (the suite) imports this as benchmarks.bench_prune
    from . import _common as C
else:  # python benchmarks/bench_prune.py
    sys.path.insert(0, HERE)
    import _common as C  # noqa: E402

try:
    import sparsedistill as sd
except ImportError:  # an in-place build next to benchmarks/
    sys.path.insert(1, os.path.dirname(HERE))
    import sparsedistill as sd
from sparsedistill.prune import reference as PR  # noqa: E402

KERNELS = {"prune_tensor": ["torch_prune", "kthvalue", "torch_compile", "reference", "sparsedistill"],
           "prune_global": ["torch_global", "reference", "sparsedistill"],
           "select_100m": ["topk", "sort", "reference", "sparsedistill"]}
STOCK = ["torch_prune", "kthvalue", "torch_global", "topk", "sort"]
OTHERS = ["torch_compile", "reference", "sparsedistill"]  # torch.compile of kthvalue; the pure-
# PyTorch reference (sparsedistill._prune_reference.select_smallest, a stable sort); ours
SHAPES, QUICK_SHAPES = "4096x4096,16384x4096", "512x512"
SELECT_SHAPE, QUICK_SELECT_SHAPE = (10000, 10000), (1000, 1000)
DEFAULT_REPS = {"cpu": (1, 5), "cuda": (5, 20)}  # (warmup, reps)
BIG_CPU_REPS = (1, 3)  # >= 2**26 elements on CPU, where torch's topk alone takes ~13 s a call
QUICK_REPS = (1, 5)
CSV_FIELDS = ["kernel", "provider", "shape", "dtype", "device", "device_name", "p50_ms", "p20_ms",
              "p80_ms", "peak_mib", *[f"speedup_{b}" for b in STOCK], "amount", "numel", "check",
              "torch_version", "sparsedistill_backend", "timestamp"]


def model_shapes(quick: bool) -> list[tuple[int, int]]:
    if quick:  # 10 tensors, 114688 parameters
        return [(128, 128), (64, 128), (128, 64), (256, 32)] * 2 + [(128, 128)] * 2
    shapes = [(1024, 1024)] * 28 + [(512, 1024), (1024, 512), (2048, 256)] * 24  # 100, 2**26
    random.Random(0).shuffle(shapes)
    return shapes


def make_weights(shapes, device) -> list[torch.Tensor]:
    g = torch.Generator(device).manual_seed(0)
    return [torch.randn(s, device=device, generator=g) for s in shapes]


def linears(ws):
    """nn.Linear modules holding the given weights (no init: skip_init)."""
    mods = [torch.nn.utils.skip_init(torch.nn.Linear, w.shape[1], w.shape[0], bias=False,
                                     device=w.device) for w in ws]
    for m, w in zip(mods, ws):
        m.weight = torch.nn.Parameter(w)
    return mods


def make_step(provider, kernel, ws, amount):
    """(setup, step): setup() restores the weights (untimed), step() prunes them."""
    saved, w = [t.clone() for t in ws], ws[0]
    k = int(round(amount * sum(t.numel() for t in ws)))
    restore = lambda: [t.copy_(s) for t, s in zip(ws, saved)]  # noqa: E731
    if provider in ("torch_prune", "torch_global"):
        mods = linears(ws)
        ws.clear()  # the modules hold the weights now

        def setup():  # a fresh Parameter per rep: prune.remove replaces the weight's data
            for m, s in zip(mods, saved):
                m.weight = torch.nn.Parameter(s.clone())

        def step():
            if provider == "torch_prune":
                prune.l1_unstructured(mods[0], "weight", amount)
            else:
                prune.global_unstructured([(m, "weight") for m in mods],
                                          pruning_method=prune.L1Unstructured, amount=amount)
            for m in mods:
                prune.remove(m, "weight")
        return setup, step
    if provider == "kthvalue":
        def step():
            kth_prune(w, k)
    elif provider == "torch_compile":
        compiled = torch.compile(kth_prune, dynamic=False)
        step = lambda: compiled(w, k)  # noqa: E731
    elif provider == "reference":
        def step():
            keeps = PR.select_smallest(ws, None, k, True)
            if kernel == "select_100m":
                return keeps[0]
            for t, m in zip(ws, keeps):
                t.mul_(m)
    elif provider == "topk":
        def step():
            a = w.abs()
            return a > a.flatten().topk(k, largest=False, sorted=False).values.max()
    elif provider == "sort":
        def step():
            a = w.abs()
            return a > a.flatten().sort().values[k - 1]
    elif kernel == "prune_tensor":
        step = lambda: sd.magnitude_prune_(w, amount)  # noqa: E731
    elif kernel == "prune_global":
        step = lambda: sd.global_magnitude_prune_(ws, amount)  # noqa: E731
    else:
        step = lambda: sd.magnitude_mask(w, amount)  # noqa: E731
    return restore, step


def kth_prune(w, k):
    a = w.abs()
    w.mul_(a > a.flatten().kthvalue(k).values)


def measure(provider, kernel, shapes, amount, device, warmup, reps, flush=False) -> dict:
    """Times (each rep after its own untimed setup) and peak extra memory of one step.
    flush: evict the caches after each setup (which leaves the weights cached)."""
    try:
        setup, step = make_step(provider, kernel, make_weights(shapes, device), amount)
        for _ in range(max(warmup, 1) if provider == "torch_compile" else warmup):
            setup()
            step()
        times = []
        for _ in range(reps):
            setup()
            if flush:
                C.flush_cache(device)
            times += C.time_steps(step, device, 1)
        peak, method = C.peak_extra_bytes(step, device, repeats=2 if device == "cpu" else 1,
                                          reset=setup)
        return {**C.summarize_ms(times), "peak_bytes": peak, "peak_method": method}
    except Exception as e:  # OOM and the like: report and go on
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]}
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def check_case(kernel, shapes, amount, device) -> str:
    """sparsedistill prunes exactly k, keeps the largest |w|, and matches torch.nn.utils.prune."""
    ws = make_weights(shapes, device)
    k, zeroed = int(round(amount * sum(w.numel() for w in ws))), True
    if kernel == "prune_global":
        keeps = sd.global_magnitude_masks(ws, amount)
    elif kernel == "prune_tensor":
        out = ws[0].clone()
        keeps = [sd.magnitude_prune_(out, amount)]
        zeroed = torch.equal(out, ws[0] * keeps[0])
    else:
        keeps = [sd.magnitude_mask(ws[0], amount)]
    mods = linears([w.clone() for w in ws])
    if kernel == "prune_global":
        prune.global_unstructured([(m, "weight") for m in mods], prune.L1Unstructured,
                                  amount=amount)
    else:
        prune.l1_unstructured(mods[0], "weight", amount)
    refs, a = [m.weight_mask.bool() for m in mods], [w.abs() for w in ws]
    pruned = sum(int((~m).sum()) for m in keeps)
    lo_kept = min((x[m].min().item() for x, m in zip(a, keeps) if m.any()), default=float("inf"))
    hi_pruned = max((x[~m].max().item() for x, m in zip(a, keeps) if not m.all()), default=-1.0)
    diff = sum(int((m != r).sum()) for m, r in zip(keeps, refs))
    off_tie = sum(int(((m != r) & (x != hi_pruned)).sum()) for m, r, x in zip(keeps, refs, a))
    errors = [f"pruned {pruned} != k {k}"] * (pruned != k)
    errors += [f"kept {lo_kept:g} < pruned {hi_pruned:g}"] * (lo_kept < hi_pruned)
    errors += [f"{off_tie} mask elements differ from torch's"] * (off_tie > 0)
    errors += ["pruned weights not zeroed"] * (not zeroed)
    if errors:
        return "mismatch: " + "; ".join(errors)
    return "ok" if diff == 0 else f"ok ({diff} differ from torch's, all tied at the threshold)"


def derive(rows: list[dict]) -> None:
    """Speedups vs each stock provider of the same case, memory in MiB and in weight sizes."""
    p50 = {(r["kernel"], r["provider"], r["shape"], r["amount"]): r.get("p50_ms") for r in rows}
    for r in (r for r in rows if "error" not in r):
        for b in STOCK:
            base = p50.get((r["kernel"], b, r["shape"], r["amount"]))
            r[f"speedup_{b}"] = base / r["p50_ms"] if base else None
        r["peak_mib"] = r["peak_bytes"] / C.MiB
        r["peak_x_weights"] = r["peak_bytes"] / (4 * r["numel"])  # float32


def results_table(rows: list[dict], kernel: str) -> str:
    stock = [b for b in KERNELS[kernel] if b in STOCK]
    keys = ("provider", "shape", "amount", "device")
    cols = [(k, k) for k in keys] + [("p50 ms", "p50"), ("p20 ms", "p20"), ("p80 ms", "p80")]
    cols += [(f"vs {b}", b) for b in stock] + [("peak extra MiB", "mib"), ("peak / weights", "xw")]
    out = []
    for r in (r for r in rows if r["kernel"] == kernel):
        f = {k: r[k] for k in keys}
        if "error" in r:
            f["p50"] = "failed: " + r["error"].replace("|", "/")
        else:
            f.update(p50=C.fmt(r["p50_ms"]), p20=C.fmt(r["p20_ms"]), p80=C.fmt(r["p80_ms"]),
                     mib=C.fmt(r["peak_mib"], ".1f"), xw=C.fmt(r["peak_x_weights"]),
                     **{b: C.fmt(r[f"speedup_{b}"], ".2fx") for b in stock})
        out.append(f)
    return C.markdown_table(out, cols)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--shapes", help=f"per-tensor shapes (default {SHAPES}; --quick {QUICK_SHAPES})")
    p.add_argument("--amounts", default="0.5,0.9", help="fractions to prune, in (0, 1]")
    p.add_argument("--providers", default=",".join(STOCK + ["sparsedistill"]))
    p.add_argument("--warmup", type=int, help="default: 1 (CUDA 5)")
    p.add_argument("--reps", type=int, help="default: CPU 5 (3 from 2**26 elements), CUDA 20")
    p.add_argument("--quick", action="store_true", help="small shapes, a 10-tensor model")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check")
    p.add_argument("--csv", help="append one row per measurement to this CSV")
    p.add_argument("--json", help="write everything (machine, checks, results) as JSON")
    p.add_argument("--markdown", help="write the tables as markdown")
    args, unknown = p.parse_known_args(argv)
    if unknown:  # a caller may hand every benchmark the same arguments
        print(f"bench_prune.py: ignoring {' '.join(unknown)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.resolve_device(args.device)
    amounts = [float(a) for a in args.amounts.split(",")]
    providers = [p.strip() for p in args.providers.split(",")]
    if not all(0 < a <= 1 for a in amounts) or not set(providers) <= set(STOCK + OTHERS):
        raise SystemExit(f"--amounts: fractions in (0, 1]; --providers from {STOCK + OTHERS}")
    shapes = [tuple(int(x) for x in s.lower().split("x"))
              for s in (args.shapes or (QUICK_SHAPES if args.quick else SHAPES)).split(",")]
    model = model_shapes(args.quick)
    cases = [("prune_tensor", f"{n}x{m}", [(n, m)]) for n, m in shapes]
    cases.append(("prune_global", f"{len(model)} tensors", model))
    if device == "cuda":
        sel = QUICK_SELECT_SHAPE if args.quick else SELECT_SHAPE
        cases.append(("select_100m", f"{sel[0]}x{sel[1]}", [sel]))

    machine, ops = C.machine_info(device), sd.backend_info()["ops"]["select_smallest"]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    header = [f"machine: {machine['detail']}",
              f"torch {machine['torch_version']}, sparsedistill select_smallest: {ops}",
              f"global model: {len(model)} tensors, {sum(a * b for a, b in model)} parameters"]
    print("\n".join(header), flush=True)

    rows, checks = [], []
    for kernel, shape, tshapes in cases:
        numel = sum(a * b for a, b in tshapes)
        warmup, reps = (QUICK_REPS if args.quick else BIG_CPU_REPS
                        if device == "cpu" and numel >= 2 ** 26 else DEFAULT_REPS[device])
        warmup = warmup if args.warmup is None else args.warmup
        reps = reps if args.reps is None else max(args.reps, 1)
        for amount in amounts:
            info = dict(kernel=kernel, shape=shape, dtype="float32", amount=amount, numel=numel,
                        device=device, check="")
            if not args.no_check and "sparsedistill" in providers:
                info["check"] = check_case(kernel, tshapes, amount, device)
                checks.append({**info, "k": int(round(amount * numel))})
                print(f"  check {kernel} {shape} amount {amount}: {info['check']}", flush=True)
            for p in [p for p in KERNELS[kernel] if p in providers]:
                call = (p, kernel, tshapes, amount, device, warmup, reps)
                try:
                    r = C.run_isolated(measure, *call) if device == "cpu" else measure(*call)
                except Exception as e:  # the child died
                    r = {"error": f"child process failed: {type(e).__name__}"}
                r.update(info, provider=p, warmup=warmup)
                r["check"] = info["check"] if p == "sparsedistill" else ""
                print(f"  {p:<14} {kernel} {shape} amount {amount}: "
                      + (r["error"] if "error" in r else f"p50 {r['p50_ms']:.2f} ms"), flush=True)
                rows.append(r)
    derive(rows)
    for r in rows:
        r.update(device_name=machine["device_name"], torch_version=machine["torch_version"],
                 sparsedistill_backend=ops.get(device), timestamp=stamp)

    text = ""
    if checks:
        text += "\ncorrectness of sparsedistill (exact k, kept >= pruned, torch's mask)\n\n"
        text += C.markdown_table(checks, [(h, h) for h in ("kernel", "shape", "amount", "k",
                                                           "check")]) + "\n"
    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        text += f"\n{kernel} (float32)\n\n" + results_table(rows, kernel) + "\n"
    print(text)
    text = "\n".join(header) + "\n" + text
    if args.csv:
        path = C.csv_path(args.csv, CSV_FIELDS, "prune")
        C.append_csv(path, [{k: round(r[k], 4) if isinstance(r.get(k), float) else r.get(k)
                             for k in CSV_FIELDS} for r in rows if "error" not in r], CSV_FIELDS)
        print(f"csv: {path}")
    if args.json:
        C.write_json(args.json, {"machine": machine, "device": device, "select_smallest": ops,
                                 "timestamp": stamp, "correctness": checks, "results": rows})
    if args.markdown:
        C.write_text(args.markdown, text)
    return 0


# ----------------------------------------------------------------------------- the suite
# python -m benchmarks calls suite_jobs(); rows come back in the common schema (_common.ROW_FIELDS).
SUITE = {  # per-tensor shapes, amounts, quick model?, (warmup, reps) (None: by device and size)
    "tiny": ("128x128", "0.5", True, (1, 2)),
    "quick": ("512x512,2048x2048", "0.9", True, QUICK_REPS),
    "full": ("1024x1024,4096x4096,16384x4096", "0.5,0.9", False, None),
}
SUITE_STOCK = {"prune_tensor": "torch_prune", "prune_global": "torch_global", "select_100m": "topk"}


def suite_jobs(ctx):
    """(skipped rows, [(label, job)]): each job returns a list of rows."""
    device = ctx.device
    shapes, amounts, quick_model, fixed_reps = SUITE[ctx.mode]
    model = model_shapes(quick_model)
    cases = [("prune_tensor", s, [tuple(int(x) for x in s.split("x"))]) for s in shapes.split(",")]
    cases.append(("prune_global", f"{len(model)} tensors", model))
    skipped = []
    if device == "cuda":
        sel = SELECT_SHAPE if ctx.mode == "full" else QUICK_SELECT_SHAPE
        cases.append(("select_100m", f"{sel[0]}x{sel[1]}", [sel]))
    else:
        skipped.append(C.skipped_row("prune", "select_100m", "*", device,
                                     "the keep-mask case (topk / sort) runs on CUDA only", "topk"))
    backend = sd.backend_info()["ops"]["select_smallest"][device]
    notes = {"sparsedistill": backend, "reference": "sparsedistill._prune_reference (sort)",
             "torch_compile": "torch.compile of kthvalue", "torch_global": "global_unstructured"}
    jobs = []
    for kernel, shape, tshapes in cases:
        numel = sum(a * b for a, b in tshapes)
        warmup, reps = fixed_reps or (BIG_CPU_REPS if device == "cpu" and numel >= 2 ** 26
                                      else DEFAULT_REPS[device])
        nbytes = numel * 4 + (numel if kernel == "select_100m" else numel * 4)
        for amount in (float(a) for a in amounts.split(",")):
            check = {}

            def check_job(kernel=kernel, tshapes=tshapes, amount=amount, shape=shape, check=check):
                check["status"] = check_case(kernel, tshapes, amount, device)
                ctx.checks.append({"area": "prune", "kernel": kernel, "shape": shape,
                                   "amount": amount, "status": check["status"]})
                return []
            jobs.append((f"prune check {kernel} {shape} {amount}", check_job))
            for p in [p for p in KERNELS[kernel] if ctx.wants(p)]:
                def job(p=p, kernel=kernel, tshapes=tshapes, amount=amount, shape=shape,
                        numel=numel, warmup=warmup, reps=reps, nbytes=nbytes, check=check):
                    r = ctx.call(measure, p, kernel, tshapes, amount, device, warmup, reps,
                                 ctx.mode != "tiny")  # evict the caches between repeats
                    return [C.suite_row("prune", kernel, p, shape, device=device, dtype="float32",
                                        size=numel, sparsity=amount, result=r, nbytes=nbytes,
                                        stock=SUITE_STOCK[kernel], note=notes.get(p, ""),
                                        check=check.get("status", "") if p == "sparsedistill" else "")]
                jobs.append((f"prune {p} {kernel} {shape} {amount}", job))
    return skipped, jobs


if __name__ == "__main__":
    sys.exit(main())
