"""Multi-process cases of the distributed selection, run by test_distributed.py:

    python tests/prune/distributed_cases.py WORLD

spawns WORLD processes (gloo, CPU) that each run every case and compare with one process
pruning the concatenated (or unsharded) tensors. Exit status 0 when every rank passed; each
rank prints "rank R ok: N cases".
"""
import os
import sys
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank_tensors(rank, world, seed=0):
    """Each rank's own list: different counts and shapes, rank 1 of 4 holds nothing, values on
    a coarse grid so that ties at the threshold span ranks."""
    g = torch.Generator().manual_seed(seed * 100 + rank)
    if world == 4 and rank == 1:
        return []
    shapes = [(7 + rank, 5), (3 * rank + 1,), (0, 4), (4, 3, 2)][: 2 + rank % 3]
    return [(torch.randint(-6, 7, s, generator=g).float() / 4) for s in shapes]


def all_tensors(world, seed=0):
    return [t for r in range(world) for t in rank_tensors(r, world, seed)]


def split_like(flat_list, rank, world, seed=0):
    start = sum(len(rank_tensors(r, world, seed)) for r in range(rank))
    return flat_list[start:start + len(rank_tensors(rank, world, seed))]


def shard_fsdp2(module, world) -> bool:
    """fully_shard(module) on a 1-D CPU mesh; False where this torch's FSDP2 lacks it or does
    not run on CPU (the FSDP2 cases then have nothing to test)."""
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        fully_shard(module, mesh=init_device_mesh("cpu", (world,)))
        return True
    except Exception:
        return False


def case_lists(rank, world, sd, group):
    n = 0
    for seed in range(3):
        mine, every = rank_tensors(rank, world, seed), all_tensors(world, seed)
        total = sum(t.numel() for t in every)
        for amount in (0.0, 0.3, 0.5, 0.77, 1.0, total // 3):
            got = sd.global_magnitude_masks(mine, amount, process_group=group)
            want = split_like(sd.global_magnitude_masks(every, amount), rank, world, seed)
            assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want)), (seed, amount)
            n += 1
        # scores, existing masks, pruning in place
        g = torch.Generator().manual_seed(seed)
        scores_all = [torch.randint(-3, 4, t.shape, generator=g).float() for t in every]
        masks_all = [torch.rand(t.shape, generator=g) > 0.3 for t in every]
        got = sd.global_magnitude_masks(mine, 0.4, scores=split_like(scores_all, rank, world, seed),
                                        masks=split_like(masks_all, rank, world, seed), process_group=group)
        want = split_like(sd.global_magnitude_masks(every, 0.4, scores=scores_all, masks=masks_all), rank, world, seed)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), ("scores/masks", seed)
        copies = [t.clone() for t in mine]
        got = sd.global_magnitude_prune_(copies, 0.6, process_group=group)
        want = split_like(sd.global_magnitude_masks(every, 0.6), rank, world, seed)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert all(torch.equal(c, t * m) for c, t, m in zip(copies, mine, want))
        n += 2
    return n


