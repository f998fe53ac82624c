"""The benchmark suite: every op against stock PyTorch, torch.compile and the peers, in one run.

    python -m benchmarks                      # --quick (default): small sizes, a few minutes on CPU
    python -m benchmarks --full               # the sizes of the committed results
    python -m benchmarks --only sparse_linear --device cpu
    python -m benchmarks --tiny --no-plots    # plumbing only (seconds): CI and tests

Areas: distill (bench_distill.py), prune (bench_prune.py), sparse_linear (bench_sparse_linear.py).
Each area's suite_jobs() plans its measurements; this runner measures the device's copy
bandwidth once, runs the jobs under a progress bar, derives the speedups over the stock
provider (and over torch.compile of it) measured in the same run, GB/s, GFLOP/s and the
fraction of copy bandwidth, prints one table per area, and writes
<out>/<timestamp>_<device>_<mode>.{csv,json,md} and one PNG plot per area next to them
(when matplotlib is installed). Missing peers are reported as skipped rows, not failures.
The exit status is 1 when a sparsedistill provider failed or a correctness check did not pass.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import os
import time

import torch

from . import AREAS
from . import _common as C

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OURS = ("sparsedistill", "reference")
STOCK_NOTE = {"distill": "torch_eager (F.kl_div + F.cross_entropy)",
              "fused_linear": "torch_eager (F.linear both models + F.kl_div + F.cross_entropy)",
              "prune": "torch.nn.utils.prune (l1_unstructured / global_unstructured + remove)",
              "sparse_linear": "dense F.linear with the pruned weight"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small sizes, few repeats (the default; under 5 minutes on 2 CPU cores)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the sizes of the committed results (tens of minutes on 2 CPU cores)")
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                      help="tiny sizes, no torch.compile: checks the plumbing in seconds")
    p.add_argument("--only", help=f"comma-separated areas from {', '.join(AREAS)}")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="default: cuda when available")
    p.add_argument("--providers", help="comma-separated providers to run (default: all)")
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="folder of the CSV, JSON, markdown and plots (default benchmarks/results)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="start no job after this many seconds; the rest are reported as skipped "
                        "and the results are still written (scripts/gpu_check.sh uses it)")
    p.add_argument("--no-isolate", action="store_true",
                   help="CPU: measure in this process (faster, but peak memory is unreliable)")
    args = p.parse_args(argv)
    args.mode = args.mode or "quick"
    args.areas = [a.strip() for a in args.only.split(",")] if args.only else list(AREAS)
    bad = [a for a in args.areas if a not in AREAS]
    if bad:
        p.error(f"--only: unknown area {bad[0]!r}; choose from {', '.join(AREAS)}")
    return args


# ----------------------------------------------------------------------------- output

def _fmt(x, spec=".2f"):
    return "" if x is None else C.fmt(x, spec)


def area_table(rows: list[dict]) -> str:
    """One markdown table: the columns that any row fills, ours in bold."""
    cols = [("kernel", "kernel"), ("case", "case"), ("sparsity", "sparsity"), ("batch", "batch"),
            ("dtype", "dtype"), ("provider", "provider"), ("p50 ms", "p50"), ("p20-p80 ms", "spread"),
            ("peak MiB", "peak"), ("vs stock", "vs_stock"), ("vs compile", "vs_compile"),
            ("GB/s", "gbps"), ("% copy BW", "pct"), ("GFLOP/s", "gflops"), ("check", "check")]
    out = []
    for r in rows:
        ours = r["provider"] == "sparsedistill"
        f = {k: r[k] for k in ("kernel", "case", "dtype", "check")}
        f["provider"] = f"**{r['provider']}**" if ours else r["provider"]
        f["sparsity"] = "" if r["sparsity"] is None else f"{r['sparsity']:g}"
        f["batch"] = "" if r["batch"] is None else str(r["batch"])
        if r["status"] != "ok":
            f["p50"] = f"{r['status']}: {r['note']}".replace("|", "/")
        else:
            p50 = _fmt(r["p50_ms"], ".3f" if r["p50_ms"] < 1 else ".2f")
            f.update(p50=f"**{p50}**" if ours else p50,
                     spread=f"{_fmt(r['p20_ms'], '.3g')}-{_fmt(r['p80_ms'], '.3g')}",
                     peak=_fmt(None if r["peak_bytes"] is None else r["peak_bytes"] / C.MiB, ".1f"),
                     vs_stock=_fmt(r["speedup_vs_stock"], ".2fx"),
                     vs_compile=_fmt(r["speedup_vs_compile"], ".2fx"),
                     gbps=_fmt(r["gbps"], ".1f"),
                     pct=_fmt(None if r["frac_copy_bw"] is None else 100 * r["frac_copy_bw"], ".0f"),
                     gflops=_fmt(r["gflops"], ".1f"))
        out.append(f)
    used = [(h, k) for h, k in cols if any(o.get(k) not in (None, "") for o in out)]
    return C.markdown_table(out, used)


def write_csv(path: str, rows: list[dict], machine: dict) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=C.CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()},
                        **{k: machine[k] for k in C.MACHINE_FIELDS}})


def make_plots(rows: list[dict], stem: str) -> tuple[list[str], str | None]:
    """speedup over the stock provider: against size (distill, prune) and against sparsity
    (sparse_linear). Returns (paths, why not) -- why not is set when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (pip install matplotlib)"
    ok = [r for r in rows if r["status"] == "ok" and r["speedup_vs_stock"] is not None
          and r["provider"] != r["stock_provider"]]
    paths = []

    def panel_grid(n):
        cols = min(n, 3)
        rws = -(-n // cols)
        fig, axes = plt.subplots(rws, cols, figsize=(5.2 * cols, 3.8 * rws), squeeze=False)
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        return fig, list(axes.flat)

    def lines(ax, rs, x, title, xlabel, logx):
        for prov in dict.fromkeys(r["provider"] for r in rs):
            pts = sorted((x(r), r["speedup_vs_stock"]) for r in rs if r["provider"] == prov)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    lw=2.5 if prov == "sparsedistill" else 1.2, label=prov)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"speedup over {rs[0]['stock_provider']}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)

    def save(fig, area, head):
        fig.suptitle(head, fontsize=10)
        fig.tight_layout()
        path = f"{stem}_{area}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    dist = [r for r in ok if r["area"] == "distill"]
    if dist:
        dtypes = list(dict.fromkeys(r["dtype"] for r in dist))
        fig, axes = panel_grid(len(dtypes))
        for ax, dt in zip(axes, dtypes):
            lines(ax, [r for r in dist if r["dtype"] == dt], lambda r: r["size"],
                  f"distill_loss fwd+bwd, {dt}", "logits elements (N x V)", True)
        save(fig, "distill", "distillation loss: speedup against size")
    pr = [r for r in ok if r["area"] == "prune" and r["kernel"] == "prune_tensor"]
    if pr:
        amounts = sorted(dict.fromkeys(r["sparsity"] for r in pr))
        fig, axes = panel_grid(len(amounts))
        for ax, a in zip(axes, amounts):
            lines(ax, [r for r in pr if r["sparsity"] == a], lambda r: r["size"],
                  f"prune one tensor, amount {a:g}", "weight elements", True)
        save(fig, "prune", "magnitude pruning: speedup against size")
    sl = [r for r in ok if r["area"] == "sparse_linear"]
    if sl:
        panels = list(dict.fromkeys((r["case"], r["dtype"], r["batch"]) for r in sl))
        fig, axes = panel_grid(len(panels))
        for ax, (case, dt, b) in zip(axes, panels):
            lines(ax, [r for r in sl if (r["case"], r["dtype"], r["batch"]) == (case, dt, b)],
                  lambda r: r["sparsity"], f"W {case} {dt}, batch {b}", "sparsity", False)
        save(fig, "sparse_linear", "sparse matmul y = x @ W.T: speedup against sparsity")
    return paths, None


