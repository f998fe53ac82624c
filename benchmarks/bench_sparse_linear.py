"""Sparse matmul benchmark: sparsedistill.sparse_linear against dense F.linear and torch.sparse.mm (CSR).

    python benchmarks/bench_sparse_linear.py [--device cpu|cuda] [--quick] [--csv out.csv]

For each weight shape (out x in, nn.Linear layout), magnitude sparsity, batch and dtype: the
median time of y = x @ W.T for
  dense          torch.nn.functional.linear with the pruned dense weight (MKL / cuBLAS)
  torch_csr      torch.sparse.mm(W as torch.sparse_csr, x.T).T (MKL / cuSPARSE)
  sparsedistill  sparsedistill.sparse_linear with a SparseWeight
and the speedup of sparsedistill over both, measured in the same run. Every provider cycles
through several copies of its weight, at least --rotate-mib in all, so that repeats read the
weight from memory as a real model's layers do, not from a cache that one weight fits.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import sparsedistill as sd  # noqa: E402
from sparsedistill.sparse import SparseWeight  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096)]
QUICK_SHAPES = [(4096, 4096)]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
QUICK_SPARSITIES = [0.7, 0.9, 0.99]
BATCHES = [1, 16, 128]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROVIDERS = ["dense", "torch_csr", "sparsedistill"]
DEFAULT_REPS = {"cpu": 9, "cuda": 50}
CSV_FIELDS = ["kernel", "provider", "shape", "sparsity", "batch", "dtype", "device", "p50_ms",
              "p20_ms", "p80_ms", "speedup_dense", "speedup_torch_csr", "gbps", "device_name",
              "torch_version", "sparsedistill_backend", "timestamp"]

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def pruned_weight(out, inp, sparsity, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g).to(device)
    return (w * sd.magnitude_mask(w, sparsity)).to(dtype)


def weight_copies(provider, w, rotate_bytes):
    """Copies of the provider's form of w, at least rotate_bytes in all (at most 32)."""
    if provider == "dense":
        one, nbytes = w, w.numel() * w.element_size()
        make = lambda: w.clone()
    elif provider == "torch_csr":
        one = w.to_sparse_csr()
        nbytes = sum(t.numel() * t.element_size() for t in (one.values(), one.crow_indices(), one.col_indices()))
        make = lambda: w.to_sparse_csr()
    else:
        one = SparseWeight.from_dense(w)
        nbytes = one.nbytes()
        make = lambda: SparseWeight.from_dense(w)
    count = max(1, min(32, -(-rotate_bytes // max(nbytes, 1))))
    return [one] + [make() for _ in range(count - 1)], nbytes


def call(provider, weight, x):
    if provider == "dense":
        return F.linear(x, weight)
    if provider == "torch_csr":
        return torch.sparse.mm(weight, x.T).T
    return sd.sparse_linear(x, weight)


def measure(provider, w, batch, device, warmup, reps, rotate_bytes):
    try:
        weights, nbytes = weight_copies(provider, w, rotate_bytes)
        x = torch.randn(batch, w.shape[1], device=device).to(w.dtype)
        call(provider, weights[0], x)
    except (RuntimeError, NotImplementedError) as e:  # e.g. no CSR matmul for this dtype
        return {"error": f"unsupported: {str(e).splitlines()[0][:80]}"}
    state = {"i": 0}

    def step():
        call(provider, weights[state["i"] % len(weights)], x)
        state["i"] += 1
    with torch.no_grad():
        C.time_steps(step, device, warmup)
        times = C.time_steps(step, device, reps)
    r = C.summarize_ms(times)
    r["gbps"] = (nbytes + 2 * x.numel() * x.element_size()) / (r["p50_ms"] * 1e6)
    return r


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


def csv_path(path: str) -> str:
    """run_all.py hands every benchmark the same --csv; another schema's file gets a sibling."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path) as f:
            if f.readline().strip() != ",".join(CSV_FIELDS):
                return os.path.splitext(path)[0] + ".sparse_linear.csv"
    return path


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
    if not set(dtypes) <= set(DTYPES) or not set(providers) <= set(PROVIDERS):
        raise SystemExit(f"--dtypes from {list(DTYPES)}, --providers from {PROVIDERS}")
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
        path = csv_path(args.csv)
        C.append_csv(path, [{k: round(r[k], 4) if isinstance(r.get(k), float) else r.get(k)
                             for k in CSV_FIELDS} for r in rows if "error" not in r], CSV_FIELDS)
        print(f"csv: {path}")
    if args.json:
        C.write_json(args.json, {"machine": machine, "device": device, "sparse_linear": ops,
                                 "timestamp": stamp, "correctness": checks, "results": rows})
    if args.markdown:
        C.write_text(args.markdown, "\n".join(header) + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
