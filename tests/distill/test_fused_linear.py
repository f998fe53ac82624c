"""sparsedistill.fused_linear_distillation_loss: equal to distillation_loss on the explicit
logits, gradients against float64 autograd of the textbook composite, chunking, softcap and
logit_scale, vocabulary mismatch, bad input, the registration (opcheck, torch.compile), the
native kernel against the reference, and Hugging Face causal LMs when transformers is there."""
import pytest
import torch
import torch.nn.functional as F

import sparsedistill
from sparsedistill.distill import fused_linear_reference as R
from sparsedistill.distill.fused_linear import default_chunk_rows

from _helpers import TOL, same_error_everywhere, skip_unless_serving

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
OP = torch.ops.sparsedistill.fused_linear_distill
FUSED = sparsedistill.fused_linear_distillation_loss


def make(n=23, hs=16, ht=24, v=50, vt=None, dtype=torch.float32, device="cpu", lead=None, bias=False):
    g = torch.Generator().manual_seed(1)
    shape = (lead or (n,))
    x = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    d = dict(h_s=x(*shape, hs), w_s=x(v, hs, scale=0.5), h_t=x(*shape, ht), w_t=x(vt or v, ht, scale=0.5),
             y=torch.randint(0, v, shape, generator=g).to(device))
    if bias:
        d.update(b_s=x(v, scale=0.5), b_t=x(vt or v, scale=0.5))
    return d


def logits(h, w, b=None, logit_scale=1.0, softcap=None):
    z = h @ w.T
    if b is not None:
        z = z + b
    z = z * logit_scale
    return softcap * torch.tanh(z / softcap) if softcap else z


def leaf(x, dtype=None):
    return x.detach().clone().to(dtype or x.dtype).requires_grad_(True)


def ours(d, grad_output=2.0, **kw):
    """Our loss and the gradients of grad_output * loss.sum() for h_s, w_s (and b_s)."""
    h, w = leaf(d["h_s"]), leaf(d["w_s"])
    b = leaf(d["b_s"]) if "b_s" in d else None
    loss = FUSED(h, w, d["h_t"], d["w_t"], kw.pop("y", d["y"]), student_bias=b,
                 teacher_bias=d.get("b_t"), **kw)
    (loss.sum() * grad_output).backward()
    return loss.detach(), h.grad, w.grad, (b.grad if b is not None else None)


def on_logits(d, dtype=torch.float32, grad_output=2.0, pad_to=None, logit_scale=1.0,
              softcap=None, **kw):
    """distillation_loss on the explicit logits, computed in `dtype` from the same inputs."""
    h, w = leaf(d["h_s"], dtype), leaf(d["w_s"], dtype)
    b = leaf(d["b_s"], dtype) if "b_s" in d else None
    s = logits(h, w, b, logit_scale, softcap)
    t = logits(d["h_t"].to(dtype), d["w_t"].to(dtype), d["b_t"].to(dtype) if "b_t" in d else None,
               logit_scale, softcap)
    if pad_to:
        s = F.pad(s, (0, pad_to - s.shape[-1]), value=float("-inf"))
        t = F.pad(t, (0, pad_to - t.shape[-1]), value=float("-inf"))
    s.retain_grad()
    loss = sparsedistill.distillation_loss(s, t, kw.pop("y", d["y"]), **kw)
    (loss.sum() * grad_output).backward()
    return Grads((loss.detach(), h.grad, w.grad, (b.grad if b is not None else None)),
                 rounding_slack(h, w, s.grad[..., :w.shape[0]]))


class Grads(tuple):
    """on_logits' (loss, grad_h, grad_w, grad_b), with .slack from rounding_slack."""

    def __new__(cls, values, slack):
        self = super().__new__(cls, values)
        self.slack = slack
        return self