# ----------------------------------------------------------------------------- run

def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.resolve_device(args.device)
    started = time.time()
    for name in ("recompile_limit", "cache_size_limit"):  # one graph per shape: many shapes
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    providers = set(p.strip() for p in args.providers.split(",")) if args.providers else None
    ctx = C.SuiteContext(device, args.mode, providers, isolate=not args.no_isolate and args.mode != "tiny")
    machine = C.run_machine(device, REPO)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    machine["timestamp"] = stamp.isoformat(timespec="seconds")
    import sparsedistill
    info = sparsedistill.backend_info()
    ctx.copy_bw = C.copy_bandwidth_gbps(device, nbytes=(32 << 20) if args.mode == "tiny" else None)
    header = [f"sparsedistill benchmarks, {args.mode} run on {device}: {machine['detail']}",
              f"torch {machine['torch_version']}, git {machine['git_commit'][:12]}, native extension "
              f"loaded: {info['native_loaded']}" + (f" ({info['reason']})" if info["reason"] else ""),
              f"copy bandwidth (read+write, measured now): {ctx.copy_bw:.1f} GB/s"]
    print("\n".join(header), flush=True)

    rows, plan = [], []
    for area in args.areas:
        mod = importlib.import_module(f".bench_{area}", __package__)
        skipped, jobs = mod.suite_jobs(ctx)
        rows += skipped
        plan += [(area, label, job) for label, job in jobs]
    progress = C.Progress(enabled=not args.no_progress)
    progress.add(len(plan))
    failures, area_s = [], {a: 0.0 for a in args.areas}
    try:
        for area, label, job in plan:
            progress.step(label)
            t0 = time.time()
            if args.time_budget is not None and time.time() - started > args.time_budget:
                if not label.endswith(("(CPU)",)) and " check " not in label:
                    rows.append(C.suite_row(area, area, label, "(not run)", device=device, dtype="*",
                                            result={"error": "skipped: the --time-budget ran out"}))
                progress.finished()
                continue
            try:
                rows += job()
            except Exception as e:  # a broken job: report it and go on
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
                failures.append(f"{label}: {msg}")
                rows.append(C.suite_row(area, area, label, "(failed)", device=device, dtype="*",
                                        result={"error": msg}))
            area_s[area] += time.time() - t0
            progress.finished()
    finally:
        progress.close()
    C.derive_suite(rows, ctx.copy_bw)
    wall = time.time() - started

    text = ["\n".join(header), ""]
    for area in args.areas:
        ar = [r for r in rows if r["area"] == area]
        text += [f"## {area} (speedup over the stock provider: {STOCK_NOTE[area]})", "",
                 area_table(ar), ""]
    bad_checks = [c for c in ctx.checks if not str(c.get("status", "")).startswith("ok")]
    if ctx.checks:
        text += [f"correctness checks: {len(ctx.checks) - len(bad_checks)} of {len(ctx.checks)} ok"
                 + "".join(f"\n  FAILED {c}" for c in bad_checks), ""]
    print("\n" + "\n".join(text[2:]), flush=True)

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{stamp.strftime('%Y%m%d-%H%M%S')}_{device}_{args.mode}")
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    write_csv(stem + ".csv", clean, machine)
    C.write_json(stem + ".json", {"machine": machine, "device": device, "mode": args.mode,
                                  "areas": args.areas, "copy_bandwidth_gbps": ctx.copy_bw,
                                  "backend": info, "wall_s": round(wall, 1),
                                  "area_wall_s": {a: round(t, 1) for a, t in area_s.items()}, "schema": C.ROW_FIELDS,
                                  "checks": ctx.checks, "rows": clean})
    plots, why = ([], "--no-plots") if args.no_plots else make_plots(rows, stem)
    md = text + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    C.write_text(stem + ".md", "\n".join(md) + "\n")
    print(f"wrote {stem}.csv, .json, .md" + "".join(f"\nplot: {p}" for p in plots))
    if why:
        print(f"plots skipped: {why}")
    print(f"wall time {wall:.0f} s (" + ", ".join(f"{a} {t:.0f} s" for a, t in area_s.items()) + ")")
    ours_failed = [r for r in rows if r["status"] == "error" and r["provider"] in OURS]
    for f in failures:
        print(f"job failed: {f}")
    return 1 if (ours_failed or bad_checks or failures) else 0