def case_dtensors(rank, world, sd, group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(7)  # the same full tensors on every rank
    full = [torch.randint(-5, 6, s, generator=g).float() / 2 for s in [(9, 6), (world * 3, 4), (2, 3), (13,)]]
    dts = [distribute_tensor(t, mesh, [Shard(0)]) for t in full]  # uneven and empty shards included
    n = 0
    for amount in (0.25, 0.5, 0.9, 17):
        got = sd.global_magnitude_masks(dts, amount)
        want = sd.global_magnitude_masks(full, amount)
        assert all(torch.equal(a.full_tensor(), b) for a, b in zip(got, want)), amount
        n += 1
    got = sd.magnitude_mask(dts[0], 0.5)
    assert torch.equal(got.full_tensor(), sd.magnitude_mask(full[0], 0.5))
    got = sd.magnitude_mask(dts[0], 0.5, group="row")
    assert torch.equal(got.full_tensor(), sd.magnitude_mask(full[0], 0.5, group="row"))
    got = sd.nm_mask(dts[0], 1, 3)
    assert torch.equal(got.full_tensor(), sd.nm_mask(full[0], 1, 3))
    copies = [distribute_tensor(t.clone(), mesh, [Shard(0)]) for t in full]
    sd.global_magnitude_prune_(copies, 0.5)
    want = sd.global_magnitude_masks(full, 0.5)
    assert all(torch.equal(c.full_tensor(), t * m) for c, t, m in zip(copies, full, want))
    return n + 4


def case_fully_shard(rank, world, sd, group):
    """FSDP2 parameters of a model: masks equal the unsharded model's, and MaskedPruner keeps
    every shard's mask in step."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    reference = [p.detach().clone() for p in model.parameters() if p.dim() > 1]
    if not shard_fsdp2(model, world):
        return 0
    params = [p for p in model.parameters() if p.dim() > 1]
    got = sd.global_magnitude_masks(params, 0.7)
    want = sd.global_magnitude_masks(reference, 0.7)
    assert all(torch.equal(a.full_tensor(), b) for a, b in zip(got, want))
    return 1


def case_errors(rank, world, sd, group):
    import pytest
    mine = rank_tensors(rank, world) or [torch.zeros(2)]
    n = 0
    amount = 0.5 if rank != world - 1 else 0.6
    with pytest.raises(ValueError, match="ranks disagree"):
        sd.global_magnitude_masks(mine, amount, process_group=group)
    bad = [torch.zeros(3, dtype=torch.int64)] if rank == 0 else mine
    with pytest.raises(TypeError, match="rank 0: tensors\\[0\\] must be a floating-point tensor"):
        sd.global_magnitude_masks(bad, 0.5, process_group=group)
    nan = [torch.tensor([1.0, float("nan")])] if rank == world - 1 else mine
    with pytest.raises(ValueError, match="NaN"):
        sd.global_magnitude_masks(nan, 0.5, process_group=group)
    before = [t.clone() for t in mine]
    with pytest.raises(ValueError, match="as a count must lie"):
        sd.global_magnitude_prune_(mine, 10 ** 9, process_group=group)
    assert all(torch.equal(a, b) for a, b in zip(before, mine))
    with pytest.raises(ValueError, match="process_group is needed"):
        from sparsedistill.prune.distributed import distributed_masks
        distributed_masks(mine, 0.5)
    n += 5
    # the group still works after all those errors
    got = sd.global_magnitude_masks(rank_tensors(rank, world), 0.5, process_group=group)
    want = split_like(sd.global_magnitude_masks(all_tensors(world), 0.5), rank, world)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    return n + 1


def case_calibration(rank, world, sd, group):
    """Each rank calibrates on its own batches; statistics and one-shot pruning equal one
    process on all batches."""
    from sparsedistill.train.lm import LMConfig, TinyLM
    cfg = LMConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16)
    torch.manual_seed(11)
    model = TinyLM(cfg)
    batches = [torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(b)) for b in range(2 * world)]
    mine = batches[rank::world]
    stats = sd.collect_statistics(model, mine, dtype=torch.float64, process_group=group)
    full = sd.collect_statistics(model, batches, dtype=torch.float64)
    for name in full:
        assert stats[name].rows == full[name].rows
        torch.testing.assert_close(stats[name].sq_sum, full[name].sq_sum, rtol=1e-12, atol=0)
    n = 1
    for method in ("wanda", "sparsegpt"):
        a, b = TinyLM(cfg), None
        a.load_state_dict(model.state_dict())
        b = TinyLM(cfg)
        b.load_state_dict(model.state_dict())
        ra = sd.prune_model(a, 0.5, method=method, calibration=mine, hessian_dtype=torch.float64, process_group=group)
        rb = sd.prune_model(b, 0.5, method=method, calibration=batches, hessian_dtype=torch.float64)
        for key in rb.masks:
            same = (ra.masks[key] == rb.masks[key]).float().mean().item()
            assert same >= 0.999, (method, key, same)  # sums in another order: rounding may flip a near-tie
        n += 1
    return n


def case_ddp_distillation(rank, world, sd, group):
    """Under DDP each rank holds different numbers of ignored tokens; with process_group the
    gradients equal one process's on the concatenated batch (both losses)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.manual_seed(5)
    student, teacher = torch.nn.Linear(8, 11), torch.nn.Linear(8, 11)
    ref = torch.nn.Linear(8, 11)
    ref.load_state_dict(student.state_dict())
    g = torch.Generator().manual_seed(9)
    xs = [torch.randn(3 + r, 8, generator=g) for r in range(world)]
    ys = [torch.randint(0, 11, (3 + r,), generator=g) for r in range(world)]
    for r in range(world):
        ys[r][: r + 1] = -100  # a different number of ignored rows per rank
    ddp = DDP(student)
    loss = sd.distillation_loss(ddp(xs[rank]), teacher(xs[rank]), ys[rank], T=2.0, alpha=0.3, process_group=group)
    loss.backward()
    x, y = torch.cat(xs), torch.cat(ys)
    sd.distillation_loss(ref(x), teacher(x), y, T=2.0, alpha=0.3).backward()
    torch.testing.assert_close(student.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-6)
    # the fused linear loss, from hidden states
    hs = torch.nn.Parameter(torch.zeros(1))
    w = torch.nn.Parameter(torch.randn(11, 8, generator=torch.Generator().manual_seed(1)))
    w_ref = torch.nn.Parameter(w.detach().clone())
    wt = torch.randn(11, 8, generator=torch.Generator().manual_seed(2))
    lf = sd.fused_linear_distillation_loss(xs[rank], w, xs[rank], wt, ys[rank], process_group=group)
    lf.backward()
    dist.all_reduce(w.grad, group=group)
    w.grad /= world  # what DDP does
    sd.fused_linear_distillation_loss(x, w_ref, x, wt, y).backward()
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-6)
    total = lf.detach().clone()
    dist.all_reduce(total, group=group)
    torch.testing.assert_close(total / world, sd.fused_linear_distillation_loss(x, w_ref, x, wt, y).detach(),
                               rtol=1e-5, atol=1e-6)
    del hs
    return 3


