"""Properties of sparse matmul on random inputs (hypothesis): sparse_linear and SparseLinear
equal the masked dense layer (values and gradients), against float64, for every dtype,
sparsity, shape (empty and one element included) and input layout."""
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import sparsedistill
from sparsedistill import SparseLinear, SparseWeight
from sparsedistill.sparse import reference
from _helpers import close, native_serves
from _strategies import float_tensors

SCALES = (1e-3, 1.0, 10.0)  # products stay inside float16's range
DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64])


@st.composite
def layers(draw):
    dtype = draw(DTYPES)
    out, inp, batch = draw(st.integers(0, 9)), draw(st.integers(0, 70)), draw(st.integers(0, 6))
    w = draw(float_tensors((out, inp), dtype, edge=False, scales=SCALES))
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))
    g = torch.Generator().manual_seed(out * 100 + inp)
    w = w * (torch.rand(out, inp, generator=g) >= sparsity).to(dtype)
    x = draw(float_tensors((batch, inp), dtype, edge=False, scales=SCALES))
    bias = draw(float_tensors((out,), dtype, edge=False, scales=SCALES)) if draw(st.booleans()) else None
    return w.contiguous(), x, bias


@given(layers())
def test_sparse_linear_equals_the_masked_dense_layer(case):
    w, x, bias = case
    sw = SparseWeight.from_dense(w)
    want = F.linear(x.double(), w.double(), None if bias is None else bias.double())
    close(sparsedistill.sparse_linear(x, sw, bias), want, w.dtype, terms=w.shape[1] + 1)
    if native_serves("sparse_linear", "cpu"):
        native = torch.ops.sparsedistill.sparse_linear(x.contiguous(), sw.values, sw.row_ptr, sw.col_idx,
                                                       sw.row_order, sw.in_features, bias)
        ref = reference.sparse_linear(x.contiguous(), sw.values, sw.row_ptr, sw.col_idx, sw.row_order,
                                      sw.in_features, bias)
        close(native, ref.double(), w.dtype, terms=w.shape[1] + 1)


@given(layers())
def test_sparse_linear_module_gradients_equal_the_dense_ones(case):
    w, x, bias = case
    layer = SparseLinear.from_dense(w, bias)
    xs = x.clone().requires_grad_()
    y = layer(xs)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.dtype)
    (y * gy).sum().backward()
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    b64 = None if bias is None else bias.double().requires_grad_()
    y64 = F.linear(x64, w64, b64)
    (y64 * gy.double()).sum().backward()
    close(y, y64.detach(), w.dtype, terms=w.shape[1] + 1)
    close(xs.grad, x64.grad, w.dtype, terms=w.shape[0] + 1)
    nz = w != 0
    close(layer.values.grad, w64.grad[nz], w.dtype, terms=x.shape[0] + 1)
    if bias is not None:
        close(layer.bias.grad, b64.grad, w.dtype, terms=x.shape[0] + 1)
