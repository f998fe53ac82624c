"""Every malformed kind of compressed structure through every public entry point (run as a
script by test_sparse_hostile.py, in a subprocess, so that a crash fails the test instead of
killing the test run). Prints one line per case and exits 1 if any case was accepted."""
import copy
import sys

import torch

from sparsedistill import SparseLinear, SparseWeight, sparse_linear


def malformed(sw):
    """(kind, values, row_ptr, col_idx, row_order) for every kind of bad structure of sw."""
    v, rp, ci, ro = sw.values, sw.row_ptr, sw.col_idx, sw.row_order
    row = int((rp[1:] - rp[:-1]).argmax())
    start = int(rp[row])

    def with_(t, index, value):
        t = t.clone()
        t[index] = value
        return t
    yield "column = in_features", v, rp, with_(ci, start, sw.in_features), ro
    yield "column negative", v, rp, with_(ci, start, -1), ro
    yield "columns not ascending", v, rp, with_(ci, start + 1, int(ci[start])), ro
    yield "row_ptr past nnz", v, with_(rp, -1, sw.nnz + 5), ci, ro
    yield "row_ptr decreasing", v, with_(rp, row + 1, start - 1 if start > 0 else 0) if start > 0 else with_(rp, 1, -1), ci, ro
    yield "row_ptr not from 0", v, with_(rp, 0, 1), ci, ro
    yield "row_order negative", v, rp, ci, with_(ro, 0, -1)
    yield "row_order out of range", v, rp, ci, with_(ro, 0, sw.out_features)
    yield "row_order repeats", v, rp, ci, with_(ro, 0, int(ro[1]))
    yield "values too short", v[:-1], rp, ci[:-1], ro


def run() -> int:
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    w[w.abs() < 0.8] = 0
    good = SparseWeight.from_dense(w)
    x = torch.randn(3, 16)
    accepted = []

    def expect_error(label, fn):
        try:
            fn()
        except (ValueError, TypeError, RuntimeError) as exc:
            print(f"ok   {label}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
            return
        accepted.append(label)
        print(f"FAIL {label}: accepted")

    for kind, v, rp, ci, ro in malformed(good):
        expect_error(f"SparseWeight(...) / {kind}", lambda: SparseWeight(v, rp, ci, ro, 16))
        # a valid weight written in place afterwards
        sw = SparseWeight.from_dense(w)
        for name, bad in (("values", v), ("row_ptr", rp), ("col_idx", ci), ("row_order", ro)):
            mine = getattr(sw, name)
            if bad.shape == mine.shape and not torch.equal(bad, mine):
                mine.copy_(bad)
        if sw.values.shape == v.shape:
            expect_error(f"sparse_linear after in-place write / {kind}", lambda: sparse_linear(x, sw))
        # SparseLinear: buffers written in place, buffers replaced, checkpoints
        for how in ("in place", "replaced"):
            m = SparseLinear.from_dense(w, torch.zeros(8))
            for name, bad in (("values", v), ("row_ptr", rp), ("col_idx", ci), ("row_order", ro)):
                mine = getattr(m, name)
                if torch.equal(bad, mine) if bad.shape == mine.shape else False:
                    continue
                if how == "in place" and bad.shape == mine.shape:
                    with torch.no_grad():
                        mine.copy_(bad)
                elif name == "values":
                    m.values = torch.nn.Parameter(bad.clone())
                else:
                    setattr(m, name, bad.clone())
            expect_error(f"SparseLinear.forward, buffers {how} / {kind}", lambda: m(x))
            expect_error(f"SparseLinear.forward 3-D, buffers {how} / {kind}", lambda: m(x[None]))
        m = SparseLinear.from_dense(w, torch.zeros(8))
        before = copy.deepcopy(m.state_dict())
        state = dict(before, weight=v, row_ptr=rp, col_idx=ci, row_order=ro)
        for strict in (True, False):
            expect_error(f"load_state_dict(strict={strict}) / {kind}", lambda: m.load_state_dict(state, strict=strict))
            same = all(torch.equal(a, b) for a, b in zip(before.values(), m.state_dict().values()))
            if not same:
                accepted.append(f"load_state_dict changed the module / {kind}")
        torch.testing.assert_close(m(x), x @ w.T)
    # partial checkpoints: one structure key missing, or an extra-sized bias
    m = SparseLinear.from_dense(w, torch.zeros(8))
    full = copy.deepcopy(m.state_dict())
    other = SparseLinear.from_dense(w * (w.abs() > 1.2), torch.ones(8)).state_dict()
    for missing in ("weight", "row_ptr", "col_idx", "row_order"):  # "weight": the values
        for strict in (True, False):
            partial = {k: t for k, t in other.items() if k != missing}
            expect_error(f"load_state_dict(strict={strict}) without {missing}", lambda: m.load_state_dict(partial, strict=strict))
            if not all(torch.equal(a, b) for a, b in zip(full.values(), m.state_dict().values())):
                accepted.append(f"partial load changed the module (without {missing})")
            torch.testing.assert_close(m(x), x @ w.T)
    expect_error("load_state_dict with a bias of the wrong shape",
                 lambda: m.load_state_dict(dict(other, bias=torch.zeros(9))))
    torch.testing.assert_close(m(x), x @ w.T)
    # a valid forward, then the structure written before backward: autograd refuses
    m = SparseLinear.from_dense(w)
    xg = x.clone().requires_grad_()
    y = m(xg).sum()
    with torch.no_grad():
        m.col_idx[0] = 15
    expect_error("backward after the structure was written", lambda: y.backward())
    print(f"{len(accepted)} accepted: {accepted}")
    return 1 if accepted else 0


if __name__ == "__main__":
    sys.exit(run())
