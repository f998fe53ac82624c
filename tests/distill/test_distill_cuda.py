"""CUDA-only checks of the distillation kernel: large V, N*V beyond 2^31, alignment, no host
sync, agreement with the C++ CPU kernel. Skipped on machines without a GPU."""
import pytest
import torch

import sparsedistill
from sparsedistill.distill import reference as _reference
from test_distill_loss import OP, TOL, make, stock_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rows_vs_reference(s, t, y, rows, T=4.0, alpha=0.5, divergence=0):
    got = OP(s, t, y, T, alpha, 0.5, divergence, -100, True)
    want = _reference.distill_loss(s[rows], t[rows], y[rows] if y is not None else None,
                                   torch.tensor(1.0, device=s.device), T, alpha, 0.5, divergence,
                                   -100, True, acc_dtype=torch.float64)
    return [(g[rows], w) for g, w in zip(got, want)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("divergence", [0, 1, 2])
def test_vocab_262144(dtype, divergence):
    s, t, y = make((3, 262144), dtype, "cuda")
    for g, w in rows_vs_reference(s, t, y, slice(None), divergence=divergence):
        torch.testing.assert_close(g.double(), w.double(), **TOL[dtype])


def test_more_than_2_pow_31_elements():
    vocab = 131072
    rows = 2**31 // vocab + 2  # the last rows start beyond element 2^31
    free, _ = torch.cuda.mem_get_info()
    if free < 4 * rows * vocab * 2:
        pytest.skip("not enough GPU memory")
    s = torch.randn(rows, vocab, dtype=torch.bfloat16, device="cuda")
    t = torch.randn(rows, vocab, dtype=torch.bfloat16, device="cuda")
    y = torch.randint(0, vocab, (rows,), device="cuda")
    assert s.numel() > 2**31
    for g, w in rows_vs_reference(s, t, y, slice(rows - 2, rows)):
        torch.testing.assert_close(g.double(), w.double(), **TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("offset", [1, 3])
def test_misaligned_rows(dtype, offset):
    vocab, rows = 1271, 9
    buf_s = torch.randn(rows * vocab + offset, device="cuda").to(dtype)
    buf_t = torch.randn(rows * vocab + offset, device="cuda").to(dtype)
    s, t = buf_s[offset:].view(rows, vocab), buf_t[offset:].view(rows, vocab)
    y = torch.randint(0, vocab, (rows,), device="cuda")
    for g, w in rows_vs_reference(s, t, y, slice(None)):
        torch.testing.assert_close(g.double(), w.double(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("divergence", [0, 1, 2])
def test_cuda_kernel_matches_cpu_kernel(dtype, divergence):
    s, t, y = make((33, 5003), dtype, "cuda")
    y[4] = -100
    got = OP(s, t, y, 2.0, 0.3, 0.4, divergence, -100, True)
    cpu = OP(s.cpu(), t.cpu(), y.cpu(), 2.0, 0.3, 0.4, divergence, -100, True)
    for g, c in zip(got, cpu):
        torch.testing.assert_close(g.cpu().double(), c.double(), **TOL[dtype])


def test_backward_and_unlabelled_forward_do_not_sync_the_host():
    s, t, y = make((64, 4099), torch.bfloat16, "cuda")
    s.requires_grad_(True)
    loss = sparsedistill.distillation_loss(s, t, y)  # labels are range-checked here (one sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss.backward()
        sparsedistill.distillation_loss(s, t, None).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(loss.double(), stock_loss(s.detach(), t, y), **TOL[torch.bfloat16])


def test_out_of_range_label_is_an_error_not_a_crash():
    s, t, y = make((4, 100), torch.float32, "cuda")
    y[2] = 100
    with pytest.raises(ValueError, match="true_labels"):
        sparsedistill.distillation_loss(s, t, y)
    # The op itself (no Python check): a NaN row, and the CUDA context stays usable.
    rows = OP(s, t, y, 4.0, 0.5, 0.5, 0, -100, False)[0]
    assert torch.isnan(rows[2]) and torch.isfinite(rows[[0, 1, 3]]).all()
    torch.cuda.synchronize()
