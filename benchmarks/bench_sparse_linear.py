"""Sparse matmul benchmark: sparsedistill.sparse_linear against dense F.linear and torch.sparse.mm (CSR).

    python benchmarks/bench_sparse_linear.py [--device cpu|cuda] [--quick] [--csv out.csv]

For each weight shape (out x in, nn.Linear layout), magnitude sparsity, batch and dtype: the
median time of y = x @ W.T for
  dense            torch.nn.functional.linear with the pruned dense weight (MKL / cuBLAS)
  torch_compile    the same F.linear under torch.compile
  torch_csr        torch.sparse.mm(W as torch.sparse_csr, x.T).T (MKL / cuSPARSE)
  semi_structured  F.linear with torch.sparse.to_sparse_semi_structured(W) (CUDA only; a 2:4
                   weight, so only at sparsity 0.5)
  reference        sparsedistill._sparse_reference.sparse_linear (pure PyTorch: densify, matmul)
  sparsedistill    sparsedistill.sparse_linear with a SparseWeight
and the speedup of sparsedistill over both, measured in the same run. Every provider cycles
through several copies of its weight, at least --rotate-mib in all, so that repeats read the
weight from memory as a real model's layers do, not from a cache that one weight fits.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import warnings

import torch
import torch.nn.functional as F

if __package__:  # python -m benchmarks (the suite) imports this as benchmarks.bench_sparse_linear
    from . import _common as C
else:  # python benchmarks/bench_sparse_linear.py
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common as C  # noqa: E402

import sparsedistill as sd  # noqa: E402
from sparsedistill.sparse import reference as SR  # noqa: E402
from sparsedistill.sparse import SparseWeight  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096)]
QUICK_SHAPES = [(4096, 4096)]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
QUICK_SPARSITIES = [0.7, 0.9, 0.99]
BATCHES = [1, 16, 128]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROVIDERS = ["dense", "torch_csr", "sparsedistill"]  # the script's default
ALL_PROVIDERS = ["dense", "torch_compile", "torch_csr", "semi_structured", "reference", "sparsedistill"]
DEFAULT_REPS = {"cpu": 9, "cuda": 50}
CSV_FIELDS = ["kernel", "provider", "shape", "sparsity", "batch", "dtype", "device", "p50_ms",
              "p20_ms", "p80_ms", "speedup_dense", "speedup_torch_csr", "gbps", "device_name",
              "torch_version", "sparsedistill_backend", "timestamp"]

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def pruned_weight(out, inp, sparsity, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g).to(device)
    return (w * sd.magnitude_mask(w, sparsity)).to(dtype)


def pruned_weight_24(out, inp, dtype, device, seed=0):
    """A 2:4 weight (the 2 largest of every 4 along in_features), for semi_structured."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g).to(device)
    return (w * sd.nm_mask(w, 2, 4)).to(dtype)


def _semi_structured(w):
    if w.device.type != "cuda":
        raise RuntimeError("unsupported: semi-structured sparsity runs on CUDA only")
    t = torch.sparse.to_sparse_semi_structured(w)
    parts = [getattr(t, n, None) for n in ("packed", "meta", "packed_t", "meta_t")]
    nbytes = sum(p.numel() * p.element_size() for p in parts[:2] if p is not None)
    return t, nbytes or w.numel() * w.element_size() // 2


_COMPILED = {}


def _compiled_linear():
    if "linear" not in _COMPILED:
        _COMPILED["linear"] = torch.compile(lambda x, w: F.linear(x, w), dynamic=False)
    return _COMPILED["linear"]


