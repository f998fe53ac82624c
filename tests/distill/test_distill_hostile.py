"""The distillation loss on inputs a careless or hostile caller passes: second derivatives,
numpy and tensor hyper-parameters, temperatures outside float32's range."""
import numpy as np
import pytest
import torch

import sparsedistill


def make(device):
    s = torch.randn(6, 11, device=device, requires_grad=True)
    return s, torch.randn(6, 11, device=device), torch.randint(0, 11, (6,), device=device)


def test_double_backward_is_refused(device):
    s, t, y = make(device)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(sparsedistill.distillation_loss(s, t, y), s, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.functional.hessian(lambda x: sparsedistill.distillation_loss(x, t, y), s.detach())


@pytest.mark.parametrize("T", [np.float32(3.0), np.float64(3.0), torch.tensor(3.0), np.int64(3)])
def test_real_hyper_parameters_of_any_kind(device, T):
    s, t, y = make(device)
    want = sparsedistill.distillation_loss(s, t, y, T=3.0, alpha=0.25, beta=0.5, divergence="jsd")
    got = sparsedistill.distillation_loss(s, t, y, T=T, alpha=np.float64(0.25), beta=torch.tensor(0.5),
                                          divergence="jsd")
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("T", [1e-40, 1e-7, 1e7, 1e20, float("nan"), float("inf"), 0, -1])
def test_temperatures_outside_float32_range_are_refused(device, T):
    s, t, y = make(device)
    with pytest.raises(ValueError, match=r"T \(temperature\) must be a number in \[1e-06, 1e\+06\]"):
        sparsedistill.distillation_loss(s, t, y, T=T)
    with pytest.raises(ValueError, match="T"):
        sparsedistill.DistillationLoss(T=T)


@pytest.mark.parametrize("bad", [True, "4", torch.tensor([1.0, 2.0]), None])
def test_non_numbers_are_type_errors(bad):
    s, t, y = make("cpu")
    with pytest.raises(TypeError, match="T .*real number"):
        sparsedistill.distillation_loss(s, t, y, T=bad)


@pytest.mark.parametrize("T", [1e-6, 1e6])
def test_extreme_allowed_temperatures_stay_finite(device, T):
    s, t, y = make(device)
    loss = sparsedistill.distillation_loss(s * 100, t * 100, y, T=T)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def f32_rel_err(got, want):
    return float(((got.double() - want).abs() / want.abs().clamp_min(1e-30)).max())


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("offset", [1e3, 1e4, 1e5])
def test_a_common_offset_costs_no_precision(device, divergence, offset):
    # softmax is shift-invariant; the loss of logits shifted by a common offset must be as
    # precise as stock float32 (the kernel used to take lse(s/T) - lse(t/T) of two ~offset/T
    # numbers: 3.9e-4, 3.5e-3 and 2.9e-2 relative error at 1e3, 1e4, 1e5).
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(64, 301, generator=g) * 3 + offset).to(device)
    t = (torch.randn(64, 301, generator=g) * 3 + offset).to(device)
    y = torch.randint(0, 301, (64,), generator=g).to(device)
    kw = dict(T=4.0, alpha=0.5, reduction="none", divergence=divergence)
    got = sparsedistill.distillation_loss(s, t, y, **kw)
    want = sparsedistill.distill.reference.distill_loss(
        s.double(), t.double(), y, torch.tensor(1.0, dtype=torch.float32, device=device), 4.0, 0.5, 0.5,
        {"kl": 0, "reverse_kl": 1, "jsd": 2}[divergence], -100, False, acc_dtype=torch.float64)[0]
    f32 = sparsedistill.distill.reference.distill_loss(
        s, t, y, torch.tensor(1.0, device=device), 4.0, 0.5, 0.5,
        {"kl": 0, "reverse_kl": 1, "jsd": 2}[divergence], -100, False)[0]
    assert f32_rel_err(got, want) <= max(4 * f32_rel_err(f32, want), 1e-5)


def test_reverse_kl_gradient_at_large_logits(device):
    s = torch.tensor([[1e4, -1e4, 3.0]], device=device, requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 2.0]], device=device)
    sparsedistill.distillation_loss(s, t, T=0.5, divergence="reverse_kl").backward()
    s64 = s.detach().double().requires_grad_()
    lq, lp = torch.log_softmax(s64 / 0.5, -1), torch.log_softmax(t.double() / 0.5, -1)
    (0.25 * (lq.exp() * (lq - lp)).sum()).backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=2e-2, atol=1e-6)
