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
