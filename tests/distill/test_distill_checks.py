"""The distillation ops reject every bad call with the same exception and message on the
reference and the native kernels (the checks live in distill/checks.py and csrc/distill/checks.h),
and the divergence codes agree with the C++ header."""
import math
import os

import pytest
import torch

from sparsedistill.distill import checks, reference
from _helpers import same_error_everywhere

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "distill", "params.h")


def bad_calls(device):
    f32 = dict(device=device)
    s, t = torch.randn(4, 10, **f32), torch.randn(4, 10, **f32)
    y, w = torch.tensor([0, 1, 2, 3], device=device), torch.tensor(0.25, **f32)
    base = [s, t, y, w, 2.0, 0.5, 0.5, 0, -100, True]

    def with_(i, value):
        args = list(base)
        args[i] = value
        return args
    return {
        "student 1-D": with_(0, torch.randn(10, **f32)),
        "teacher shape": with_(1, torch.randn(4, 9, **f32)),
        "student dtype": [s.int(), t.int(), *base[2:]],
        "teacher dtype": with_(1, t.double()),
        "no classes": [torch.randn(4, 0, **f32), torch.randn(4, 0, **f32), *base[2:]],
        "labels dtype": with_(2, y.int()),
        "labels shape": with_(2, y[:3]),
        "grad_scale": with_(3, w.reshape(1)),
        "T zero": with_(4, 0.0),
        "T inf": with_(4, math.inf),
        "alpha": with_(5, 1.5),
        "beta": with_(6, -0.25),
        "divergence": with_(7, 3),
        "label range": with_(2, torch.tensor([0, 1, 10, 2], device=device)),
        "label negative": with_(2, torch.tensor([0, -1, 1, 2], device=device)),
    }


@pytest.mark.parametrize("case", list(bad_calls("cpu")))
def test_distill_loss_rejects_the_same_everywhere(device, case):
    args = bad_calls(device)[case]
    if device == "cuda" and case.startswith("label"):
        pytest.skip("the CUDA kernel writes a NaN row for a bad label (distillation_loss checks it)")
    err = same_error_everywhere("distill_loss", reference.distill_loss, args, device)
    assert str(err).startswith("sparsedistill: ")


@pytest.mark.parametrize("case", ["grad shape", "row_scale dtype", "row_scale shape"])
def test_scale_rows_rejects_the_same_everywhere(device, case):
    grad = torch.randn(3, 5, device=device)
    scale = torch.ones(3, device=device)
    args = {"grad shape": [grad[0], scale], "row_scale dtype": [grad, scale.double()],
            "row_scale shape": [grad, scale[:2]]}[case]
    same_error_everywhere("scale_rows_", reference.scale_rows_, args, device)


def test_divergence_codes_match_the_header():
    codes = checks.divergence_codes_in_header(open(HEADER).read())
    assert codes == {"kForwardKL": checks.FORWARD_KL, "kReverseKL": checks.REVERSE_KL, "kJSD": checks.JSD}