def rounding_slack(h, w, g):
    """What rounding the logits' gradient G to bf16 in the two backward GEMMs (as autograd's bf16
    matmuls do, and the bf16 CPU kernel) may change, per element: 2^-8 (|G| @ |W|) for grad_h
    and 2^-8 (|G|.T @ |h|) for grad_w; (None, slack_h, slack_w, None)."""
    g = g.detach().double().abs().reshape(-1, g.shape[-1])
    x = h.detach().double().abs().reshape(-1, h.shape[-1])
    slack_h = (g @ w.detach().double().abs()).reshape(h.shape) * 2.0 ** -8
    return None, slack_h, (g.T @ x) * 2.0 ** -8, None


def assert_same(got, want, dtype, slack=None):
    """Equal within the dtype's tolerance; for bf16 also within `slack` (rounding_slack)."""
    slack = slack or [None] * len(want)
    for g, w, extra in zip(got, want, slack):
        if w is None:
            assert g is None
            continue
        assert g.dtype == dtype
        if dtype != torch.bfloat16 or extra is None:
            torch.testing.assert_close(g.double().cpu(), w.double().cpu(), **TOL[dtype])
            continue
        tol = TOL[dtype]["atol"] + TOL[dtype]["rtol"] * w.double().cpu().abs() + extra.cpu()
        excess = (g.double().cpu() - w.double().cpu()).abs() - tol
        assert excess.max() <= 0, f"off by {excess.max().item():.3g} beyond the tolerance"


def textbook64(d, T, alpha, logit_scale=1.0, softcap=None, grad_output=1.0):
    """float64 autograd of the textbook composite: F.linear both, KL * T^2, cross-entropy."""
    h, w = leaf(d["h_s"], torch.float64), leaf(d["w_s"], torch.float64)
    b = leaf(d["b_s"], torch.float64) if "b_s" in d else None
    s = logits(h, w, b, logit_scale, softcap).reshape(-1, w.shape[0])
    t = logits(d["h_t"].double(), d["w_t"].double(), d["b_t"].double() if "b_t" in d else None,
               logit_scale, softcap).reshape(-1, w.shape[0])
    y = d["y"].reshape(-1)
    soft = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
    loss = alpha * soft + (1 - alpha) * F.cross_entropy(s, y)
    (loss * grad_output).backward()
    return loss.detach(), h.grad, w.grad, (b.grad if b is not None else None)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence,beta", [("kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3), ("jsd", 0.0)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", ["no labels", "some ignored", "all ignored"])
def test_matches_distillation_loss_on_logits(device, dtype, divergence, beta, reduction, ignore):
    d = make(dtype=dtype, device=device)
    y = None if ignore == "no labels" else d["y"].clone()
    if ignore == "some ignored":
        y[::4] = -100
    elif ignore == "all ignored":
        y[:] = -100
    opts = dict(y=y, T=2.0, alpha=0.3, divergence=divergence, beta=beta, reduction=reduction)
    got = ours(d, chunk_rows=7, **opts)
    want = on_logits(d, **opts)  # float32 logits of the same (rounded) inputs
    assert_same(got, [w.to(dtype) for w in want[:3]] + [None], dtype, want.slack)


@pytest.mark.parametrize("dtype", DTYPES)
def test_3d_inputs_with_bias(device, dtype):
    d = make(lead=(3, 7), dtype=dtype, device=device, bias=True)
    d["y"][0, :2] = -100
    got = ours(d, chunk_rows=5)
    want = on_logits(d)
    assert got[0].shape == ()
    assert_same(got, [w.to(dtype) for w in want], dtype, want.slack)
    rows = ours(d, chunk_rows=5, reduction="none")
    assert rows[0].shape == (3, 7)


