"""CUDA kernels of sparse_linear, sparse_linear_grad_input and sparse_linear_grad_values against
the float64 reference (sparsedistill.sparse.reference). Skipped on machines without a GPU.

The batches cover both kernel families (B <= 4: lanes split a row's nonzeros; B > 4: lanes split
batch columns over a transposed input), odd B (scalar column loads), B % 16 == 0 (vector
loads), and B past one batch tile (129, 257)."""
import pytest
import torch

from sparsedistill.sparse import reference as R
from sparsedistill._library import serves
from sparsedistill.sparse import SparseWeight

from _helpers import skip_unless_native

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OPS = torch.ops.sparsedistill
DEV = "cuda"
# Against the float64 reference computed from the same (already rounded) inputs, the kernels
# differ only by the accumulation (float32, or float64 for float64) and the final rounding.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=4e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-2),
}
DTYPES = list(TOL)
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
BATCHES = [1, 2, 3, 4, 5, 7, 8, 16, 31, 33, 64, 129, 257]
GRAD_BATCHES = [1, 3, 4, 5, 8, 33, 257]


def make_weight(out, inf, sparsity, dtype, empty_rows=(), seed=0):
    """nn.Linear-scaled random weight with a fraction `sparsity` of zeros, compressed on DEV."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inf, generator=gen, dtype=torch.float64) / max(inf, 1) ** 0.5
    w[torch.rand(out, inf, generator=gen) < sparsity] = 0
    w[list(empty_rows)] = 0
    return SparseWeight.from_dense(w.to(dtype).to(DEV))


def rand(*shape, dtype):
    return torch.randn(*shape, device=DEV).to(dtype)


def structure(sw):
    return sw.row_ptr, sw.col_idx, sw.row_order


def ref_forward(x, sw, bias):
    return R.sparse_linear(x.double(), sw.values.double(), *structure(sw), sw.in_features,
                           None if bias is None else bias.double())


def skip_unless_cuda_kernel():
    """Error messages and sync behaviour are the CUDA kernel's, not the reference's."""
    if serves("sparse_linear", "cuda") != "cuda kernel":
        pytest.skip("the CUDA kernel is not serving (native disabled or built without CUDA)")


def check(got, want, dtype):
    torch.testing.assert_close(got.double(), want, **TOL[dtype])


def test_cuda_kernels_serve():
    info = skip_unless_native("cuda")
    for op in ("sparse_linear", "sparse_linear_grad_input", "sparse_linear_grad_values"):
        assert info["ops"][op]["cuda"] == "cuda kernel", info["ops"][op]
        assert serves(op, "cuda") == "cuda kernel"


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward(dtype, sparsity, batch, with_bias):
    out, inf = 67, 301  # odd sizes; rows 0, 5 and 66 empty
    sw = make_weight(out, inf, sparsity, dtype, empty_rows=(0, 5, 66))
    x = rand(batch, inf, dtype=dtype)
    bias = rand(out, dtype=dtype) if with_bias else None
    got = OPS.sparse_linear(x, sw.values, *structure(sw), inf, bias)
    assert got.dtype == dtype and got.shape == (batch, out) and got.is_contiguous()
    check(got, ref_forward(x, sw, bias), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 2, 8, 33, 130])
@pytest.mark.parametrize("inf", [32768, 40000])  # the largest int16 column, then int32
def test_forward_wide(dtype, batch, inf):
    sw = make_weight(37, inf, 0.99, dtype, empty_rows=(7,))
    assert sw.col_idx.dtype == (torch.int16 if inf <= 32768 else torch.int32)
    x, bias = rand(batch, inf, dtype=dtype), rand(37, dtype=dtype)
    got = OPS.sparse_linear(x, sw.values, *structure(sw), inf, bias)
    check(got, ref_forward(x, sw, bias), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3, 16, 33])
def test_forward_long_rows(dtype, batch):
    # Rows of thousands of nonzeros: many staging chunks per row, and one very long row.
    sw = make_weight(5, 5003, 0.0, dtype)
    x = rand(batch, 5003, dtype=dtype)
    check(OPS.sparse_linear(x, sw.values, *structure(sw), 5003, None), ref_forward(x, sw, None),
          dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 4, 16, 33])
def test_misaligned_and_strided_operands(dtype, batch):
    # values/col_idx one element off their allocation (no vector loads), input transposed.
    sw = make_weight(29, 211, 0.5, dtype)
    vbuf = torch.empty(sw.nnz + 1, dtype=dtype, device=DEV)
    cbuf = torch.empty(sw.nnz + 1, dtype=sw.col_idx.dtype, device=DEV)
    vbuf[1:], cbuf[1:] = sw.values, sw.col_idx
    values, col_idx = vbuf[1:], cbuf[1:]
    x = rand(211, batch, dtype=dtype).t()
    bias = rand(29, dtype=dtype)
    got = OPS.sparse_linear(x, values, sw.row_ptr, col_idx, sw.row_order, 211, bias)
    check(got, ref_forward(x, sw, bias), dtype)
    g = rand(batch, 29, dtype=dtype)
    check(OPS.sparse_linear_grad_input(g, values, sw.row_ptr, col_idx, sw.row_order, 211),
          R.sparse_linear_grad_input(g.double(), sw.values.double(), *structure(sw), 211), dtype)
    check(OPS.sparse_linear_grad_values(g, x, sw.row_ptr, col_idx, sw.row_order),
          R.sparse_linear_grad_values(g.double(), x.double(), *structure(sw)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_shapes(dtype):
    # zero batch
    sw = make_weight(11, 23, 0.5, dtype)
    x0 = rand(0, 23, dtype=dtype)
    assert OPS.sparse_linear(x0, sw.values, *structure(sw), 23, None).shape == (0, 11)
    g0 = rand(0, 11, dtype=dtype)
    assert OPS.sparse_linear_grad_input(g0, sw.values, *structure(sw), 23).shape == (0, 23)
    gv = OPS.sparse_linear_grad_values(g0, x0, *structure(sw))
    assert gv.shape == (sw.nnz,) and gv.dtype == dtype and not gv.any()
    # out_features == 0
    sw = make_weight(0, 23, 0.5, dtype)
    x = rand(3, 23, dtype=dtype)
    assert OPS.sparse_linear(x, sw.values, *structure(sw), 23, None).shape == (3, 0)
    gi = OPS.sparse_linear_grad_input(rand(3, 0, dtype=dtype), sw.values, *structure(sw), 23)
    assert gi.shape == (3, 23) and not gi.any()
    # in_features == 0: the output is the bias
    sw = make_weight(6, 0, 0.0, dtype)
    bias = rand(6, dtype=dtype)
    for batch in (1, 9):
        y = OPS.sparse_linear(rand(batch, 0, dtype=dtype), sw.values, *structure(sw), 0, bias)
        torch.testing.assert_close(y, bias.expand(batch, 6))
    # nnz == 0 with rows: zeros (+ bias), zero gradients
    sw = make_weight(6, 13, 1.0, dtype)
    assert sw.nnz == 0
    for batch in (1, 9):
        y = OPS.sparse_linear(rand(batch, 13, dtype=dtype), sw.values, *structure(sw), 13, bias)
        torch.testing.assert_close(y, bias.expand(batch, 6))
        gi = OPS.sparse_linear_grad_input(rand(batch, 6, dtype=dtype), sw.values, *structure(sw), 13)
        assert gi.shape == (batch, 13) and not gi.any()


def test_bad_arguments_name_the_argument():
    skip_unless_cuda_kernel()
    sw = make_weight(4, 10, 0.5, torch.float32)
    x = rand(2, 10, dtype=torch.float32)
    with pytest.raises(ValueError, match="input"):
        OPS.sparse_linear(x, sw.values, *structure(sw), 11, None)
    with pytest.raises(TypeError, match="values"):
        OPS.sparse_linear(x, sw.values.double(), *structure(sw), 10, None)
    with pytest.raises(TypeError, match="row_ptr"):
        OPS.sparse_linear(x, sw.values, sw.row_ptr.int(), sw.col_idx, sw.row_order, 10, None)
    with pytest.raises(ValueError, match="bias"):
        OPS.sparse_linear(x, sw.values, *structure(sw), 10, rand(5, dtype=torch.float32))
    with pytest.raises(ValueError, match="device"):
        OPS.sparse_linear(x, sw.values, sw.row_ptr.cpu(), sw.col_idx, sw.row_order, 10, None)


# ----------------------------------------------------------------------------- backward ops


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("batch", GRAD_BATCHES)
def test_grad_input(dtype, sparsity, batch):
    out, inf = 67, 301
    sw = make_weight(out, inf, sparsity, dtype, empty_rows=(2,))
    g = rand(batch, out, dtype=dtype)
    got = OPS.sparse_linear_grad_input(g, sw.values, *structure(sw), inf)
    assert got.dtype == dtype and got.shape == (batch, inf) and got.is_contiguous()
    check(got, R.sparse_linear_grad_input(g.double(), sw.values.double(), *structure(sw), inf),
          dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 0.99])
@pytest.mark.parametrize("batch", GRAD_BATCHES)
def test_grad_values(dtype, sparsity, batch):
    out, inf = 67, 301
    sw = make_weight(out, inf, sparsity, dtype, empty_rows=(2,))
    g, x = rand(batch, out, dtype=dtype), rand(batch, inf, dtype=dtype)
    got = OPS.sparse_linear_grad_values(g, x, *structure(sw))
    assert got.dtype == dtype and got.shape == (sw.nnz,)
    check(got, R.sparse_linear_grad_values(g.double(), x.double(), *structure(sw)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3, 33])
def test_grad_ops_int32_columns(dtype, batch):
    sw = make_weight(19, 40000, 0.995, dtype)
    assert sw.col_idx.dtype == torch.int32
    g, x = rand(batch, 19, dtype=dtype), rand(batch, 40000, dtype=dtype)
    check(OPS.sparse_linear_grad_input(g, sw.values, *structure(sw), 40000),
          R.sparse_linear_grad_input(g.double(), sw.values.double(), *structure(sw), 40000), dtype)
    check(OPS.sparse_linear_grad_values(g, x, *structure(sw)),
          R.sparse_linear_grad_values(g.double(), x.double(), *structure(sw)), dtype)


# ----------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 4, 33])
def test_autograd_matches_reference(dtype, batch):
    out, inf = 41, 401
    sw = make_weight(out, inf, 0.9, dtype, empty_rows=(3,))
    x = rand(batch, inf, dtype=dtype).requires_grad_()
    values = sw.values.clone().requires_grad_()
    bias = rand(out, dtype=dtype).requires_grad_()
    w_out = rand(batch, out, dtype=dtype)  # the loss weights: grad_out is 2 * w_out, not 1
    y = OPS.sparse_linear(x, values, *structure(sw), inf, bias)
    grads = torch.autograd.grad((y * w_out).sum() * 2, (x, values, bias))

    leaves = [t.detach().double().requires_grad_() for t in (x, values, bias)]
    y64 = R.sparse_linear(leaves[0], leaves[1], *structure(sw), inf, leaves[2])
    want = torch.autograd.grad((y64 * w_out.double()).sum() * 2, leaves)
    check(y.detach(), y64.detach(), dtype)
    for got, ref in zip(grads, want):
        assert got.dtype == dtype
        check(got, ref, dtype)


def test_opcheck():
    sw = make_weight(13, 70, 0.5, torch.float32, empty_rows=(1,))
    for batch in (1, 9):
        x = torch.randn(batch, 70, device=DEV, requires_grad=True)
        values = sw.values.clone().requires_grad_()
        bias = torch.randn(13, device=DEV, requires_grad=True)
        g = torch.randn(batch, 13, device=DEV)
        torch.library.opcheck(OPS.sparse_linear, (x, values, *structure(sw), 70, bias))
        torch.library.opcheck(OPS.sparse_linear, (x, values, *structure(sw), 70, None))
        torch.library.opcheck(OPS.sparse_linear_grad_input, (g, sw.values, *structure(sw), 70))
        torch.library.opcheck(OPS.sparse_linear_grad_values, (g, x.detach(), *structure(sw)))


@pytest.mark.parametrize("batch", [1, 33])
def test_forward_and_backward_do_not_sync_the_host(batch):
    skip_unless_cuda_kernel()
    sw = make_weight(41, 401, 0.9, torch.bfloat16)
    x = rand(batch, 401, dtype=torch.bfloat16).requires_grad_()
    values = sw.values.clone().requires_grad_()
    bias = rand(41, dtype=torch.bfloat16).requires_grad_()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = OPS.sparse_linear(x, values, *structure(sw), 401, bias)
        y.float().square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.grad is not None and values.grad is not None and bias.grad is not None


def test_more_than_2_pow_31_batch_elements():
    # in * B > 2^31: the staged column offsets (col * B) and b * in must be 64-bit. Rows of the
    # output are independent, so the float64 reference is computed for a few of them only.
    inf = 40000
    batch = 2**31 // inf + 3
    free, _ = torch.cuda.mem_get_info()
    if free < 5 * batch * inf * 2 + (1 << 30):  # x, its transpose, float32 accumulator, result
        pytest.skip("not enough GPU memory")
    dtype = torch.bfloat16
    sw = make_weight(5, inf, 0.99, dtype)
    rows = torch.tensor([0, 1, batch // 2, batch - 2, batch - 1], device=DEV)
    x = torch.randn(batch, inf, device=DEV, dtype=dtype)
    assert x.numel() > 2**31
    y = OPS.sparse_linear(x, sw.values, *structure(sw), inf, None)
    check(y[rows], ref_forward(x[rows], sw, None), dtype)
    del y
    g = torch.randn(batch, 5, device=DEV, dtype=dtype)
    del x
    gi = OPS.sparse_linear_grad_input(g, sw.values, *structure(sw), inf)
    check(gi[rows], R.sparse_linear_grad_input(g[rows].double(), sw.values.double(),
                                               *structure(sw), inf), dtype)
