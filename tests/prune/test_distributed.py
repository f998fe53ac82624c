"""Global selection across processes: 2 and 4 gloo processes (distributed_cases.py, spawned in a
subprocess with a time limit) against one process; and the three step ops it is built from,
native against the reference."""
import os
import subprocess
import sys

import pytest
import torch

import sparsedistill  # noqa: F401
from sparsedistill.prune import reference as R

HERE = os.path.dirname(os.path.abspath(__file__))
gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                          reason="torch.distributed with gloo is not available")


@gloo
@pytest.mark.parametrize("world", [2, 4])
def test_masks_equal_one_process(world):
    run = subprocess.run([sys.executable, os.path.join(HERE, "distributed_cases.py"), str(world)],
                         capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    for r in range(world):
        assert f"rank {r} ok" in out, out[-4000:]


def _inputs():
    g = torch.Generator().manual_seed(0)
    vals = [torch.randn(37, 53, generator=g), torch.randn(0), (torch.randn(1000, generator=g) * 4).round() / 4,
            torch.randn(5, 7, generator=g).bfloat16(), torch.zeros(6)]
    keep = [torch.rand(v.shape, generator=g) > 0.3 for v in vals]
    return vals, keep


@pytest.mark.parametrize("with_keep", [False, True])
@pytest.mark.parametrize("magnitude", [True, False])
def test_step_ops_match_the_reference(device, with_keep, magnitude):
    vals, keep = _inputs()
    vals, keep = [v.to(device) for v in vals], [k.to(device) for k in keep]
    kp = keep if with_keep else None
    keys = R.order_keys(vals[2], magnitude)
    ops = torch.ops.sparsedistill
    for shift, prefix in ((16, -1), (0, int(keys[0]) >> 16), (0, int(R.order_keys(vals[4], magnitude)[0]) >> 16)):
        assert torch.equal(ops.select_histogram(vals, kp, shift, prefix, magnitude).cpu(),
                           R.select_histogram(vals, kp, shift, prefix, magnitude))
    for threshold in (int(keys[5]), int(R.order_keys(vals[4], magnitude)[0])):
        ties = ops.select_tie_counts(vals, kp, threshold, magnitude)
        assert torch.equal(ties, R.select_tie_counts(vals, kp, threshold, magnitude))
        for prune in (torch.zeros(5, dtype=torch.int64), ties // 2, ties):
            got = ops.select_at_threshold(vals, kp, threshold, prune, magnitude)
            want = R.select_at_threshold(vals, kp, threshold, prune, magnitude)
            assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_steps_compose_to_select_smallest():
    """The one-process pipeline of the steps equals select_smallest (so the ranks' sum does)."""
    vals, keep = _inputs()
    from sparsedistill.prune.distributed import _find_bin
    ops = torch.ops.sparsedistill
    for k in (1, 50, 777, 2000):
        high = ops.select_histogram(vals, keep, 16, -1, True)
        hb, below = _find_bin(high, k)
        low = ops.select_histogram(vals, keep, 0, hb, True)
        lb, below_low = _find_bin(low, k - below)
        threshold, need = hb << 16 | lb, k - below - below_low
        ties = ops.select_tie_counts(vals, keep, threshold, True)
        prune = torch.clamp(need - (torch.cumsum(ties, 0) - ties), min=0).minimum(ties)
        got = ops.select_at_threshold(vals, keep, threshold, prune, True)
        want = ops.select_smallest(vals, keep, k, True)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), k


@pytest.mark.parametrize("call, match", [
    (lambda v: torch.ops.sparsedistill.select_histogram(v, None, 8, -1, True), "shift must be 0 or 16"),
    (lambda v: torch.ops.sparsedistill.select_histogram(v, None, 0, 70000, True), "prefix must be"),
    (lambda v: torch.ops.sparsedistill.select_tie_counts(v, None, -1, True), "threshold must be"),
    (lambda v: torch.ops.sparsedistill.select_at_threshold(v, None, 5, torch.zeros(3, dtype=torch.int64), True),
     "prune_ties must be"),
    (lambda v: torch.ops.sparsedistill.select_histogram([torch.tensor([float("nan")])], None, 16, -1, True), "NaN"),
])
def test_step_op_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call([torch.randn(4)])


def test_opcheck_step_ops():
    vals, keep = _inputs()
    vals, keep = vals[:1] + vals[2:4], keep[:1] + keep[2:4]
    threshold = int(R.order_keys(vals[1], True)[5])
    for op, args in ((torch.ops.sparsedistill.select_histogram.default, (vals, keep, 16, -1, True)),
                     (torch.ops.sparsedistill.select_tie_counts.default, (vals, keep, threshold, True)),
                     (torch.ops.sparsedistill.select_at_threshold.default,
                      (vals, keep, threshold, torch.tensor([0, 1, 0]), True))):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_plain_tensors_need_a_group():
    from sparsedistill.prune.distributed import distributed_masks
    with pytest.raises(ValueError, match="process_group is needed"):
        distributed_masks([torch.randn(3)], 0.5)
