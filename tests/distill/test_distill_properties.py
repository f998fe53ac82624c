"""Properties of the distillation loss on random inputs (hypothesis): loss and gradient equal
to the float64 reference of the same rounded inputs, for every divergence, reduction, dtype,
layout, masked vocabularies (-inf entries), ignored rows and large common offsets."""
import torch
from hypothesis import given, strategies as st

import sparsedistill
from sparsedistill.distill import reference
from _helpers import TOL
from _strategies import float_tensors

CODES = {"kl": 0, "reverse_kl": 1, "jsd": 2}


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    rows, vocab = draw(st.integers(0, 6)), draw(st.integers(1, 80))
    s = draw(float_tensors((rows, vocab), torch.float64, edge=False))
    t = draw(float_tensors((rows, vocab), torch.float64, edge=False))
    offset = draw(st.sampled_from([0.0, 0.0, 50.0, 1e3]))
    if rows and vocab > 1 and draw(st.booleans()):  # a masked vocabulary: -inf in both
        cols = torch.randperm(vocab, generator=torch.Generator().manual_seed(rows * vocab))[: vocab // 3]
        s[:, cols] = t[:, cols] = -float("inf")
    s, t = (s + offset).to(dtype), (t + offset).to(dtype)
    labels = None
    if draw(st.booleans()):
        g = torch.Generator().manual_seed(vocab)
        finite = torch.isfinite(s[0]).nonzero().squeeze(1) if rows else torch.arange(vocab)
        labels = finite[torch.randint(0, max(finite.numel(), 1), (rows,), generator=g)] if finite.numel() else None
        if labels is not None and rows and draw(st.booleans()):
            labels[0] = -100
    return dict(s=s, t=t, y=labels, T=draw(st.sampled_from([0.5, 1.0, 2.0, 4.0, 7.3])),
                alpha=draw(st.sampled_from([0.0, 0.3, 1.0])), beta=draw(st.sampled_from([0.1, 0.5, 0.9])),
                divergence=draw(st.sampled_from(list(CODES))),
                reduction=draw(st.sampled_from(["mean", "sum", "none"])))


@given(cases())
def test_loss_and_gradient_match_the_float64_reference(c):
    s = c["s"].clone().requires_grad_()
    kw = dict(T=c["T"], alpha=c["alpha"], beta=c["beta"], divergence=c["divergence"], reduction=c["reduction"])
    loss = sparsedistill.distillation_loss(s, c["t"], c["y"], **kw)
    (loss.sum() * 2).backward()  # grad_output != 1
    s64 = c["s"].double().requires_grad_()
    rows, soft, hard, grad = reference.distill_loss(
        s64.detach(), c["t"].double(), c["y"], torch.tensor(1.0), c["T"], c["alpha"], c["beta"],
        CODES[c["divergence"]], -100, True, acc_dtype=torch.float64)
    count = max(int((c["y"] != -100).sum()) if c["y"] is not None else s.shape[0], 1)
    scale = 1.0 / count if c["reduction"] == "mean" else 1.0
    want = rows if c["reduction"] == "none" else rows.sum() * scale
    tol = TOL[s.dtype]
    torch.testing.assert_close(loss.double(), want.to(torch.float64), rtol=tol["rtol"] * 4,
                               atol=tol["atol"] * 10 * c["T"] ** 2)
    torch.testing.assert_close(s.grad.double(), 2 * scale * grad.double(), rtol=tol["rtol"] * 4,
                               atol=tol["atol"] * 10 * max(c["T"], 1))


@given(cases())
def test_non_finite_rows_are_nan_never_a_number(c):
    s, t = c["s"].clone(), c["t"]
    if s.shape[0] == 0:
        return
    s[0, 0] = float("nan")
    rows = sparsedistill.distillation_loss(s, t, c["y"], reduction="none", divergence=c["divergence"])
    ignored = c["y"] is not None and int(c["y"][0]) == -100
    assert ignored or torch.isnan(rows[0])
    assert torch.isfinite(rows[1:]).all() or not torch.isfinite(c["s"][1:]).any(-1).all()
