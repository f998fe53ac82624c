"""Benchmark: fused linear + distillation loss (sparsedistill.fused_linear_distillation_loss),
forward + backward from the hidden states, against the stock composite that materialises both
models' logits. An area of `python -m benchmarks` (suite_jobs below).

Providers (one step = loss + backward w.r.t. student_hidden and student_weight; teacher frozen):
  torch_eager     F.linear for both models + alpha*T^2*kl_div(log_softmax(s/T), softmax(t/T),
                  "batchmean") + (1-alpha)*cross_entropy(s, y)
  torch_compile   the same function under torch.compile (compile time excluded by the warm-up)
  linear_distill  F.linear for both models + sparsedistill.distillation_loss on the logits
  sparsedistill   sparsedistill.fused_linear_distillation_loss (chunked: never the full logits)
  liger           Liger-Kernel's LigerFusedLinearJSDLoss (beta=0: forward KL, no T^2 factor);
                  CUDA only, when liger_kernel imports
Peak memory: what one step needs beyond its inputs, the gradients it returns included (see
bench_distill.py and _common.peak_extra_bytes). The note gives the bytes of logits alive at once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _common as C

PROVIDERS = ["torch_eager", "torch_compile", "linear_distill", "sparsedistill", "liger"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SUITE = {  # (tokens x hidden x vocab) shapes, dtypes, (warmup, reps) by mode
    "tiny": ("128x64x1000", "float32", (1, 3)),
    "quick": ("512x256x8000", "float32", (1, 5)),
    "full": ("2048x1024x32000,1024x2048x128256", "float32,bfloat16", (1, 5)),
}
T, ALPHA = 4.0, 0.5


def composite(hs, ws, ht, wt, y):
    s, t = F.linear(hs, ws), F.linear(ht, wt)
    soft = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean")
    return ALPHA * soft * T * T + (1 - ALPHA) * F.cross_entropy(s, y)


def make_loss_fn(provider: str, device: str):
    import sparsedistill as sd
    if provider == "torch_eager":
        return composite
    if provider == "torch_compile":
        return torch.compile(composite, dynamic=False)
    if provider == "linear_distill":
        return lambda hs, ws, ht, wt, y: sd.distillation_loss(F.linear(hs, ws), F.linear(ht, wt), y,
                                                              T=T, alpha=ALPHA)
    if provider == "sparsedistill":
        return lambda hs, ws, ht, wt, y: sd.fused_linear_distillation_loss(hs, ws, ht, wt, y, T=T,
                                                                           alpha=ALPHA)
    if provider == "liger":
        if device != "cuda":
            raise RuntimeError("liger runs on CUDA only (Triton)")
        try:
            from liger_kernel.transformers import LigerFusedLinearJSDLoss
        except Exception as e:
            raise RuntimeError(f"liger_kernel is not importable ({type(e).__name__})") from None
        jsd = LigerFusedLinearJSDLoss(jsd_beta=0.0, temperature=T)  # forward KL, no T^2
        return lambda hs, ws, ht, wt, y: jsd(hs, ws, ht, wt, y)
    raise ValueError(f"unknown provider {provider!r}")


def make_inputs(n, h, v, dtype, device, seed=0):
    g = torch.Generator(device).manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, device=device) * scale).to(dtype)
    hs, ws = r(n, h).requires_grad_(), r(v, h, scale=h ** -0.5).requires_grad_()
    ht, wt = r(n, h), r(v, h, scale=h ** -0.5)
    y = torch.randint(0, v, (n,), device=device, generator=g)
    return hs, ws, ht, wt, y


def measure(provider, n, h, v, dtype_name, device, warmup, reps) -> dict:
    try:
        fn = make_loss_fn(provider, device)
        hs, ws, ht, wt, y = make_inputs(n, h, v, DTYPES[dtype_name], device)

        def reset():
            hs.grad = ws.grad = None

        def step():
            reset()
            fn(hs, ws, ht, wt, y).backward()
        for _ in range(max(warmup, 1)):
            step()
        out = C.summarize_ms(C.time_steps(step, device, reps))
        peak, method = C.peak_extra_bytes(step, device, repeats=2 if device == "cpu" else 1, reset=reset)
        return {**out, "peak_bytes": peak, "peak_method": method}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]}


def check(n, h, v, dtype_name, device) -> dict:
    """Loss and gradients of the fused loss against torch_eager on the same inputs."""
    hs, ws, ht, wt, y = make_inputs(n, h, v, DTYPES[dtype_name], device)
    out = []
    for p in ("torch_eager", "sparsedistill"):
        hs.grad = ws.grad = None
        loss = make_loss_fn(p, device)(hs, ws, ht, wt, y)
        loss.backward()
        out.append((loss.detach().float(), hs.grad.float(), ws.grad.float()))
    err = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(out[1], out[0]))
    tol = 1e-3 if dtype_name == "float32" else 3e-2
    return {"provider": "sparsedistill", "shape": f"{n}x{h}x{v}", "dtype": dtype_name,
            "rel_err": err, "status": "ok" if err <= tol else f"WARNING {err:.2e} > {tol:g}"}


def logits_note(provider, n, h, v, dtype_name) -> str:
    from sparsedistill.distill.fused_linear import default_chunk_rows
    if provider == "sparsedistill":
        rows = default_chunk_rows(n, v, weight_bytes=4 * 2 * v * h)
        return f"logits alive: {3 * rows * v * 4 / C.MiB:.0f} MiB ({rows}-row chunks, 2 models + grad, f32)"
    if provider == "liger":
        return ""
    return f"logits alive: >= {2 * n * v * DTYPES[dtype_name].itemsize / C.MiB:.0f} MiB (both models' logits)"


def suite_jobs(ctx):
    device = ctx.device
    shapes, dtypes, (warmup, reps) = SUITE[ctx.mode]
    skipped, runnable = [], []
    for p in [p for p in PROVIDERS if ctx.wants(p)]:
        try:
            make_loss_fn(p, device) if p != "torch_compile" else None
            runnable.append(p)
        except RuntimeError as e:
            skipped.append(C.skipped_row("fused_linear", "fused_linear_distill", p, device, str(e),
                                         "torch_eager"))
    checks, jobs = {}, []
    for n, h, v in (tuple(int(x) for x in s.split("x")) for s in shapes.split(",")):
        for dt in dtypes.split(","):
            def run_check(n=n, h=h, v=v, dt=dt):
                c = check(n, h, v, dt, device)
                checks[(n, h, v, dt)] = c["status"]
                ctx.checks.append({"area": "fused_linear", **c})
                return []
            if "sparsedistill" in runnable:
                jobs.append((f"fused_linear check {n}x{h}x{v} {dt}", run_check))
            for p in runnable:
                def job(p=p, n=n, h=h, v=v, dt=dt):
                    r = ctx.call(measure, p, n, h, v, dt, device, warmup, reps)
                    return [C.suite_row("fused_linear", "fused_linear_distill", p, f"{n}x{h}x{v}",
                                        device=device, dtype=dt, size=n * v, result=r,
                                        stock="torch_eager", flops=8 * n * h * v,  # 4 GEMMs
                                        nbytes=2 * (n + v) * h * DTYPES[dt].itemsize,  # inputs read
                                        check=checks.get((n, h, v, dt), "") if p == "sparsedistill" else "",
                                        note=logits_note(p, n, h, v, dt))]
                jobs.append((f"fused_linear {p} {n}x{h}x{v} {dt}", job))
    return skipped, jobs