@pytest.mark.parametrize("softcap,logit_scale", [(None, 1.0), (None, 0.7), (3.0, 1.0), (2.5, 1.3)])
@pytest.mark.parametrize("bias", [False, True])
def test_gradients_against_float64_textbook(device, softcap, logit_scale, bias):
    d = make(device=device, bias=bias)
    got = ours(d, grad_output=1.5, T=3.0, alpha=0.4, chunk_rows=6, softcap=softcap, logit_scale=logit_scale)
    want = textbook64(d, 3.0, 0.4, logit_scale, softcap, grad_output=1.5)
    for g, w in zip(got, want):
        if w is not None:
            torch.testing.assert_close(g.double().cpu(), w.cpu(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_chunk_size_gives_the_same_result(device, dtype):
    d = make(n=29, dtype=dtype, device=device, bias=True)
    base = ours(d, chunk_rows=29)
    for chunk in (1, 7, 13, 100, None):
        got = ours(d, chunk_rows=chunk)
        for g, b in zip(got, base):
            torch.testing.assert_close(g.double(), b.double(), **TOL[dtype])


def test_default_chunk_rows_fits_the_budget():
    assert default_chunk_rows(100000, 128256) == (96 << 20) // (8 * 128256)
    assert default_chunk_rows(10, 1000) == 10
    assert default_chunk_rows(0, 1000) == 1
    assert default_chunk_rows(10 ** 6, 10 ** 9) == 1
    # Large weights raise the budget to an eighth of their float32 bytes, at most 512 MiB.
    w = 4 * 2 * 128256 * 2048
    assert default_chunk_rows(100000, 128256, weight_bytes=w) == (w // 8) // (8 * 128256)
    assert default_chunk_rows(100000, 128256, weight_bytes=1 << 40) == (512 << 20) // (8 * 128256)
    assert default_chunk_rows(100000, 32000, weight_bytes=4 * 2 * 32000 * 1024) == (96 << 20) // (8 * 32000)


@pytest.fixture(params=["brgemm", "ours", "onednn"])
def cpu_bf16_gemm(request, monkeypatch):
    """Each CPU kernel of a bf16 head's GEMMs: ATen's brgemm on AMX tiles (the default where the
    CPU has them), our AVX512_BF16 GEMM (the default elsewhere), or oneDNN's bf16 mode on float32
    copies; a kernel the CPU lacks falls back to the next."""
    monkeypatch.setenv("SPARSEDISTILL_CPU_BF16_GEMM", request.param)
    return request.param


def test_bf16_logits_are_not_rounded_first(device, cpu_bf16_gemm):
    """The chunk's logits come from float32 products of the bf16 inputs, not bf16 logits."""
    d = make(dtype=torch.bfloat16, device=device, hs=256)
    got = ours(d, chunk_rows=8)
    f32 = on_logits(d, dtype=torch.float32)
    b16 = on_logits(d, dtype=torch.bfloat16)
    err = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
    assert err(got[1], f32[1]) < err(b16[1], f32[1])


@pytest.mark.parametrize("hs,v,chunk", [(130, 197, 13), (15, 70, 6), (64, 64, 24)])
def test_bf16_odd_sizes(device, hs, v, chunk, cpu_bf16_gemm):
    """bf16 on the CPU's AVX512_BF16 GEMM (even hidden sizes) or the float32 fallback (odd):
    register-tile and panel tails (rows not a multiple of 6, columns of 64), odd chunk rows."""
    d = make(n=37, hs=hs, ht=hs + 2, v=v, dtype=torch.bfloat16, device=device, bias=True)
    got = ours(d, chunk_rows=chunk, T=3.0, alpha=0.4)
    want = on_logits(d, T=3.0, alpha=0.4)
    assert_same(got, [w.to(torch.bfloat16) for w in want], torch.bfloat16, want.slack)


def test_bf16_call_leaves_the_matmul_precision_setting_as_it_was():
    """The CPU kernel may run a bf16 model's GEMMs in oneDNN's bf16 mode; the global setting is
    restored after the call and after a rejected one."""
    mkl = torch.backends.mkldnn.matmul
    before = mkl.fp32_precision
    d = make(dtype=torch.bfloat16, hs=64, v=300)
    ours(d, chunk_rows=7)
    assert mkl.fp32_precision == before
    with pytest.raises(ValueError):
        FUSED(d["h_s"], d["w_s"], d["h_t"], d["w_t"], d["y"] + 1000)
    assert mkl.fp32_precision == before
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    assert torch.allclose(a @ b, (a.double() @ b.double()).float(), rtol=1e-5, atol=1e-4)  # float32 still


# ----------------------------------------------------------------------------- vocabularies


def test_vocab_exact_names_both_sizes(device):
    d = make(v=50, vt=53, device=device)
    with pytest.raises(ValueError, match=r"student_weight has 50 .*teacher_weight has 53"):
        FUSED(d["h_s"], d["w_s"], d["h_t"], d["w_t"], d["y"])


@pytest.mark.parametrize("divergence", ["kl", "jsd", "reverse_kl"])
@pytest.mark.parametrize("sizes", [(50, 47), (47, 50)])
def test_vocab_pad_gives_missing_classes_probability_zero(device, sizes, divergence):
    vs, vt = sizes
    d = make(v=vs, vt=vt, device=device)
    d["y"] = d["y"].clamp(max=min(vs, vt) - 1)
    got = ours(d, chunk_rows=5, vocab="pad", divergence=divergence)
    want = on_logits(d, pad_to=max(sizes), divergence=divergence)
    # A divergence that puts one model's mass on a class the other lacks (probability 0) is
    # infinite: forward KL when the teacher has more classes, reverse KL when the student has.
    infinite = (divergence == "kl" and vt > vs) or (divergence == "reverse_kl" and vs > vt)
    if infinite:
        assert torch.isinf(got[0]) and torch.isinf(want[0])
        return
    assert torch.isfinite(got[0])
    for g, w in zip(got, want):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_pad_label_beyond_student_vocab_is_rejected(device):
    d = make(v=47, vt=50, device=device)
    y = d["y"].clone()
    y[2] = 48
    with pytest.raises(ValueError, match="row 2 holds 48"):
        FUSED(d["h_s"], d["w_s"], d["h_t"], d["w_t"], y, vocab="pad")


# ----------------------------------------------------------------------------- autograd


def test_reduction_none_backward_recomputes_with_row_weights(device):
    d = make(device=device, bias=True)
    h, w, b = leaf(d["h_s"]), leaf(d["w_s"]), leaf(d["b_s"])
    rows = FUSED(h, w, d["h_t"], d["w_t"], d["y"], student_bias=b, teacher_bias=d["b_t"],
                 reduction="none", chunk_rows=4)
    weights = torch.linspace(-1, 2, rows.shape[0], device=device)
    (rows * weights).sum().backward()
    want = on_logits(d, reduction="none", grad_output=1.0)
    # on_logits' gradient is for rows.sum(); redo it with the weights
    h2, w2, b2 = leaf(d["h_s"]), leaf(d["w_s"]), leaf(d["b_s"])
    r2 = sparsedistill.distillation_loss(logits(h2, w2, b2), logits(d["h_t"], d["w_t"], d["b_t"]),
                                         d["y"], reduction="none")
    (r2 * weights).sum().backward()
    torch.testing.assert_close(rows.detach(), want[0])
    for g, w_ in ((h.grad, h2.grad), (w.grad, w2.grad), (b.grad, b2.grad)):
        torch.testing.assert_close(g, w_, rtol=1e-4, atol=1e-5)


def test_teacher_gets_no_gradient_and_no_grad_forward(device):
    d = make(device=device)
    ht, wt = leaf(d["h_t"]), leaf(d["w_t"])
    h = leaf(d["h_s"])
    FUSED(h, d["w_s"], ht, wt, d["y"]).backward()
    assert ht.grad is None and wt.grad is None and h.grad is not None
    with torch.no_grad():
        loss = FUSED(h, d["w_s"], d["h_t"], d["w_t"], d["y"])
    assert not loss.requires_grad


def test_double_backward_and_second_backward_raise(device):
    d = make(device=device)
    h = leaf(d["h_s"])
    loss = FUSED(h, d["w_s"], d["h_t"], d["w_t"], d["y"])
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, h, create_graph=True)
    loss = FUSED(h, d["w_s"], d["h_t"], d["w_t"], d["y"])
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_return_parts_and_module(device):
    d = make(device=device)
    loss, soft, hard = FUSED(d["h_s"], d["w_s"], d["h_t"], d["w_t"], d["y"], T=2.0, alpha=0.25,
                             return_parts=True)
    torch.testing.assert_close(loss, 0.25 * soft + 0.75 * hard)
    ref = sparsedistill.distillation_loss(d["h_s"] @ d["w_s"].T, d["h_t"] @ d["w_t"].T, d["y"],
                                          T=2.0, alpha=0.25, return_parts=True)
    for a, b in zip((loss, soft, hard), ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    mod = sparsedistill.FusedLinearDistillationLoss(T=2.0, alpha=0.25, chunk_rows=3)
    torch.testing.assert_close(mod(d["h_s"], d["w_s"], d["h_t"], d["w_t"], d["y"]), loss)
    assert "chunk_rows=3" in repr(mod)
    with pytest.raises(ValueError, match="vocab"):
        sparsedistill.FusedLinearDistillationLoss(vocab="truncate")


def test_empty_batch(device):
    d = make(n=0, device=device)
    loss, hg, wg, _ = ours(d)
    assert loss.item() == 0 and hg.shape == (0, 16) and torch.all(wg == 0)


# ----------------------------------------------------------------------------- bad input


def bad_public_calls(device):
    d = make(device=device, bias=True)
    hs, ws, ht, wt, y, bs = d["h_s"], d["w_s"], d["h_t"], d["w_t"], d["y"], d["b_s"]
    return [
        ("student_weight", lambda: FUSED(hs, ws[:, :15], ht, wt, y)),           # hidden size mismatch
        ("teacher_weight", lambda: FUSED(hs, ws, ht, wt[:, :5], y)),
        ("teacher_hidden", lambda: FUSED(hs, ws, ht[:5], wt, y)),
        ("student_hidden", lambda: FUSED(hs[0], ws, ht[0], wt, y[0])),
        ("student_hidden", lambda: FUSED(hs.long(), ws, ht, wt, y)),
        ("student_weight", lambda: FUSED(hs, ws.double(), ht, wt, y)),
        ("teacher_weight", lambda: FUSED(hs, ws, ht, wt.to("meta"), y)),
        ("student_bias", lambda: FUSED(hs, ws, ht, wt, y, student_bias=bs[:3])),
        ("student_bias", lambda: FUSED(hs, ws, ht, wt, y, student_bias=bs.half())),
        ("true_labels", lambda: FUSED(hs, ws, ht, wt, y[:4])),
        ("true_labels", lambda: FUSED(hs, ws, ht, wt, y.float())),
        ("true_labels", lambda: FUSED(hs, ws, ht, wt, torch.full_like(y, 50))),
        ("T", lambda: FUSED(hs, ws, ht, wt, y, T=0)),
        ("alpha", lambda: FUSED(hs, ws, ht, wt, y, alpha=2)),
        ("softcap", lambda: FUSED(hs, ws, ht, wt, y, softcap=-1.0)),
        ("logit_scale", lambda: FUSED(hs, ws, ht, wt, y, logit_scale=0.0)),
        ("vocab", lambda: FUSED(hs, ws, ht, wt, y, vocab="truncate")),
        ("chunk_rows", lambda: FUSED(hs, ws, ht, wt, y, chunk_rows=0)),
        ("reduction", lambda: FUSED(hs, ws, ht, wt, y, reduction="batchmean")),
        ("divergence", lambda: FUSED(hs, ws, ht, wt, y, divergence="tvd")),
    ], [hs, ws, ht, wt, y, bs]


def test_bad_input_names_the_argument_and_leaves_tensors_untouched(device):
    calls, tensors = bad_public_calls(device)
    before = [x.clone() for x in tensors]
    for name, call in calls:
        with pytest.raises((ValueError, TypeError), match=name):
            call()
    for x, b in zip(tensors, before):
        assert torch.equal(x, b)


def op_args(device, d=None, **changes):
    d = d or make(n=6, v=11, device=device, bias=True)
    names = ["student_hidden", "student_weight", "student_bias", "teacher_hidden", "teacher_weight",
             "teacher_bias", "labels", "row_weight", "T", "alpha", "beta", "divergence",
             "ignore_index", "logit_scale", "softcap", "pad_vocab", "chunk_rows", "compute_grad"]
    args = dict(zip(names, [d["h_s"], d["w_s"], d["b_s"], d["h_t"], d["w_t"], d["b_t"], d["y"],
                            torch.tensor(0.5, device=device), 2.0, 0.5, 0.5, 0, -100, 1.0, 0.0,
                            False, 4, True]))
    args.update(changes)
    return list(args.values())


def bad_op_calls(device):
    d = make(n=6, v=11, device=device, bias=True)
    return {
        "student_hidden 1-D": op_args(device, student_hidden=d["h_s"][0]),
        "student_hidden dtype": op_args(device, student_hidden=d["h_s"].int()),
        "student_weight hidden size": op_args(device, student_weight=d["w_s"][:, :5]),
        "student_weight dtype": op_args(device, student_weight=d["w_s"].double()),
        "student_bias shape": op_args(device, student_bias=d["b_s"][:3]),
        "teacher_hidden rows": op_args(device, teacher_hidden=d["h_t"][:2]),
        "teacher_weight hidden size": op_args(device, teacher_weight=d["w_t"][:, :3]),
        "teacher_bias dtype": op_args(device, teacher_bias=d["b_t"].half()),
        "vocab differs": op_args(device, teacher_weight=d["w_t"][:9], teacher_bias=d["b_t"][:9]),
        "labels dtype": op_args(device, labels=d["y"].int()),
        "labels shape": op_args(device, labels=d["y"][:2]),
        "row_weight": op_args(device, row_weight=torch.ones(3, device=device)),
        "T": op_args(device, T=0.0),
        "alpha": op_args(device, alpha=1.5),
        "divergence": op_args(device, divergence=5),
        "logit_scale": op_args(device, logit_scale=-1.0),
        "softcap": op_args(device, softcap=-2.0),
        "chunk_rows": op_args(device, chunk_rows=0),
        "label range": op_args(device, labels=torch.tensor([0, 1, 11, 2, 3, 4], device=device)),
    }


@pytest.mark.parametrize("case", list(bad_op_calls("cpu")))
def test_op_rejects_the_same_everywhere(device, case):
    if device == "cuda" and case == "label range":
        pytest.skip("the CUDA kernel writes a NaN row for a bad label (the public function checks it)")
    err = same_error_everywhere("fused_linear_distill", R.fused_linear_distill, bad_op_calls(device)[case], device)
    assert str(err).startswith("sparsedistill: ")


# ----------------------------------------------------------------------------- registration


def test_opcheck(device):
    d = make(n=9, v=13, device=device, bias=True)
    hs, ws, bs = leaf(d["h_s"]), leaf(d["w_s"]), leaf(d["b_s"])
    one = torch.tensor(1.0, device=device)
    samples = [
        op_args(device, d, student_hidden=hs, student_weight=ws, student_bias=bs, row_weight=one),
        op_args(device, d, student_hidden=hs, student_weight=ws, student_bias=None, teacher_bias=None,
                labels=None, divergence=2, softcap=3.0, logit_scale=0.5, row_weight=one),
        op_args(device, d, student_hidden=hs, student_weight=ws, student_bias=bs, compute_grad=False,
                row_weight=torch.rand(9, device=device)),
        op_args(device, d, compute_grad=False, teacher_weight=d["w_t"][:10], teacher_bias=d["b_t"][:10],
                pad_vocab=True, divergence=2),
    ]
    for args in samples:
        torch.library.opcheck(OP, args, test_utils=("test_schema", "test_autograd_registration",
                                                    "test_faketensor", "test_aot_dispatch_dynamic"))


def test_torch_compile_fullgraph(device):
    d = make(device=device, bias=True)
    fn = torch.compile(lambda h, w, b, ht, wt, y: FUSED(h, w, ht, wt, y, T=3.0, alpha=0.4, student_bias=b,
                                                        chunk_rows=5, softcap=4.0),
                       fullgraph=True, backend="aot_eager")
    h, w, b = leaf(d["h_s"]), leaf(d["w_s"]), leaf(d["b_s"])
    loss = fn(h, w, b, d["h_t"], d["w_t"], d["y"])
    (loss * 2).backward()
    want = textbook64({k: v for k, v in d.items() if k != "b_t"}, 3.0, 0.4, softcap=4.0, grad_output=2.0)
    torch.testing.assert_close(loss.double(), want[0], rtol=1e-4, atol=1e-5)
    for g, w_ in zip((h.grad, w.grad, b.grad), want[1:]):
        torch.testing.assert_close(g.double(), w_, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", [0, 1, 2])
@pytest.mark.parametrize("pad", [False, True])
def test_native_kernel_matches_reference(device, dtype, divergence, pad, cpu_bf16_gemm):
    skip_unless_serving("fused_linear_distill", device)
    if dtype != torch.bfloat16 and cpu_bf16_gemm != "brgemm":
        pytest.skip("the CPU GEMM choice is for bf16 heads; the other dtypes run once")
    d = make(n=37, v=300, vt=290 if pad else None, dtype=dtype, device=device, bias=True)
    d["y"] = d["y"].clamp(max=289)
    d["y"][::5] = -100
    args = op_args(device, d, student_hidden=d["h_s"], student_weight=d["w_s"], student_bias=d["b_s"],
                   teacher_hidden=d["h_t"], teacher_weight=d["w_t"], teacher_bias=d["b_t"],
                   labels=d["y"], divergence=divergence, pad_vocab=pad, chunk_rows=10,
                   softcap=5.0, logit_scale=0.9, row_weight=torch.rand(37, device=device))
    got, want = OP(*args), R.fused_linear_distill(*args)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        # (pad with reverse KL: the student's extra classes make that divergence infinite)
        torch.testing.assert_close(g.double(), w.double(), equal_nan=True, **TOL[dtype])


def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    d = make(n=70, v=1000, dtype=torch.bfloat16, bias=True)
    got = ours({k: v.cuda() for k, v in d.items()}, chunk_rows=16, softcap=10.0)
    want = ours(d, chunk_rows=16, softcap=10.0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu().double(), w.double(), **TOL[torch.bfloat16])


# ----------------------------------------------------------------------------- Hugging Face


def test_hugging_face_causal_lms():
    transformers = pytest.importorskip("transformers")
    cfg = dict(vocab_size=97, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, max_position_embeddings=64)
    student = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=16, **cfg))
    teacher = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=24, **cfg)).eval()
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)[:, 1:]  # next-token labels, padding ignored
    h_s = student.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    with torch.no_grad():
        h_t = teacher.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    loss = FUSED(h_s, student.lm_head.weight, h_t, teacher.lm_head.weight, labels, chunk_rows=5)
    grads = torch.autograd.grad(loss, [student.lm_head.weight, student.model.norm.weight])
    s_logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1]
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1]
    want = sparsedistill.distillation_loss(s_logits, t_logits, labels)
    want_grads = torch.autograd.grad(want, [student.lm_head.weight, student.model.norm.weight])
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-5)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
