"""The pruning ops reject every bad call with the same exception and message on the reference
and the native kernels (prune/checks.py and csrc/prune/checks.h)."""
import pytest
import torch

from sparsedistill.prune import reference
from _helpers import same_error_everywhere


def select_calls(device):
    w = torch.randn(6, 7, device=device)
    nan = w.clone()
    nan[2, 3] = float("nan")
    return {
        "values dtype": [[w, w.int()], None, 3, True],
        "keep count": [[w, w], [w > 0], 3, True],
        "keep dtype": [[w], [(w > 0).float()], 3, True],
        "keep shape": [[w], [w[:3] > 0], 3, True],
        "k too large": [[w], None, 43, True],
        "k negative": [[w], [w > 0], -1, False],
        "nan": [[w, nan], None, 5, True],
    }


def zero_calls(device):
    w = torch.randn(6, 7, device=device)
    m = torch.empty(6, 7, dtype=torch.bool, device=device)
    return {
        "masks count": [[w.clone()], [m, m], None, None, 3],
        "masks dtype": [[w.clone()], [m.float()], None, None, 3],
        "tensors dtype": [[w.int()], [m], None, None, 3],
        "scores count": [[w.clone()], [m], [w, w], None, 3],
        "scores shape": [[w.clone()], [m], [w[:2]], None, 3],
        "k too large": [[w.clone()], [m], None, None, 50],
    }


def nm_calls(device):
    w = torch.randn(4, 8, device=device)
    return {"dtype": [w.int(), 2, 4, True], "0-dim": [w[0, 0], 1, 1, True], "m": [w, 0, 0, True],
            "n": [w, 5, 4, True], "divisible": [w, 1, 3, True]}


def flat(args):
    """The tensors of a call (lists flattened), to check that none was modified."""
    return [t for a in args for t in (a if isinstance(a, list) else [a]) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("case", list(select_calls("cpu")))
def test_select_smallest_rejects_the_same_everywhere(device, case):
    args = select_calls(device)[case]
    same_error_everywhere("select_smallest", reference.select_smallest, args, device)


@pytest.mark.parametrize("case", list(zero_calls("cpu")))
def test_zero_smallest_rejects_the_same_everywhere(device, case):
    args = zero_calls(device)[case]
    before = [t.clone() for t in flat(args)]
    same_error_everywhere("zero_smallest", reference.zero_smallest, args, device)
    assert all(torch.equal(b, a) for b, a in zip(before, flat(args)) if b.dtype != torch.bool)


@pytest.mark.parametrize("case", list(nm_calls("cpu")))
def test_nm_mask_rejects_the_same_everywhere(device, case):
    same_error_everywhere("nm_mask", reference.nm_mask, nm_calls(device)[case], device)


def grouped_calls(device):
    w = torch.randn(6, 8, device=device)
    k = torch.ones(3, 2, dtype=torch.int64, device=device)
    nan = w.clone()
    nan[5, 7] = float("nan")
    return {
        "values dtype": [w.int(), None, 2, 4, k, True],
        "values 1-D": [w[0], None, 1, 8, k, True],
        "group size": [w, None, 0, 4, k, True],
        "tiling": [w, None, 4, 4, k, True],
        "keep dtype": [w, (w > 0).float(), 2, 4, k, True],
        "keep shape": [w, w[:3] > 0, 2, 4, k, True],
        "k shape": [w, None, 2, 4, k[:2], True],
        "k dtype": [w, None, 2, 4, k.int(), True],
        "k too large": [w, None, 2, 4, k * 9, True],
        "k negative": [w, w > 0, 2, 4, -k, False],
        "k above eligible": [w, torch.zeros_like(w, dtype=torch.bool), 2, 4, k, True],
        "nan": [nan, None, 2, 4, k, True],
    }


@pytest.mark.parametrize("case", list(grouped_calls("cpu")))
def test_select_smallest_grouped_rejects_the_same_everywhere(device, case):
    same_error_everywhere("select_smallest_grouped", reference.select_smallest_grouped,
                          grouped_calls(device)[case], device)