def weight_copies(provider, w, rotate_bytes):
    """Copies of the provider's form of w, at least rotate_bytes in all (at most 4096 copies).
    No smaller cap: a 32-copy cap had a 10 MB sparse weight cycle through 320 MB, which a large
    last-level cache holds, while the dense weights streamed from memory."""
    if provider in ("dense", "torch_compile"):
        one, nbytes = w, w.numel() * w.element_size()
        make = lambda: w.clone()
    elif provider == "semi_structured":
        one, nbytes = _semi_structured(w)
        make = lambda: _semi_structured(w)[0]
    elif provider == "torch_csr":
        one = w.to_sparse_csr()
        nbytes = sum(t.numel() * t.element_size() for t in (one.values(), one.crow_indices(), one.col_indices()))
        make = lambda: one.clone()
    else:
        one = SparseWeight.from_dense(w)
        nbytes = one.nbytes()
        make = lambda: dataclasses.replace(one, values=one.values.clone(), row_ptr=one.row_ptr.clone(),  # noqa: E731
                                           col_idx=one.col_idx.clone(), row_order=one.row_order.clone())
    count = max(1, min(4096, -(-rotate_bytes // max(nbytes, 1))))
    return [one] + [make() for _ in range(count - 1)], nbytes


def call(provider, weight, x):
    if provider in ("dense", "semi_structured"):
        return F.linear(x, weight)
    if provider == "torch_compile":
        return _compiled_linear()(x, weight)
    if provider == "torch_csr":
        return torch.sparse.mm(weight, x.T).T
    if provider == "reference":
        return SR.sparse_linear(x, weight.values, weight.row_ptr, weight.col_idx, weight.row_order,
                                weight.in_features)
    return sd.sparse_linear(x, weight)


def measure_batches(provider, w, batches, device, warmup, reps, rotate_bytes, peak=False):
    """One result per batch size (the weight copies are made once). peak: also the peak extra
    memory of one call (CUDA: the caching allocator; on CPU see peak_cpu_batch)."""
    try:
        weights, nbytes = weight_copies(provider, w, rotate_bytes)
        call(provider, weights[0], torch.randn(max(batches), w.shape[1], device=device).to(w.dtype))
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
        # e.g. no CSR matmul for this dtype, no semi-structured kernel for this dtype or shape
        msg = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        if provider in ("sparsedistill", "reference"):  # ours must run: an error, not a skip
            return [{"error": f"{type(e).__name__}: {msg}"}] * len(batches)
        return [{"error": msg if msg.startswith("unsupported") else f"unsupported: {msg}"}] * len(batches)
    out = []
    for batch in batches:
        try:
            x = torch.randn(batch, w.shape[1], device=device).to(w.dtype)
            state = {"i": 0}

            def step():
                call(provider, weights[state["i"] % len(weights)], x)
                state["i"] += 1
            with torch.no_grad():
                C.time_steps(step, device, max(warmup, 1) if provider == "torch_compile" else warmup)
                r = C.summarize_ms(C.time_steps(step, device, reps))
                if peak and device == "cuda":
                    r["peak_bytes"] = C.cuda_peak_extra_bytes(lambda: call(provider, weights[0], x))[0]
            r["nbytes"] = nbytes + x.numel() * x.element_size() + batch * w.shape[0] * w.element_size()
            r["gbps"] = (nbytes + 2 * x.numel() * x.element_size()) / (r["p50_ms"] * 1e6)
        except Exception as e:  # OOM and the like: report and go on
            r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]}
        out.append(r)
    if device == "cuda":
        del weights
        torch.cuda.empty_cache()
    return out


def measure(provider, w, batch, device, warmup, reps, rotate_bytes):
    return measure_batches(provider, w, [batch], device, warmup, reps, rotate_bytes)[0]


def peak_cpu_batch(cases) -> list:
    """CPU peak extra memory (RSS) of one call for each (provider, out, inp, sparsity, dtype,
    batch, two_four) case; meant for a fresh child process (run_isolated), after all timing."""
    out, weights = [], {}
    for provider, o, i, sparsity, dname, batch, two_four in cases:
        key = (o, i, sparsity, dname, two_four)
        try:
            if key not in weights:
                weights.clear()
                w = (pruned_weight_24(o, i, DTYPES[dname], "cpu") if two_four
                     else pruned_weight(o, i, sparsity, DTYPES[dname], "cpu"))
                weights[key] = (w, {})
            w, forms = weights[key]
            if provider not in forms:
                forms[provider] = weight_copies(provider, w, 0)[0][0]
            x = torch.randn(batch, i).to(DTYPES[dname])
            with torch.no_grad():
                call(provider, forms[provider], x)
                out.append(C.peak_extra_bytes(lambda: call(provider, forms[provider], x), "cpu",
                                              repeats=2)[0])
        except Exception:
            out.append(None)
    return out


def check(w, batch, device) -> str:
    x = torch.randn(batch, w.shape[1], device=device).to(w.dtype)
    got = sd.sparse_linear(x, SparseWeight.from_dense(w)).double()
    want = x.double() @ w.double().T
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    limit = 1e-2 if w.dtype == torch.bfloat16 else 1e-5
    return f"ok (max rel err {err:.1e})" if err <= limit else f"FAILED (max rel err {err:.1e})"


def results_table(rows) -> str:
    cols = [(h, h) for h in ("shape", "dtype", "sparsity", "batch")]
    cols += [("dense ms", "dense"), ("torch_csr ms", "torch_csr"), ("ours ms", "sparsedistill"),
             ("vs dense", "vs_dense"), ("vs torch_csr", "vs_csr"), ("ours GB/s", "gbps")]
    table = {}
    for r in rows:
        key = (r["shape"], r["dtype"], r["sparsity"], r["batch"])
        t = table.setdefault(key, dict(zip(("shape", "dtype", "sparsity", "batch"), key)))
        t[r["provider"]] = r["error"] if "error" in r else C.fmt(r["p50_ms"], ".3f")
        if r["provider"] == "sparsedistill" and "error" not in r:
            t.update(vs_dense=C.fmt(r.get("speedup_dense"), ".2fx"),
                     vs_csr=C.fmt(r.get("speedup_torch_csr"), ".2fx"), gbps=C.fmt(r["gbps"], ".1f"))
    return C.markdown_table(list(table.values()), cols)


def derive(rows) -> None:
    p50 = {(r["shape"], r["dtype"], r["sparsity"], r["batch"], r["provider"]): r.get("p50_ms") for r in rows}
    for r in rows:
        if "error" in r:
            continue
        for base in ("dense", "torch_csr"):
            t = p50.get((r["shape"], r["dtype"], r["sparsity"], r["batch"], base))
            r[f"speedup_{base}"] = t / r["p50_ms"] if t else None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--shapes", help="out x in weight shapes, e.g. 4096x4096,11008x4096")
    p.add_argument("--sparsities", help=f"default {SPARSITIES} (--quick {QUICK_SPARSITIES})")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, help="default: CPU 9, CUDA 50")
    p.add_argument("--rotate-mib", type=int, help="weight bytes cycled per provider (CPU 768, CUDA 256)")
    p.add_argument("--quick", action="store_true", help="one shape, three sparsities")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check")
    p.add_argument("--csv", help="append one row per measurement to this CSV")
    p.add_argument("--json", help="write everything as JSON")
    p.add_argument("--markdown", help="write the table as markdown")
    args, unknown = p.parse_known_args(argv)
    if unknown:
        print(f"bench_sparse_linear.py: ignoring {' '.join(unknown)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.resolve_device(args.device)
    shapes = ([tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
              if args.shapes else QUICK_SHAPES if args.quick else SHAPES)
    sparsities = ([float(s) for s in args.sparsities.split(",")] if args.sparsities
                  else QUICK_SPARSITIES if args.quick else SPARSITIES)
    batches = [int(b) for b in args.batches.split(",")]
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    providers = [p.strip() for p in args.providers.split(",")]
    if not set(dtypes) <= set(DTYPES) or not set(providers) <= set(ALL_PROVIDERS):
        raise SystemExit(f"--dtypes from {list(DTYPES)}, --providers from {ALL_PROVIDERS}")
    reps = args.reps or DEFAULT_REPS[device]
    rotate = (args.rotate_mib or (768 if device == "cpu" else 256)) * C.MiB

    machine, ops = C.machine_info(device), sd.backend_info()["ops"]["sparse_linear"]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    header = [f"machine: {machine['detail']}",
              f"torch {machine['torch_version']}, sparsedistill sparse_linear: {ops}",
              f"weights cycled per provider: {rotate // C.MiB} MiB; p50 of {reps}"]
    print("\n".join(header), flush=True)
    rows, checks = [], []
    for out, inp in shapes:
        for dname in dtypes:
            for sparsity in sparsities:
                w = pruned_weight(out, inp, sparsity, DTYPES[dname], device)
                shape = f"{out}x{inp}"
                if not args.no_check:
                    c = check(w, 7, device)
                    checks.append(dict(shape=shape, dtype=dname, sparsity=sparsity, check=c))
                for batch in batches:
                    for p in providers:
                        r = measure(p, w, batch, device, args.warmup, reps, rotate)
                        r.update(kernel="sparse_linear", provider=p, shape=shape, sparsity=sparsity,
                                 batch=batch, dtype=dname, device=device)
                        rows.append(r)
                        print(f"  {p:<14} {shape} {dname} sparsity {sparsity} batch {batch}: "
                              + (r["error"] if "error" in r else f"p50 {r['p50_ms']:.3f} ms"), flush=True)
                del w
    derive(rows)
    for r in rows:
        r.update(device_name=machine["device_name"], torch_version=machine["torch_version"],
                 sparsedistill_backend=ops.get(device), timestamp=stamp)
    text = ""
    if checks:
        text += "\ncorrectness of sparsedistill against float64 (batch 7)\n\n"
        text += C.markdown_table(checks, [(h, h) for h in ("shape", "dtype", "sparsity", "check")]) + "\n"
    text += "\nsparse_linear: y = x @ W.T, p50 ms and speedups\n\n" + results_table(rows) + "\n"
    print(text)
    if args.csv:
        path = C.csv_path(args.csv, CSV_FIELDS, "sparse_linear")
        C.append_csv(path, [{k: round(r[k], 4) if isinstance(r.get(k), float) else r.get(k)
                             for k in CSV_FIELDS} for r in rows if "error" not in r], CSV_FIELDS)
        print(f"csv: {path}")
    if args.json:
        C.write_json(args.json, {"machine": machine, "device": device, "sparse_linear": ops,
                                 "timestamp": stamp, "correctness": checks, "results": rows})
    if args.markdown:
        C.write_text(args.markdown, "\n".join(header) + "\n" + text)
    return 0


# ----------------------------------------------------------------------------- the suite
# python -m benchmarks calls suite_jobs(); rows come back in the common schema (_common.ROW_FIELDS).
SUITE = {  # shapes, sparsities, batches, dtypes, reps (None: DEFAULT_REPS), rotate MiB (None: default)
    "tiny": ([(256, 256)], [0.5, 0.9], [1, 4], ["float32"], 3, 1),
    "quick": ([(4096, 4096)], [0.5, 0.7, 0.9, 0.99], [1, 16], ["float32"], 7, 256),
    "full": (SHAPES, SPARSITIES, BATCHES, list(DTYPES), None, None),
}
SUITE_NOTES = {"torch_compile": "torch.compile of F.linear (dense)", "torch_csr": "torch.sparse.mm, CSR",
               "semi_structured": "torch 2:4 semi-structured (a 2:4 weight)",
               "reference": "sparsedistill._sparse_reference (densify + matmul)"}


def suite_jobs(ctx):
    """(skipped rows, [(label, job)]): each job returns a list of rows (one per batch)."""
    device = ctx.device
    shapes, sparsities, batches, dtypes, reps, rotate_mib = SUITE[ctx.mode]
    reps = reps or DEFAULT_REPS[device]
    warmup = 1 if ctx.mode == "tiny" else 2
    rotate = (rotate_mib or (768 if device == "cpu" else 256)) * C.MiB
    backend = sd.backend_info()["ops"]["sparse_linear"][device]
    notes = {**SUITE_NOTES, "sparsedistill": backend}
    providers = [p for p in ALL_PROVIDERS if ctx.wants(p)]
    skipped = []
    if "semi_structured" in providers and device != "cuda":
        providers.remove("semi_structured")
        skipped.append(C.skipped_row("sparse_linear", "sparse_linear", "semi_structured", device,
                                     "2:4 semi-structured sparsity runs on CUDA only", "dense"))
    current: dict = {}  # the weight of the case being measured (one at a time)
    all_rows: list = []
    jobs = []

    def weight(o, i, sparsity, dname, two_four=False):
        key = (o, i, sparsity, dname, two_four)
        if key not in current:
            current.clear()
            current[key] = (pruned_weight_24(o, i, DTYPES[dname], device) if two_four
                            else pruned_weight(o, i, sparsity, DTYPES[dname], device))
        return current[key]

    for o, i in shapes:
        for dname in dtypes:
            for sparsity in sparsities:
                shape, status = f"{o}x{i}", {}

                def check_job(o=o, i=i, dname=dname, sparsity=sparsity, shape=shape, status=status):
                    status["check"] = check(weight(o, i, sparsity, dname), 7, device)
                    ctx.checks.append({"area": "sparse_linear", "shape": shape, "dtype": dname,
                                       "sparsity": sparsity, "status": status["check"]})
                    return []
                jobs.append((f"sparse_linear check {shape} {dname} {sparsity}", check_job))
                for p in providers:
                    if p == "semi_structured" and sparsity != 0.5:
                        continue

                    def job(p=p, o=o, i=i, dname=dname, sparsity=sparsity, shape=shape, status=status):
                        two_four = p == "semi_structured"
                        w = weight(o, i, sparsity, dname, two_four)
                        nnz = int((w != 0).sum())
                        results = measure_batches(p, w, batches, device, warmup, reps, rotate, peak=True)
                        rows = []
                        for batch, r in zip(batches, results):
                            row = C.suite_row("sparse_linear", "sparse_linear", p, shape, device=device,
                                              dtype=dname, size=o * i, sparsity=sparsity, batch=batch,
                                              result=r, nbytes=r.get("nbytes"), flops=2 * nnz * batch,
                                              stock="dense", note=notes.get(p, ""),
                                              check=status.get("check", "") if p == "sparsedistill" else "")
                            row["_peak_case"] = (p, o, i, sparsity, dname, batch, two_four)
                            rows.append(row)
                        all_rows.extend(rows)
                        return rows
                    jobs.append((f"sparse_linear {p} {shape} {dname} {sparsity}", job))

    if device == "cpu" and ctx.mode != "tiny":  # (tiny: no CPU peak memory, it takes seconds)
        def peaks():  # after all timing, in one fresh process: RSS peaks of one call each
            todo = [r for r in all_rows if r["status"] == "ok"]
            cases = [r["_peak_case"] for r in todo]
            got = (C.run_isolated(peak_cpu_batch, cases) if ctx.isolate else peak_cpu_batch(cases))
            for r, b in zip(todo, got):
                r["peak_bytes"] = b
            return []
        jobs.append(("sparse_linear peak memory (CPU)", peaks))
    return skipped, jobs


if __name__ == "__main__":
    sys.exit(main())
