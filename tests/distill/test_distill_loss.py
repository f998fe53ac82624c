"""sparsedistill.distillation_loss against the stock composite computed in float64."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import sparsedistill
from sparsedistill.distill import reference as _reference
from sparsedistill._library import serves

from _helpers import TOL, skip_unless_native, skip_unless_serving

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
OP_RAW = torch.ops.sparsedistill.distill_loss


def OP(s, t, y, *args, grad_scale=1.0):
    """The raw op with a row weight (grad_scale) of 1 unless told otherwise."""
    return OP_RAW(s, t, y, torch.tensor(grad_scale, device=s.device), *args)


def stock_loss(s, t, y, T=4.0, alpha=0.5, *, divergence="kl", beta=0.5, reduction="mean",
               ignore_index=-100):
    """The stock composite in float64, generalised to every option of distillation_loss."""
    s, t = s.double().reshape(-1, s.shape[-1]), t.double().reshape(-1, t.shape[-1])
    log_q, log_p = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)

    def kl(log_a, log_b):  # KL(a || b) per row, with 0 * log 0 = 0 (stock kl_div gives NaN
        a = log_a.exp()      # where both are -inf, e.g. a vocabulary masked in both)
        return torch.where(a == 0, torch.zeros_like(a), a * (log_a - log_b)).sum(-1)

    if divergence == "kl" or (divergence == "jsd" and beta == 0):
        d = kl(log_p, log_q)
    elif divergence == "reverse_kl" or (divergence == "jsd" and beta == 1):
        d = kl(log_q, log_p)
    else:
        log_m = torch.logsumexp(torch.stack([log_p + torch.log(torch.tensor(beta)),
                                             log_q + torch.log(torch.tensor(1 - beta))]), 0)
        d = beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)
    soft = d * T * T
    if y is None:
        rows, count = soft, soft.numel()
    else:
        y = y.reshape(-1)
        hard = F.cross_entropy(s, y, reduction="none", ignore_index=ignore_index)
        valid = y != ignore_index
        rows = torch.where(valid, alpha * soft + (1 - alpha) * hard, torch.zeros_like(soft))
        count = int(valid.sum())
    if reduction == "none":
        return rows
    return rows.sum() / max(count, 1) if reduction == "mean" else rows.sum()


def make(shape, dtype, device, scale=3.0, label_dtype=torch.int64):
    s = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).to(device)
    t = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).to(device)
    y = torch.randint(0, shape[-1], shape[:-1], dtype=label_dtype, device=device)
    return s, t, y


def value_and_grad(fn, s, *args, grad_scale=2.0, **kwargs):
    """loss and d(grad_scale * loss.sum())/ds: grad_output is not 1."""
    s = s.detach().clone().requires_grad_(True)
    loss = fn(s, *args, **kwargs)
    (loss.sum() * grad_scale).backward()
    return loss.detach(), s.grad


def assert_close_to_oracle(s, t, y, dtype, **opts):
    got, got_grad = value_and_grad(sparsedistill.distillation_loss, s, t, y, **opts)
    opts_stock = {k: v for k, v in opts.items() if k not in ("return_parts",)}
    want, want_grad = value_and_grad(stock_loss, s.double(), t, y, **opts_stock)
    assert got.dtype == s.dtype and got_grad.dtype == s.dtype
    torch.testing.assert_close(got.double().cpu(), want.cpu(), **TOL[dtype])
    torch.testing.assert_close(got_grad.double().cpu(), want_grad.cpu(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (41, 3), (41, 1271), (7, 32000), (2, 9000)])
@pytest.mark.parametrize("grad_scale", [1.0, 2.0])
def test_textbook_call_matches_stock_composite(device, dtype, shape, grad_scale):
    s, t, y = make(shape, dtype, device)
    got, got_grad = value_and_grad(lambda s, t, y: sparsedistill.distillation_loss(s, t, y, 4, 0.5),
                                   s, t, y, grad_scale=grad_scale)

    def textbook(s, t, y, T=4, alpha=0.5):
        soft = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1),
                        reduction="batchmean") * (T ** 2)
        return alpha * soft + (1 - alpha) * F.cross_entropy(s, y)

    want, want_grad = value_and_grad(textbook, s.double(), t.double(), y, grad_scale=grad_scale)
    torch.testing.assert_close(got.double().cpu(), want.cpu(), **TOL[dtype])
    torch.testing.assert_close(got_grad.double().cpu(), want_grad.cpu(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence,beta", [("kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5),
                                             ("jsd", 0.1), ("jsd", 0.0), ("jsd", 1.0)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_divergences_and_reductions(device, dtype, divergence, beta, reduction):
    s, t, y = make((41, 1271), dtype, device)
    y[::5] = -100
    assert_close_to_oracle(s, t, y, dtype, T=2.0, alpha=0.3, divergence=divergence, beta=beta,
                           reduction=reduction)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_without_labels_is_soft_term_alone(device, divergence, reduction):
    s, t, _ = make((13, 517), torch.float32, device)
    assert_close_to_oracle(s, t, None, torch.float32, T=3.0, alpha=0.25, divergence=divergence,
                           reduction=reduction)


@pytest.mark.parametrize("dtype", DTYPES)
def test_3d_inputs_with_ignore_index(device, dtype):
    s, t, y = make((3, 17, 1000), dtype, device)
    y[0, :5] = 7  # ignore_index other than the default
    assert_close_to_oracle(s, t, y, dtype, T=4.0, alpha=0.5, ignore_index=7)
    rows = sparsedistill.distillation_loss(s, t, y, ignore_index=7, reduction="none")
    assert rows.shape == (3, 17)
    assert (rows[0, :5] == 0).all()


def test_mean_differs_from_batchmean_for_3d(device):
    # "mean" averages over the B*S rows; stock batchmean divides a (B, S, V) sum by B.
    s, t, _ = make((2, 5, 11), torch.float32, device)
    ours = sparsedistill.distillation_loss(s, t, None, T=1.0)
    batchmean = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")
    torch.testing.assert_close(ours * 5, batchmean)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", [0, 1, 2])
@pytest.mark.parametrize("with_labels", [True, False])
def test_native_kernel_matches_reference(device, dtype, divergence, with_labels):
    skip_unless_serving("distill_loss", device)
    s, t, y = make((37, 3001), dtype, device)
    y[3] = -100
    y = y if with_labels else None
    got = OP(s, t, y, 2.5, 0.4, 0.3, divergence, -100, True)
    want = _reference.distill_loss(s, t, y, torch.tensor(1.0, device=device), 2.5, 0.4, 0.3,
                                   divergence, -100, True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), **TOL[dtype])


def test_native_kernel_is_the_one_serving(device):
    skip_unless_native(device)
    assert serves("distill_loss", device) != "reference (pure PyTorch)"


def test_cpu_build_is_vectorised():
    build = sparsedistill.backend_info()["build"]
    if not build.get("native"):  # (the build config is read even when loading is disabled)
        pytest.skip("no native build")
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert build["cpu_isa"] in ("avx2", "avx512"), build


def test_reference_path_with_native_disabled():
    code = (
        "import torch, torch.nn.functional as F, sparsedistill as sd\n"
        "info = sd.backend_info()\n"
        "assert not info['native_loaded'] and 'disabled' in info['reason'], info\n"
        "assert info['ops']['distill_loss']['cpu'].startswith('reference'), info\n"
        "s = torch.randn(9, 301, requires_grad=True); t = torch.randn(9, 301)\n"
        "y = torch.randint(0, 301, (9,))\n"
        "l = sd.distillation_loss(s, t, y, 4, 0.5); l.backward()\n"
        "sd2 = s.detach().clone().requires_grad_()\n"
        "w = 0.5 * F.kl_div(F.log_softmax(sd2 / 4, 1), F.softmax(t / 4, 1), reduction='batchmean') * 16"
        " + 0.5 * F.cross_entropy(sd2, y); w.backward()\n"
        "torch.testing.assert_close(l, w); torch.testing.assert_close(s.grad, sd2.grad)\n"
        "print('reference ok')\n"
    )
    env = dict(os.environ, SPARSEDISTILL_DISABLE_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "reference ok" in out.stdout


def test_info_command_runs():
    out = subprocess.run([sys.executable, "-m", "sparsedistill"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "distill_loss" in out.stdout


# ----------------------------------------------------------------------------- edge cases


def test_empty_batch(device):
    s = torch.randn(0, 10, device=device, requires_grad=True)
    t = torch.randn(0, 10, device=device)
    y = torch.zeros(0, dtype=torch.long, device=device)
    loss = sparsedistill.distillation_loss(s, t, y)
    loss.backward()
    assert loss.item() == 0 and s.grad.shape == (0, 10)
    assert sparsedistill.distillation_loss(s, t, y, reduction="none").shape == (0,)


def test_all_ignored_gives_zero_not_nan(device):
    s, t, y = make((6, 50), torch.float32, device)
    s.requires_grad_(True)
    loss = sparsedistill.distillation_loss(s, t, torch.full_like(y, -100))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(s.grad) == 0


@pytest.mark.parametrize("where", ["student", "teacher"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_nan_and_inf_give_nan(device, where, bad, divergence):
    s, t, y = make((4, 3000), torch.float32, device)
    (s if where == "student" else t)[2, 1234] = bad
    rows = sparsedistill.distillation_loss(s, t, y, reduction="none", divergence=divergence)
    assert torch.isnan(rows[2]), rows
    assert torch.isfinite(rows[[0, 1, 3]]).all()
    assert torch.isnan(sparsedistill.distillation_loss(s, t, y, divergence=divergence))


def test_minus_inf_logits(device):
    s, t, y = make((3, 2500), torch.float32, device)
    t[0, :1500] = -float("inf")  # masked teacher vocabulary (a whole first tile): fine
    s[1, :2000] = t[1, :2000] = -float("inf")  # vocabulary masked in both, label outside it
    y[1] = 2100
    s[2, 17] = -float("inf")  # student rules out a class the teacher likes: KL is infinite
    rows = sparsedistill.distillation_loss(s, t, y, reduction="none")
    want = stock_loss(s, t, y, reduction="none")
    torch.testing.assert_close(rows[:2].double().cpu(), want[:2].cpu(), rtol=1e-4, atol=1e-5)
    assert rows[2] == float("inf")


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_logits_stay_finite(device, dtype):
    s, t, y = make((5, 700), dtype, device, scale=1.0)
    s, t = (s.sign() * 1e4).to(dtype), (t * 1e4).clamp(-1e4, 1e4).to(dtype)
    s[:, 0] = 1e4
    loss, grad = value_and_grad(sparsedistill.distillation_loss, s, t, y)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    want, want_grad = value_and_grad(stock_loss, s.double(), t, y)
    tol = dict(rtol=max(1e-3, TOL[dtype]["rtol"]), atol=max(1e-3, TOL[dtype]["atol"]))
    torch.testing.assert_close(loss.double().cpu(), want.cpu(), **tol)
    torch.testing.assert_close(grad.double().cpu(), want_grad.cpu(), **tol)


def test_teacher_gets_no_gradient_and_mixed_dtypes(device):
    s, t, y = make((8, 100), torch.float32, device)
    s.requires_grad_(True)
    t = t.to(torch.bfloat16).requires_grad_(True)
    sparsedistill.distillation_loss(s, t, y).backward()
    assert t.grad is None and s.grad is not None


def test_int32_labels_and_float64_logits(device):
    s, t, y = make((8, 100), torch.float64, device, label_dtype=torch.int32)
    got = sparsedistill.distillation_loss(s, t, y)
    torch.testing.assert_close(got, stock_loss(s, t, y.long()), rtol=1e-5, atol=1e-6)


def test_return_parts_and_module(device):
    s, t, y = make((16, 300), torch.float32, device)
    loss, soft, hard = sparsedistill.distillation_loss(s, t, y, T=2.0, alpha=0.7, return_parts=True)
    torch.testing.assert_close(loss, 0.7 * soft + 0.3 * hard)
    torch.testing.assert_close(hard.double(), F.cross_entropy(s.double(), y))
    module = sparsedistill.DistillationLoss(T=2.0, alpha=0.7)
    torch.testing.assert_close(module(s, t, y), loss)
    assert "T=2.0" in repr(module)


def test_backward_twice_raises_clear_error(device):
    s, t, y = make((4, 30), torch.float32, device)
    s.requires_grad_(True)
    loss = sparsedistill.distillation_loss(s, t, y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


def test_no_grad_forward(device):
    s, t, y = make((4, 30), torch.float32, device)
    s.requires_grad_(True)
    with torch.no_grad():
        loss = sparsedistill.distillation_loss(s, t, y)
    torch.testing.assert_close(loss.double(), stock_loss(s.detach(), t, y), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def bad_calls(device):
    s, t, y = make((4, 10), torch.float32, device)
    return [
        ("teacher_logits", lambda: sparsedistill.distillation_loss(s, t[:, :9], y)),
        ("true_labels", lambda: sparsedistill.distillation_loss(s, t, y[:3])),
        ("true_labels", lambda: sparsedistill.distillation_loss(s, t, y.float())),
        ("true_labels", lambda: sparsedistill.distillation_loss(s, t, torch.tensor([0, 1, 10, 2], device=device))),
        ("true_labels", lambda: sparsedistill.distillation_loss(s, t, torch.tensor([0, -3, 1, 2], device=device))),
        ("T", lambda: sparsedistill.distillation_loss(s, t, y, T=0)),
        ("T", lambda: sparsedistill.distillation_loss(s, t, y, T=-1.0)),
        ("alpha", lambda: sparsedistill.distillation_loss(s, t, y, alpha=1.5)),
        ("beta", lambda: sparsedistill.distillation_loss(s, t, y, divergence="jsd", beta=-0.1)),
        ("student_logits", lambda: sparsedistill.distillation_loss(s.long(), t, y)),
        ("teacher_logits", lambda: sparsedistill.distillation_loss(s, t.int(), y)),
        ("student_logits", lambda: sparsedistill.distillation_loss(s[0], t[0], y[0])),
        ("reduction", lambda: sparsedistill.distillation_loss(s, t, y, reduction="batchmean")),
        ("divergence", lambda: sparsedistill.distillation_loss(s, t, y, divergence="tvd")),
        ("teacher_logits", lambda: sparsedistill.distillation_loss(s, t.to("meta"), y)),
        ("true_labels", lambda: sparsedistill.distillation_loss(s, t, y.to("meta"))),
    ], (s, t, y)


def test_bad_input_names_the_argument_and_leaves_tensors_untouched(device):
    calls, tensors = bad_calls(device)
    before = [x.clone() for x in tensors]
    for name, call in calls:
        with pytest.raises((ValueError, TypeError, RuntimeError), match=name):
            call()
    for x, b in zip(tensors, before):
        assert torch.equal(x, b)


def test_op_level_checks_name_the_argument(device):
    s, t, y = make((4, 10), torch.float32, device)
    with pytest.raises(Exception, match="teacher"):
        OP(s, t[:, :5], y, 1.0, 0.5, 0.5, 0, -100, False)
    with pytest.raises(Exception, match="labels"):
        OP(s, t, y.int(), 1.0, 0.5, 0.5, 0, -100, False)
    if device == "cpu":  # (CUDA answers an out-of-range label with a NaN row instead of a trap)
        with pytest.raises(Exception, match="labels"):
            OP(s, t, torch.full_like(y, 11), 1.0, 0.5, 0.5, 0, -100, False)
    with pytest.raises(Exception, match="T"):
        OP(s, t, y, 0.0, 0.5, 0.5, 0, -100, False)


# ----------------------------------------------------------------------------- registration


def opcheck_samples(device):
    s, t, y = make((6, 37), torch.float32, device)
    y[1] = -100
    sr = s.clone().requires_grad_(True)
    b, bt, by = make((3, 129), torch.bfloat16, device)
    w = torch.tensor(0.25, device=device)
    one = torch.tensor(1.0, device=device)
    return [
        (sr, t, y, w, 4.0, 0.5, 0.5, 0, -100, True),
        (sr, t, None, one, 2.0, 0.5, 0.5, 1, -100, True),
        (sr, t, y, w, 2.0, 0.2, 0.3, 2, -100, True),
        (s, t, y, one, 1.0, 0.5, 0.5, 0, -100, False),
        (b.requires_grad_(True), bt, by, w, 3.0, 0.5, 0.5, 0, -100, True),
        (s[:0], t[:0], y[:0], one, 4.0, 0.5, 0.5, 0, -100, False),
    ]


def test_opcheck(device):
    for args in opcheck_samples(device):
        # The op's gradient output is a workspace that backward scales in place (see _ops.py):
        # when grad_scale != 1 eager backward changes it and AOTAutograd's functional copy does
        # not, so that comparison is left out for those samples (torch.compile is tested below).
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
        if float(args[3]) == 1.0:
            utils += ("test_aot_dispatch_dynamic",)
        torch.library.opcheck(OP_RAW, args, test_utils=utils)
    for dtype in DTYPES:
        grad = torch.randn(5, 77, device=device).to(dtype)
        torch.library.opcheck(torch.ops.sparsedistill.scale_rows_,
                              (grad, torch.tensor([1.0, 2.0, 0.5, 1.0, -3.0], device=device)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_rows_matches_reference_and_skips_ones(device, dtype):
    grad = torch.randn(7, 1283, device=device).to(dtype)
    scale = torch.tensor([1.0, 2.0, 0.5, 1.0, -3.0, 0.0, 1.0], device=device)
    got, want = grad.clone(), grad.clone()
    torch.ops.sparsedistill.scale_rows_(got, scale)
    _reference.scale_rows_(want, scale)
    torch.testing.assert_close(got, want, **TOL[dtype])
    assert torch.equal(got[[0, 3, 6]], grad[[0, 3, 6]])


def test_torch_compile_fullgraph(device):
    s, t, y = make((9, 333), torch.float32, device)
    fn = torch.compile(lambda s, t, y: sparsedistill.distillation_loss(s, t, y, T=3.0, alpha=0.3),
                       fullgraph=True)
    got, got_grad = value_and_grad(fn, s, t, y)
    want, want_grad = value_and_grad(stock_loss, s.double(), t, y, T=3.0, alpha=0.3)
    torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_grad.double().cpu(), want_grad.cpu(), rtol=1e-4, atol=1e-5)
