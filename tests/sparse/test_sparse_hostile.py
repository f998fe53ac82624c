"""Malformed compressed structures never reach a kernel (hostile_structures.py, in a
subprocess), second derivatives are refused, and the shapes F.linear takes work."""
import os
import subprocess
import sys

import pytest
import torch

import sparsedistill
from sparsedistill import SparseLinear, SparseWeight, sparse_linear

HERE = os.path.dirname(os.path.abspath(__file__))


def test_every_malformed_structure_is_refused_at_every_entry():
    run = subprocess.run([sys.executable, os.path.join(HERE, "hostile_structures.py")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "0 accepted" in run.stdout


def test_fields_are_read_only():
    sw = SparseWeight.from_dense(torch.eye(4))
    with pytest.raises(AttributeError):
        sw.col_idx = torch.zeros(4, dtype=torch.int16)


def test_double_backward_is_refused(device):
    layer = SparseLinear.from_dense(torch.randn(5, 7, device=device))
    x = torch.randn(3, 7, device=device, requires_grad=True)
    y = layer(x).pow(2).sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y, x, create_graph=True)
    g, = torch.autograd.grad(layer(x).pow(2).sum(), x)  # first order still works
    torch.testing.assert_close(g, torch.autograd.grad((x @ layer.to_dense().weight.T).pow(2).sum(), x)[0])


@pytest.mark.parametrize("shape", [(2, 3, 7), (4, 1, 2, 7), (0, 7), (2, 0, 7)])
def test_any_leading_shape(device, shape):
    w = torch.randn(5, 7, device=device)
    layer = SparseLinear.from_dense(w, torch.randn(5, device=device))
    x = torch.randn(shape, device=device)
    want = torch.nn.functional.linear(x, w, layer.bias)
    torch.testing.assert_close(layer(x), want)
    torch.testing.assert_close(sparse_linear(x, layer.sparse_weight, layer.bias), want)


def test_zero_in_features(device):
    layer = SparseLinear.from_dense(torch.zeros(4, 0, device=device), torch.ones(4, device=device))
    for shape in [(3, 0), (2, 3, 0)]:
        x = torch.randn(shape, device=device)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, torch.zeros(4, 0, device=device), layer.bias))
        torch.testing.assert_close(sparse_linear(x, layer.sparse_weight, layer.bias), layer(x))


def test_module_moves_and_casts_keep_working(device):
    layer = SparseLinear.from_dense(torch.randn(5, 7))
    x = torch.randn(2, 7)
    want = layer(x)
    moved = layer.to(device).double()
    torch.testing.assert_close(moved(x.to(device).double()).float().cpu(), want)
    assert sparsedistill.SparseWeight.from_dense(torch.randn(3, 3)).to(torch.float64).dtype == torch.float64
