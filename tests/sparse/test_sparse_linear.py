"""sparse_linear, SparseWeight, SparseLinear and sparsify against dense matmul in float64."""
import io
import warnings

import pytest
import torch
from torch import nn

import sparsedistill
from sparsedistill.sparse import SparseWeight
from sparsedistill.sparse.checks import validate_structure

from _helpers import close, skip_unless_native

OPS = torch.ops.sparsedistill
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def assert_close(got, want, dtype, in_features):
    close(got, want, dtype, terms=in_features + 1)


def pruned_weight(out, inp, sparsity, dtype=torch.float32, device="cpu"):
    w = torch.randn(out, inp, device=device, dtype=torch.float64)
    if w.numel():
        w = w * sparsedistill.magnitude_mask(w, sparsity)
    return w.to(dtype)


def run_op(x, w: SparseWeight, bias=None):
    return OPS.sparse_linear(x, w.values, w.row_ptr, w.col_idx, w.row_order, w.in_features, bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 0.999, 1.0])
def test_forward_matches_dense_float64(device, dtype, sparsity):
    w = pruned_weight(67, 1001, sparsity, dtype, device)
    sw = SparseWeight.from_dense(w)
    assert sw.nnz == int((w != 0).sum())
    bias = torch.randn(67, device=device).to(dtype)
    for batch in [1, 2, 7, 16, 33, 128, 257]:
        x = torch.randn(batch, 1001, device=device).to(dtype)
        want = x.double() @ w.double().T + bias.double()
        assert_close(run_op(x, sw, bias), want, dtype, 1001)
        assert_close(run_op(x, sw), x.double() @ w.double().T, dtype, 1001)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (41, 401), (300, 40000)])
