"""The sparse-matmul ops reject every bad call with the same exception and message on the
reference and the native kernels (sparse/checks.py and csrc/sparse/checks.h), and the int16
column limit agrees with the C++ header."""
import os

import pytest
import torch

from sparsedistill.sparse import SparseWeight, checks, reference
from _helpers import same_error_everywhere

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "sparse", "checks.h")


def parts(device):
    w = torch.randn(5, 9, device=device)
    w[w.abs() < 0.7] = 0
    sw = SparseWeight.from_dense(w)
    return sw, torch.randn(3, 9, device=device), torch.randn(3, 5, device=device)


def forward_calls(device):
    sw, x, _ = parts(device)
    st = [sw.row_ptr, sw.col_idx, sw.row_order]
    base = [x, sw.values, *st, 9, None]

    def with_(i, v):
        args = list(base)
        args[i] = v
        return args
    return {
        "in_features negative": with_(5, -1),
        "input 1-D": with_(0, x[0]),
        "input dtype": [x.int(), sw.values, *st, 9, None],
        "input width": with_(5, 8),
        "row_ptr dtype": with_(2, sw.row_ptr.int()),
        "row_ptr empty": with_(2, sw.row_ptr[:0]),
        "col_idx dtype": with_(3, sw.col_idx.long()),
        "col_idx 2-D": with_(3, sw.col_idx[None]),
        "row_order dtype": with_(4, sw.row_order.long()),
        "row_order shape": with_(4, sw.row_order[:2]),
        "values dtype": with_(1, sw.values.double()),
        "values length": with_(1, sw.values[:-1]),
        "bias shape": with_(6, torch.zeros(4, device=device)),
        "bias dtype": with_(6, torch.zeros(5, device=device, dtype=torch.float64)),
        "int16 columns": [torch.randn(2, 40000, device=device), torch.zeros(0, device=device),
                          torch.zeros(2, dtype=torch.int64, device=device),
                          torch.zeros(0, dtype=torch.int16, device=device),
                          torch.zeros(1, dtype=torch.int32, device=device), 40000, None],
    }


def grad_input_calls(device):
    sw, _, g = parts(device)
    st = [sw.row_ptr, sw.col_idx, sw.row_order]
    return {"grad_out width": [g[:, :4], sw.values, *st, 9], "grad_out dtype": [g.int(), sw.values, *st, 9],
            "values dtype": [g, sw.values.half(), *st, 9], "in_features": [g, sw.values, *st, -2]}


def grad_values_calls(device):
    sw, x, g = parts(device)
    st = [sw.row_ptr, sw.col_idx, sw.row_order]
    return {"grad_out rows": [g[:2], x, *st], "grad_out dtype": [g.double(), x, *st],
            "input 1-D": [g, x[0], *st], "row_order": [g, x, sw.row_ptr, sw.col_idx, sw.row_order[:1]]}


@pytest.mark.parametrize("case", list(forward_calls("cpu")))
def test_sparse_linear_rejects_the_same_everywhere(device, case):
    same_error_everywhere("sparse_linear", reference.sparse_linear, forward_calls(device)[case], device)


@pytest.mark.parametrize("case", list(grad_input_calls("cpu")))
def test_grad_input_rejects_the_same_everywhere(device, case):
    same_error_everywhere("sparse_linear_grad_input", reference.sparse_linear_grad_input,
                          grad_input_calls(device)[case], device)


@pytest.mark.parametrize("case", list(grad_values_calls("cpu")))
def test_grad_values_rejects_the_same_everywhere(device, case):
    same_error_everywhere("sparse_linear_grad_values", reference.sparse_linear_grad_values,
                          grad_values_calls(device)[case], device)


def test_int16_column_limit_matches_the_header():
    assert checks.constant_in_header(open(HEADER).read(), "kInt16MaxColumns") == checks.INT16_MAX_COLUMNS