def case_pruner(rank, world, sd, group):
    """MaskedPruner: FSDP2 shards pruned as the unsharded model; DDP replicas keep rank 0's masks."""
    n = 0
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    reference = [p.detach().clone() for p in model.parameters() if p.dim() > 1]
    if shard_fsdp2(model, world):
        params = [p for p in model.parameters() if p.dim() > 1]
        pruner = sd.MaskedPruner(params, lambda step: 0.6)
        pruner.step(0)
        want = sd.global_magnitude_masks(reference, 0.6)
        assert all(torch.equal(m.full_tensor(), w) for m, w in zip(pruner.masks, want))
        assert all(torch.equal(p.full_tensor(), r * w) for p, r, w in zip(params, reference, want))
        n += 1
    replica = torch.nn.Linear(6, 6)
    with torch.no_grad():  # replicas that drifted apart: rank 0's masks win
        replica.weight.copy_(torch.randn(6, 6, generator=torch.Generator().manual_seed(rank)))
    pruner = sd.MaskedPruner([replica.weight], lambda step: 0.5, process_group=group)
    pruner.step(0)
    rank0 = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pruner.masks[0], sd.magnitude_mask(rank0, 0.5))
    return n + 1


def case_fit_distill_ddp(rank, world, sd, group):
    """fit_distill with a DDP student, process_group passed to the loss: one SGD step per rank
    on its own batch equals one process's step on the concatenated batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.manual_seed(8)
    teacher, student = torch.nn.Linear(6, 9), torch.nn.Linear(6, 9)
    single = torch.nn.Linear(6, 9)
    single.load_state_dict(student.state_dict())
    g = torch.Generator().manual_seed(21)
    xs = [torch.randn(2 + r, 6, generator=g) for r in range(world)]
    ys = [torch.randint(0, 9, (2 + r,), generator=g) for r in range(world)]
    ys[0][0] = -100
    ddp = DDP(student)
    sd.fit_distill(teacher, ddp, [(xs[rank], ys[rank])], torch.optim.SGD(ddp.parameters(), lr=0.5),
                   T=2.0, alpha=0.5, progress=False, process_group=group)
    sd.fit_distill(teacher, single, [(torch.cat(xs), torch.cat(ys))], torch.optim.SGD(single.parameters(), lr=0.5),
                   T=2.0, alpha=0.5, progress=False)
    for a, b in zip(student.parameters(), single.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return 1


def case_fsdp2_distillation(rank, world, sd, group):
    """A fully_shard student: with process_group the sharded gradients equal one process's on
    the concatenated batch (FSDP2 averages gradients over the ranks, as DDP does)."""
    torch.manual_seed(6)
    student, teacher, single = torch.nn.Linear(6, 10), torch.nn.Linear(6, 10), torch.nn.Linear(6, 10)
    single.load_state_dict(student.state_dict())
    if not shard_fsdp2(student, world):
        return 0
    g = torch.Generator().manual_seed(31)
    xs = [torch.randn(1 + 2 * r, 6, generator=g) for r in range(world)]
    ys = [torch.randint(0, 10, (1 + 2 * r,), generator=g) for r in range(world)]
    ys[-1][:2] = -100
    sd.distillation_loss(student(xs[rank]), teacher(xs[rank]), ys[rank], process_group=group).backward()
    x, y = torch.cat(xs), torch.cat(ys)
    sd.distillation_loss(single(x), teacher(x), y).backward()
    for a, b in zip(student.parameters(), single.parameters()):
        torch.testing.assert_close(a.grad.full_tensor(), b.grad, rtol=1e-5, atol=1e-6)
    return 1


CASES = [case_lists, case_dtensors, case_fully_shard, case_errors, case_calibration, case_ddp_distillation,
         case_pruner, case_fit_distill_ddp, case_fsdp2_distillation]


def worker(rank, world, init_file, extra):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    import sparsedistill as sd
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        n = 0
        for case in CASES + [c for c in extra]:
            n += case(rank, world, sd, dist.group.WORLD)
        dist.barrier()
        print(f"rank {rank} ok: {n} cases", flush=True)
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    # Leave without tearing gloo down: its threads can abort the process in destructors
    # ("terminate called without an active exception") after every case passed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(world: int, extra=()) -> None:
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(worker, args=(world, os.path.join(d, "init"), list(extra)), nprocs=world,
                           start_method="spawn")


if __name__ == "__main__":
    main(int(sys.argv[1]))
