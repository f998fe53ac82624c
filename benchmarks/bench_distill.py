"""Benchmark: fused distillation loss, forward + backward, against the stock PyTorch composite.

    python benchmarks/bench_distill.py                 # cuda if available, else cpu
    python benchmarks/bench_distill.py --quick         # small shapes, smoke run
    python benchmarks/bench_distill.py --device cpu --shapes 4096x32000 --dtypes bfloat16 \
        --csv benchmarks/results/distill.csv --markdown benchmarks/results/distill.md

Providers (each one step = loss + loss.backward() w.r.t. the student; teacher without grad):
  torch_eager    alpha*T^2*kl_div(log_softmax(s/T), softmax(t/T), "batchmean") + (1-alpha)*CE(s, y)
  torch_compile  the same function under torch.compile (compile time excluded by the warm-up)
  liger          Liger's Triton KL kernel on log_softmax(s/T), log_softmax(t/T) (log_target=True)
                 + F.cross_entropy; CUDA only, when liger_kernel imports
  reference      sparsedistill.distill.reference.distill_loss called directly (the pure-PyTorch kernel
                 that serves the op without the native build; it computes the gradient itself)
  sparsedistill  sparsedistill.distillation_loss (the fused kernel)
Bandwidth counts the floor bytes 3*N*V*elem: student and teacher read once, gradient written once.
Peak memory is what one step needs beyond its inputs (the gradient included). CUDA: the caching
allocator's max_memory_allocated during the step minus memory_allocated before it. CPU: each
(provider, shape, dtype) runs in a fresh process (_common.run_isolated); after warm-up and timing, the peak RSS
(VmHWM, reset through /proc/self/clear_refs) of a step minus the RSS just before it, the smaller
of two steps (see _common.cpu_peak_extra_bytes).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__:  # python -m benchmarks (the suite) imports this as benchmarks.bench_distill
    from . import _common as C
else:  # python benchmarks/bench_distill.py
    sys.path.insert(0, HERE)
    import _common as C  # noqa: E402

PROVIDERS = ["torch_eager", "torch_compile", "liger", "reference", "sparsedistill"]
SHAPES, QUICK_SHAPES = "4096x32000,1024x128256", "512x8000"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_REPS = {"cpu": (1, 5), "cuda": (10, 50)}  # (warmup, reps); this CPU is shared and noisy
QUICK_REPS = (2, 10)  # small shapes: more reps are cheap and steady the median
CSV_FIELDS = ["kernel", "provider", "shape", "dtype", "device", "device_name", "p50_ms", "p20_ms",
              "p80_ms", "peak_mib", "speedup_eager", "speedup_compile", "gbps", "torch_version",
              "sparsedistill_backend", "timestamp"]
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def import_sparsedistill():
    """The installed package, else the source tree next to benchmarks/ (an in-place build)."""
    try:
        import sparsedistill
    except ImportError:
        sys.path.insert(1, os.path.dirname(HERE))
        try:
            import sparsedistill
        except ImportError:
            return None
    return sparsedistill


def backend_name(device: str) -> str:
    sd = import_sparsedistill()
    if sd is None:
        return "not importable"
    try:
        return str(sd.backend_info()["ops"]["distill_loss"][device])
    except Exception:  # an older or stand-in package
        return "unknown"


def composite(s, t, y, T, alpha):
    soft = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean")
    return alpha * soft * T ** 2 + (1 - alpha) * F.cross_entropy(s, y)


def make_loss_fn(provider: str, device: str, T: float, alpha: float):
    """loss_fn(s, t, y) for the provider; raises RuntimeError(reason) where it cannot run."""
    if provider == "torch_eager":
        return lambda s, t, y: composite(s, t, y, T, alpha)
    if provider == "torch_compile":
        compiled = torch.compile(composite, dynamic=False)  # one graph per shape and dtype
        return lambda s, t, y: compiled(s, t, y, T, alpha)
    if provider == "sparsedistill":
        sd = import_sparsedistill()
        if sd is None:
            raise RuntimeError("sparsedistill is not importable")
        return lambda s, t, y: sd.distillation_loss(s, t, y, T=T, alpha=alpha)
    if provider == "reference":
        from sparsedistill.distill import reference as R

        def reference(s, t, y):  # per-row loss and the gradient of the mean, in one call
            n = s.shape[0]
            scale = torch.tensor(1.0 / max(n, 1), device=s.device)
            loss, _, _, grad = R.distill_loss(s.detach(), t, y, scale, T, alpha, 0.5, R.FORWARD_KL,
                                              -100, True)
            s.grad = grad
            return loss.sum() / max(n, 1)
        return reference
    if provider == "liger":
        if device != "cuda":
            raise RuntimeError("liger runs on CUDA only (Triton)")
        try:
            from liger_kernel.transformers import LigerKLDIVLoss
        except Exception as e:
            raise RuntimeError(f"liger_kernel is not importable ({type(e).__name__})") from None
        kl = LigerKLDIVLoss(reduction="batchmean", log_target=True)
        # Hard term: F.cross_entropy. LigerCrossEntropyLoss writes its gradient into its input
        # in place, which here is the student leaf that the soft term and later reps also use.
        return lambda s, t, y: (alpha * T * T * kl(F.log_softmax(s / T, dim=1),
                                                   F.log_softmax(t / T, dim=1))
                                + (1 - alpha) * F.cross_entropy(s, y))
    raise ValueError(f"unknown provider {provider!r}")


def make_inputs(n: int, v: int, dtype, device: str, seed: int = 0):
    g = torch.Generator(device).manual_seed(seed)
    s = torch.randn(n, v, dtype=dtype, device=device, generator=g).requires_grad_()
    t = torch.randn(n, v, dtype=dtype, device=device, generator=g)
    y = torch.randint(0, v, (n,), dtype=torch.int64, device=device, generator=g)
    return s, t, y


def make_step(loss_fn, s, t, y):
    def step():
        s.grad = None
        loss = loss_fn(s, t, y)
        if loss.requires_grad:  # the reference provider sets s.grad itself
            loss.backward()
        return loss
    return step


def measure(provider, n, v, dtype_name, device, T, alpha, warmup, reps, rotate_bytes=0) -> dict:
    """Times and peak extra memory of one provider on one shape/dtype. On CPU this runs in a
    fresh child process (run_isolated), so the peak RSS belongs to this step alone.
    rotate_bytes: the timed steps cycle through copies of the inputs (at most 8), at least this
    many bytes of logits in all, so that small shapes are not timed from the cache."""
    try:
        loss_fn = make_loss_fn(provider, device, T, alpha)
        sets = max(1, min(8, -(-rotate_bytes // (2 * n * v * DTYPES[dtype_name].itemsize))))
        inputs = [make_inputs(n, v, DTYPES[dtype_name], device, seed=i) for i in range(sets)]
        steps = [make_step(loss_fn, *inp) for inp in inputs]
        s = inputs[0][0]
        step, turn = steps[0], {"i": 0}

        def rotated():
            steps[turn["i"] % sets]()
            turn["i"] += 1
        for _ in range(max(warmup, 1)):  # >= 1: torch.compile compiles here
            rotated()
        out = C.summarize_ms(C.time_steps(rotated, device, reps))
        for other in inputs[1:]:
            other[0].grad = None
        # last (on CPU it retunes malloc); the inputs are resident, the old gradient is not
        peak, method = C.peak_extra_bytes(step, device, repeats=2 if device == "cpu" else 1,
                                          reset=lambda: setattr(s, "grad", None))
        return {**out, "peak_bytes": peak, "peak_method": method}
    except Exception as e:  # compile failures, OOM, ...: report and go on
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]}
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().float(), ref.detach().float()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check_correctness(providers, n, v, dtype_name, device, T, alpha) -> list[dict]:
    """Loss and gradient of sparsedistill (and liger) vs torch_eager on the same inputs."""
    s, t, y = make_inputs(n, v, DTYPES[dtype_name], device)
    ref_loss = make_step(make_loss_fn("torch_eager", device, T, alpha), s, t, y)().detach()
    ref_grad, tol, out = s.grad, TOLERANCE[DTYPES[dtype_name]], []
    for p in [p for p in providers if p in ("sparsedistill", "reference", "liger")]:
        try:
            loss = make_step(make_loss_fn(p, device, T, alpha), s, t, y)()
            le, ge = rel_err(loss, ref_loss), rel_err(s.grad, ref_grad)
            status = "ok" if max(le, ge) <= tol else f"WARNING > {tol:g}"
        except Exception as e:
            le = ge = None
            status = f"failed: {type(e).__name__}: {e}"[:120]
        out.append({"provider": p, "shape": f"{n}x{v}", "dtype": dtype_name, "loss_rel_err": le,
                    "grad_rel_err": ge, "status": status})
    return out


def derive(rows: list[dict], copy_bw) -> None:
    """Speedups vs eager / compile of the same shape+dtype, GB/s, memory in MiB and logits."""
    p50 = {(r["provider"], r["shape"], r["dtype"]): r.get("p50_ms") for r in rows}
    for r in rows:
        if "error" in r:
            continue
        eager, comp = (p50.get((b, r["shape"], r["dtype"])) for b in ("torch_eager", "torch_compile"))
        r["speedup_eager"] = eager / r["p50_ms"] if eager else None
        r["speedup_compile"] = comp / r["p50_ms"] if comp else None
        r["gbps"] = 3 * r["logits_bytes"] / (r["p50_ms"] * 1e-3) / 1e9
        r["pct_copy_bw"] = 100 * r["gbps"] / copy_bw if copy_bw else None
        r["peak_mib"] = r["peak_bytes"] / C.MiB
        r["peak_x_logits"] = r["peak_bytes"] / r["logits_bytes"]


def results_table(rows: list[dict], device: str) -> str:
    cols = [("provider", "provider"), ("shape", "shape"), ("dtype", "dtype"), ("device", "device"),
            ("p50 ms", "p50"), ("p20 ms", "p20"), ("p80 ms", "p80"), ("vs eager", "se"),
            ("vs compile", "sc"), ("GB/s", "gbps")]
    cols += [("% copy BW", "pct")] if device == "cuda" else []
    cols += [("peak extra MiB", "mib"), ("peak / logits", "xl")]
    out = []
    for r in rows:
        f = {k: r[k] for k in ("provider", "shape", "dtype", "device")}
        if "error" in r:
            f["p50"] = "failed: " + r["error"].replace("|", "/")
        else:
            f.update(p50=C.fmt(r["p50_ms"]), p20=C.fmt(r["p20_ms"]), p80=C.fmt(r["p80_ms"]),
                     se=C.fmt(r["speedup_eager"], ".2fx"), sc=C.fmt(r["speedup_compile"], ".2fx"),
                     gbps=C.fmt(r["gbps"], ".1f"), pct=C.fmt(r["pct_copy_bw"], ".0f"),
                     mib=C.fmt(r["peak_mib"], ".1f"), xl=C.fmt(r["peak_x_logits"]))
        out.append(f)
    return C.markdown_table(out, cols)


def correctness_table(checks: list[dict]) -> str:
    cols = [("provider", "provider"), ("shape", "shape"), ("dtype", "dtype"),
            ("loss rel err", "le"), ("grad rel err", "ge"), ("status", "status")]
    rows = [{**c, "le": C.fmt(c["loss_rel_err"], ".2e"), "ge": C.fmt(c["grad_rel_err"], ".2e")}
            for c in checks]
    return C.markdown_table(rows, cols)


def csv_row(r: dict) -> dict:
    return {k: round(r[k], 4) if isinstance(r.get(k), float) else r.get(k) for k in CSV_FIELDS}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--shapes", help=f"NxV list (default {SHAPES}; --quick: {QUICK_SHAPES})")
    p.add_argument("--dtypes", default="float32,bfloat16", help=f"from {','.join(DTYPES)}")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--warmup", type=int, help="default: 1 on CPU, 10 on CUDA, 2 with --quick")
    p.add_argument("--reps", type=int, help="default: 3 on CPU, 50 on CUDA, 10 with --quick")
    p.add_argument("--T", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--quick", action="store_true", help="small shapes, few reps: a smoke run")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check")
    p.add_argument("--csv", help="append one row per measurement to this CSV")
    p.add_argument("--json", help="write everything (machine, checks, results) as JSON")
    p.add_argument("--markdown", help="write the tables as markdown")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.resolve_device(args.device)
    warmup, reps = QUICK_REPS if args.quick else DEFAULT_REPS[device]
    warmup = warmup if args.warmup is None else args.warmup
    reps = reps if args.reps is None else max(args.reps, 1)
    shapes = [tuple(int(x) for x in s.lower().split("x"))
              for s in (args.shapes or (QUICK_SHAPES if args.quick else SHAPES)).split(",")]
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    providers = [p.strip() for p in args.providers.split(",")]
    for p in providers:
        if p not in PROVIDERS:
            raise SystemExit(f"unknown provider {p!r}; choose from {PROVIDERS}")
    runnable = []
    for p in providers:  # probe availability once, in this process
        try:
            make_loss_fn(p, device, args.T, args.alpha) if p != "torch_compile" else None
            runnable.append(p)
        except RuntimeError as e:
            print(f"skipping {p}: {e}")

    machine = C.machine_info(device)
    backend = backend_name(device)
    copy_bw = C.copy_bandwidth_gbps(device)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    header = [f"machine: {machine['detail']}", f"torch {machine['torch_version']}, "
              f"sparsedistill distill_loss on {device}: {backend}",
              f"T={args.T} alpha={args.alpha}, warmup {warmup}, reps {reps}, times are fwd+bwd"]
    if copy_bw:
        header.append(f"device copy bandwidth (read+write): {copy_bw:.0f} GB/s")
    print("\n".join(header), flush=True)

    rows, checks = [], []
    for n, v in shapes:
        for dt in dtypes:
            if not args.no_check:
                checks += check_correctness(runnable, n, v, dt, device, args.T, args.alpha)
            for p in runnable:
                call = (p, n, v, dt, device, args.T, args.alpha, warmup, reps)
                try:
                    r = C.run_isolated(measure, *call) if device == "cpu" else measure(*call)
                except Exception as e:  # the child died
                    r = {"error": f"child process failed: {type(e).__name__}"}
                r.update(kernel="distill_loss", provider=p, shape=f"{n}x{v}", dtype=dt,
                         device=device, logits_bytes=n * v * DTYPES[dt].itemsize)
                print(f"  {p:<14} {n}x{v} {dt:<9} "
                      + (r["error"] if "error" in r else f"p50 {r['p50_ms']:.2f} ms"), flush=True)
                rows.append(r)
    derive(rows, copy_bw)
    for r in rows:
        r.update(device_name=machine["device_name"], torch_version=machine["torch_version"],
                 sparsedistill_backend=backend, timestamp=stamp)

    text = ""
    if checks:
        text += "\ncorrectness vs torch_eager (relative error, L2 for the gradient)\n\n"
        text += correctness_table(checks) + "\n"
    text += "\n" + results_table(rows, device) + "\n"
    print(text)
    text = "\n".join(header) + "\n" + text
    if args.csv:
        C.append_csv(args.csv, [csv_row(r) for r in rows if "error" not in r], CSV_FIELDS)
    if args.json:
        C.write_json(args.json, {"machine": machine, "device": device, "backend": backend,
                                 "copy_bandwidth_gbps": copy_bw, "timestamp": stamp,
                                 "warmup": warmup, "reps": reps, "correctness": checks,
                                 "results": rows})
    if args.markdown:
        C.write_text(args.markdown, text)
    return 0


# ----------------------------------------------------------------------------- the suite
# python -m benchmarks calls suite_jobs(); rows come back in the common schema (_common.ROW_FIELDS).
SUITE = {  # shapes, dtypes, (warmup, reps) by mode; None: DEFAULT_REPS of the device
    "tiny": ("64x1000", "float32", (1, 3)),
    "quick": ("256x8000,512x32000", "float32", (1, 8)),
    "full": ("512x8000,1024x32000,4096x32000,1024x128256", "float32,bfloat16", None),
}
ROTATE_BYTES = {"cpu": 256 * C.MiB, "cuda": 256 * C.MiB}  # > the L2 (CUDA); up to 8 input copies


def suite_jobs(ctx, T: float = 4.0, alpha: float = 0.5):
    """(skipped rows, [(label, job)]): each job returns a list of rows."""
    device = ctx.device
    shapes, dtypes, reps = SUITE[ctx.mode]
    warmup, reps = reps or DEFAULT_REPS[device]
    if device == "cuda" and ctx.mode == "quick":
        warmup, reps = 5, 20
    skipped, runnable = [], []
    for p in [p for p in PROVIDERS if ctx.wants(p)]:
        try:
            make_loss_fn(p, device, T, alpha) if p != "torch_compile" else None
            runnable.append(p)
        except RuntimeError as e:
            skipped.append(C.skipped_row("distill", "distill_loss", p, device, str(e), "torch_eager"))
    backend = backend_name(device)
    notes = {"sparsedistill": backend, "reference": "sparsedistill.distill.reference (pure PyTorch)",
             "torch_compile": "torch.compile of torch_eager"}
    checks: dict = {}
    jobs = []
    for n, v in (tuple(int(x) for x in s.split("x")) for s in shapes.split(",")):
        for dt in dtypes.split(","):
            def check(n=n, v=v, dt=dt):
                out = check_correctness(runnable, n, v, dt, device, T, alpha)
                for c in out:
                    checks[(c["provider"], n, v, dt)] = c["status"]
                    ctx.checks.append({"area": "distill", **c})
                return []
            jobs.append((f"distill check {n}x{v} {dt}", check))
            for p in runnable:
                def job(p=p, n=n, v=v, dt=dt):
                    r = ctx.call(measure, p, n, v, dt, device, T, alpha, warmup, reps,
                                 ROTATE_BYTES[device])
                    return [C.suite_row("distill", "distill_loss", p, f"{n}x{v}", device=device,
                                        dtype=dt, size=n * v, result=r, stock="torch_eager",
                                        nbytes=3 * n * v * DTYPES[dt].itemsize,
                                        check=checks.get((p, n, v, dt), ""), note=notes.get(p, ""))]
                jobs.append((f"distill {p} {n}x{v} {dt}", job))
    return skipped, jobs


if __name__ == "__main__":
    sys.exit(main())