def test_odd_shapes_and_int32_columns(device, dtype, shape):
    w = pruned_weight(*shape, 0.7, dtype, device)
    sw = SparseWeight.from_dense(w)
    assert sw.col_idx.dtype == (torch.int32 if shape[1] > 32768 else torch.int16)
    assert sw.bytes_per_nonzero() == w.element_size() + sw.col_idx.element_size()
    for batch in [1, 3, 19]:
        x = torch.randn(batch, shape[1], device=device).to(dtype)
        assert_close(run_op(x, sw), x.double() @ w.double().T, dtype, shape[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_products_match_reference(device, dtype):
    w = pruned_weight(53, 211, 0.8, dtype, device)
    sw = SparseWeight.from_dense(w)
    for batch in [1, 5, 40]:
        x = torch.randn(batch, 211, device=device).to(dtype)
        gy = torch.randn(batch, 53, device=device).to(dtype)
        gx = OPS.sparse_linear_grad_input(gy, sw.values, sw.row_ptr, sw.col_idx, sw.row_order, 211)
        assert_close(gx, gy.double() @ w.double(), dtype, 53)
        gv = OPS.sparse_linear_grad_values(gy, x, sw.row_ptr, sw.col_idx, sw.row_order)
        dense_grad = gy.double().T @ x.double()
        assert_close(gv, dense_grad[w != 0], dtype, batch)


def test_autograd_matches_dense_linear(device):
    w = pruned_weight(31, 57, 0.9, torch.float64, device)
    bias = torch.randn(31, device=device, dtype=torch.float64)
    layer = sparsedistill.SparseLinear.from_dense(w, bias)
    x = torch.randn(4, 3, 57, device=device, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == (4, 3, 31)
    (y * 2).sum().backward()  # grad_output != 1
    x2 = x.detach().clone().requires_grad_()
    w2, b2 = w.clone().requires_grad_(), bias.clone().requires_grad_()
    (torch.nn.functional.linear(x2, w2, b2) * 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.values.grad, w2.grad[w != 0])
    torch.testing.assert_close(layer.bias.grad, b2.grad)


def test_gradcheck(device):
    w = pruned_weight(9, 13, 0.6, torch.float64, device)
    sw = SparseWeight.from_dense(w)
    x = torch.randn(5, 13, device=device, dtype=torch.float64, requires_grad=True)
    v = sw.values.clone().requires_grad_()
    b = torch.randn(9, device=device, dtype=torch.float64, requires_grad=True)
    fn = lambda x, v, b: OPS.sparse_linear(x, v, sw.row_ptr, sw.col_idx, sw.row_order, 13, b)
    assert torch.autograd.gradcheck(fn, (x, v, b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_of_very_different_lengths(device, dtype):
    # The CPU one-row path reads several rows at once and finishes each alone past their common
    # length: rows from empty to full, in an order that puts long and short rows side by side.
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(0, 300, (257,), generator=g)
    lengths[::5] = 0
    lengths[::11] = 300
    w = torch.randn(257, 300, generator=g, dtype=torch.float64)
    w[torch.arange(300) >= lengths[:, None]] = 0
    w = w[:, torch.randperm(300, generator=g)].to(dtype).to(device)
    sw = SparseWeight.from_dense(w)
    bias = torch.randn(257, device=device).to(dtype)
    for batch in [1, 3, 16]:
        x = torch.randn(batch, 300, device=device).to(dtype)
        assert_close(run_op(x, sw, bias), x.double() @ w.double().T + bias.double(), dtype, 300)


def test_empty_rows_zero_batch_and_degenerate_weights(device):
    w = pruned_weight(20, 30, 0.5, torch.float32, device)
    w[3] = 0
    w[7:12] = 0
    sw = SparseWeight.from_dense(w)
    x = torch.randn(6, 30, device=device)
    torch.testing.assert_close(run_op(x, sw), x @ w.T)
    assert run_op(torch.randn(0, 30, device=device), sw).shape == (0, 20)
    zero = SparseWeight.from_dense(torch.zeros(20, 30, device=device))
    assert zero.nnz == 0 and torch.equal(run_op(x, zero), torch.zeros(6, 20, device=device))
    gx = OPS.sparse_linear_grad_input(torch.randn(6, 20, device=device), zero.values, zero.row_ptr,
                                      zero.col_idx, zero.row_order, 30)
    assert torch.equal(gx, torch.zeros(6, 30, device=device))
    gv = OPS.sparse_linear_grad_values(torch.randn(0, 20, device=device), torch.randn(0, 30, device=device),
                                       sw.row_ptr, sw.col_idx, sw.row_order)
    assert torch.equal(gv, torch.zeros(sw.nnz, device=device))
    full = torch.randn(20, 30, device=device)
    torch.testing.assert_close(run_op(x, SparseWeight.from_dense(full)), x @ full.T)
    no_out = SparseWeight.from_dense(torch.zeros(0, 30, device=device))
    assert run_op(x, no_out).shape == (6, 0)
    no_in = SparseWeight.from_dense(torch.zeros(4, 0, device=device))
    b = torch.randn(4, device=device)
    torch.testing.assert_close(run_op(torch.randn(3, 0, device=device), no_in, b), b.expand(3, 4))


def test_nan_and_huge_values_propagate(device):
    w = pruned_weight(8, 16, 0.5, torch.float32, device)
    sw = SparseWeight.from_dense(w)
    x = torch.randn(3, 16, device=device)
    x[1, w[2].nonzero()[0, 0]] = float("nan")
    y = run_op(x, sw)
    assert torch.isnan(y[1, 2]) and not torch.isnan(y[0]).any()
    big = torch.full((2, 16), 1e30, device=device)
    # Against float64: float32 sums of 1e30-sized terms differ by summation order (dense BLAS
    # kernels differ between CPUs), so a float32 oracle is itself off by a few ulps.
    torch.testing.assert_close(run_op(big, sw), (big.double() @ w.double().T).float(), rtol=1e-5, atol=0)


def test_format_round_trips(device):
    w = pruned_weight(33, 70, 0.8, torch.float32, device)
    sw = SparseWeight.from_dense(w)
    sw.validate()
    assert torch.equal(sw.to_dense(), w)
    assert torch.equal(sw.to_sparse_csr().to_dense(), w)
    assert torch.equal(SparseWeight.from_csr(w.to_sparse_csr()).to_dense(), w)
    lengths = (sw.row_ptr[1:] - sw.row_ptr[:-1])[sw.row_order.long()]
    assert bool((lengths[:-1] >= lengths[1:]).all())  # longest rows first
    half = sw.to(torch.bfloat16)
    assert half.values.dtype == torch.bfloat16 and half.col_idx.dtype == torch.int16
    assert sw.nbytes() == sw.nnz * 6 + 34 * 8 + 33 * 4


def test_malformed_structure_is_named():
    w = pruned_weight(6, 10, 0.5)
    good = SparseWeight.from_dense(w)
    parts = lambda **kw: {**dict(values=good.values, row_ptr=good.row_ptr, col_idx=good.col_idx,
                                 row_order=good.row_order, in_features=10), **kw}
    bad_ptr = good.row_ptr.clone()
    bad_ptr[2] = int(good.row_ptr[3]) + 1  # row 2 would end after row 3 starts
    bad_cols = good.col_idx.clone()
    bad_cols[0] = 10
    unsorted = good.col_idx.clone()
    row = int((good.row_ptr[1:] - good.row_ptr[:-1]).argmax())
    j = int(good.row_ptr[row])
    unsorted[j], unsorted[j + 1] = unsorted[j + 1], unsorted[j]
    cases = [
        (dict(row_ptr=bad_ptr), "row_ptr"), (dict(col_idx=bad_cols), "col_idx must lie"),
        (dict(col_idx=unsorted), "ascending"), (dict(col_idx=good.col_idx[:-1]), "col_idx"),
        (dict(row_ptr=good.row_ptr.int()), "row_ptr"), (dict(row_order=good.row_order[:-1]), "row_order"),
        (dict(row_order=torch.zeros_like(good.row_order)), "permutation"),
    ]
    for change, match in cases:
        args = parts(**change)
        with pytest.raises((TypeError, ValueError), match=match):
            validate_structure(*args.values(), "weight")


def test_bad_inputs_name_the_argument(device):
    w = pruned_weight(6, 10, 0.5, torch.float32, device)
    sw = SparseWeight.from_dense(w)
    x = torch.randn(4, 10, device=device)
    with pytest.raises(ValueError, match="in_features=10"):
        sparsedistill.sparse_linear(torch.randn(4, 9, device=device), sw)
    with pytest.raises(TypeError, match="dtype"):
        sparsedistill.sparse_linear(x.double(), sw)
    with pytest.raises(TypeError, match="floating point"):
        sparsedistill.sparse_linear(x.long(), sw)
    with pytest.raises(ValueError, match="bias"):
        sparsedistill.sparse_linear(x, sw, torch.randn(5, device=device))
    with pytest.raises(TypeError, match="SparseWeight"):
        sparsedistill.sparse_linear(x, w)
    # The raw op checks what it is handed, too.
    with pytest.raises(ValueError, match="input must have shape"):
        OPS.sparse_linear(x[:, :9], sw.values, sw.row_ptr, sw.col_idx, sw.row_order, 10, None)
    with pytest.raises(TypeError, match="col_idx"):
        OPS.sparse_linear(x, sw.values, sw.row_ptr, sw.col_idx.long(), sw.row_order, 10, None)
    with pytest.raises(TypeError, match="row_ptr"):
        OPS.sparse_linear(x, sw.values, sw.row_ptr.int(), sw.col_idx, sw.row_order, 10, None)
    with pytest.raises(ValueError, match="values"):
        OPS.sparse_linear(x, sw.values[:-1], sw.row_ptr, sw.col_idx, sw.row_order, 10, None)
    with pytest.raises(TypeError, match="dtype"):
        OPS.sparse_linear(x.double(), sw.values, sw.row_ptr, sw.col_idx, sw.row_order, 10, None)
    wide = SparseWeight.from_dense(pruned_weight(2, 40000, 0.9, torch.float32, device))
    with pytest.raises(TypeError, match="int32 when in_features > 32768"):
        OPS.sparse_linear(torch.randn(1, 40000, device=device), wide.values, wide.row_ptr,
                          wide.col_idx.short(), wide.row_order, 40000, None)
    with pytest.raises(ValueError, match="grad_out"):
        OPS.sparse_linear_grad_input(torch.randn(4, 5, device=device), sw.values, sw.row_ptr,
                                     sw.col_idx, sw.row_order, 10)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        SparseWeight.from_dense(torch.randn(3, device=device))
    with pytest.raises(TypeError, match="floating point"):
        SparseWeight.from_dense(torch.ones(3, 3, dtype=torch.int64, device=device))
    if device == "cuda":
        with pytest.raises(ValueError, match="device"):
            sparsedistill.sparse_linear(x.cpu(), sw)


def test_opcheck(device):
    w = pruned_weight(12, 37, 0.7, torch.float32, device)
    sw = SparseWeight.from_dense(w)
    x = torch.randn(5, 37, device=device, requires_grad=True)
    values = sw.values.clone().requires_grad_()
    bias = torch.randn(12, device=device, requires_grad=True)
    structure = (sw.row_ptr, sw.col_idx, sw.row_order)
    torch.library.opcheck(OPS.sparse_linear, (x, values, *structure, 37, bias))
    torch.library.opcheck(OPS.sparse_linear, (x.detach()[:1], sw.values, *structure, 37, None))
    gy = torch.randn(5, 12, device=device)
    torch.library.opcheck(OPS.sparse_linear_grad_input, (gy, sw.values, *structure, 37))
    torch.library.opcheck(OPS.sparse_linear_grad_values, (gy, x.detach(), *structure))


def test_torch_compile_fullgraph(device):
    layer = sparsedistill.SparseLinear.from_dense(pruned_weight(16, 24, 0.8, torch.float32, device),
                                                  torch.randn(16, device=device))
    x = torch.randn(7, 24, device=device, requires_grad=True)
    compiled = torch.compile(lambda x: torch.relu(layer(x)).sum(), fullgraph=True)
    out = compiled(x)
    out.backward()
    x2 = x.detach().clone().requires_grad_()
    dense = layer.to_dense()
    ref = torch.relu(dense(x2)).sum()
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, x2.grad)


def test_native_kernel_serves_cpu():
    info = skip_unless_native("cpu")
    for op in ("sparse_linear", "sparse_linear_grad_input", "sparse_linear_grad_values"):
        assert not info["ops"][op]["cpu"].startswith("reference"), info["ops"][op]


# --- SparseLinear and sparsify ----------------------------------------------------------------

def test_sparse_linear_module(device):
    linear = nn.Linear(50, 30, device=device)
    before = linear.weight.detach().clone()
    layer = sparsedistill.SparseLinear.from_linear(linear, amount=0.9)
    assert torch.equal(linear.weight, before)  # the source layer is untouched
    assert layer.nnz == 150 and abs(layer.density - 0.1) < 1e-9
    assert "density=0.1000" in repr(layer)
    x = torch.randn(3, 50, device=device)
    dense = layer.to_dense()
    assert int((dense.weight != 0).sum()) == 150
    torch.testing.assert_close(layer(x), dense(x))
    kept = dense.weight != 0
    assert before.abs()[kept].min() >= before.abs()[~kept].max()
    same = sparsedistill.SparseLinear.from_linear(dense)
    assert same.nnz == 150
    double = layer.to(torch.float64)
    assert double.values.dtype == torch.float64 and double.col_idx.dtype == torch.int16
    torch.testing.assert_close(double(x.double()), dense.double()(x.double()))


def test_state_dict_round_trip_weights_only(device):
    layer = sparsedistill.SparseLinear.from_linear(nn.Linear(40, 20, device=device), amount=0.75)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh = sparsedistill.SparseLinear(40, 20, device=device)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(4, 40, device=device)
    torch.testing.assert_close(fresh(x), layer(x))
    corrupt = {k: v.clone() for k, v in layer.state_dict().items()}
    corrupt["col_idx"][0] = 40
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(RuntimeError, match="col_idx must lie"):
        fresh.load_state_dict(corrupt)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def small_pruned_mlp(device):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(32, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).to(device)
    for i, amount in [(0, 0.3), (2, 0.95), (4, 0.9)]:
        sparsedistill.magnitude_prune_(model[i].weight.data, amount)
    return model


def test_sparsify_keeps_outputs(device):
    model = small_pruned_mlp(device)
    x = torch.randn(9, 32, device=device)
    want = model(x)
    report = sparsedistill.sparsify(model, min_sparsity=0.5, measure=False)
    assert report.replaced == ["2", "4"]
    assert type(model[0]) is nn.Linear and isinstance(model[2], sparsedistill.SparseLinear)
    assert "min_sparsity" in report.decisions[0].reason
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    assert "layer" in str(report)


def test_sparsify_decides_by_measurement(device):
    model = small_pruned_mlp(device)
    x = torch.randn(2, 32, device=device)
    want = model(x)
    report = sparsedistill.sparsify(model, min_sparsity=0.5, batch_size=1, reps=3, min_time_s=0)
    for d in report.decisions[1:]:
        assert d.dense_ms is not None and d.sparse_ms is not None
        assert d.replaced == (d.speedup >= 1.03)  # the default margin
        assert isinstance(dict(model.named_children())[d.name], sparsedistill.SparseLinear) == d.replaced
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsedistill.sparsify(model, min_sparsity=1.5)
