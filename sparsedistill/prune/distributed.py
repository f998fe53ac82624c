"""Exact global magnitude selection across processes (torch.distributed: gloo on CPUs, NCCL on
GPUs), without gathering any weight, score or mask.

The one-process selection (select_smallest) is a radix select: a histogram of the high 16 bits
of the order keys, the bin holding the k-th smallest, a histogram of the low 16 bits inside
that bin, the threshold. Histograms add across processes, so here each rank histograms only
its own tensors (ops select_histogram), the histograms are all-reduced, and every rank derives
the same threshold. Ties at the threshold are ranked by a global position:

- a list of plain tensors per rank (process_group given): rank 0's tensors in order, then
  rank 1's, ... (each tensor by flat index), as if the lists were concatenated;
- DTensor parameters (FSDP2's fully_shard: Shard(0) on a 1-D mesh): parameter order, then the
  shard's offset in the full tensor (the mesh coordinate), so that the masks are bit-identical
  to pruning the unsharded model in one process.

Communication per selection: one all_gather_object of a few numbers per rank (argument
agreement and eligible counts), two all-reduces of 65,537 int64 (512 KiB each), and, only
when the threshold splits a run of ties, one all-gather of one int64 per tensor (DTensor) or
per rank (lists). Independent of the model's size. Every argument error is found on its rank
before the first histogram and raised on every rank (no rank is left waiting in a collective).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import ops  # noqa: F401  (defines the select_* ops)
from .checks import check_selection_args, resolve_amount

_BINS = 65536


def dtensor_types():
    """(DTensor, Shard) of this torch, or (None, None)."""
    try:
        from torch.distributed.tensor import DTensor, Shard
    except ImportError:  # torch < 2.4
        try:
            from torch.distributed._tensor import DTensor, Shard
        except ImportError:
            return None, None
    return DTensor, Shard


def is_dtensor(t) -> bool:
    DTensor, _ = dtensor_types()
    return DTensor is not None and isinstance(t, DTensor)


def _comm_device(group) -> torch.device:
    return (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl"
            else torch.device("cpu"))


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    dev = _comm_device(group)
    t = t.to(dev)
    dist.all_reduce(t, group=group)
    return t.cpu()


def _find_bin(hist: torch.Tensor, r: int) -> tuple[int, int]:
    """The bin holding the r-th smallest (1-based) counted element, and the count below it."""
    cum = torch.cumsum(hist, 0)
    b = int(torch.searchsorted(cum, torch.tensor([r], dtype=cum.dtype)))
    return b, int(cum[b] - hist[b])


def _local_view(tensors, scores, masks, group):
    """(group, locals, scores, masks, mesh info) with DTensors replaced by their local shards.
    DTensor parameters must be Shard(0) on a 1-D mesh; the mesh's group is used."""
    DTensor, Shard = dtensor_types()
    dts = [isinstance(t, DTensor) for t in tensors] if DTensor is not None else [False] * len(tensors)
    if not any(dts):
        if group is None:
            raise ValueError("process_group is needed for plain tensors (pass torch.distributed.group.WORLD "
                             "or a group from torch.distributed.new_group)")
        return group, list(tensors), scores, masks, None
    if not all(dts):
        raise TypeError("tensors must be all DTensors (FSDP2 shards) or all plain tensors, got a mix")
    meshes = {id(t.device_mesh) for t in tensors}
    mesh = tensors[0].device_mesh
    if len(meshes) > 1 and len({tuple(t.device_mesh.mesh.flatten().tolist()) for t in tensors}) > 1:
        raise ValueError("every DTensor must live on the same device mesh")
    if mesh.ndim != 1:
        raise NotImplementedError(f"DTensors on a {mesh.ndim}-D mesh are not supported (a 1-D mesh, as "
                                  "fully_shard makes by default)")
    for i, t in enumerate(tensors):
        if len(t.placements) != 1 or not (isinstance(t.placements[0], Shard) and t.placements[0].dim == 0):
            raise NotImplementedError(f"tensors[{i}] has placements {t.placements}; only Shard(0) (FSDP2) "
                                      "is supported")
    mesh_group = mesh.get_group()
    if group is not None and group is not mesh_group and dist.get_world_size(group) != dist.get_world_size(mesh_group):
        raise ValueError("process_group differs from the DTensors' mesh group; leave it None for DTensors")
    local = lambda xs: None if xs is None else [x.to_local() if isinstance(x, DTensor) else x for x in xs]
    return mesh_group, local(tensors), local(scores), local(masks), mesh


def _agree(group, error, signature, eligible: int):
    """One all_gather_object: every rank's argument error (raised on every rank) and signature
    (ranks that disagree raise on every rank). Returns the eligible counts of all ranks."""
    world = dist.get_world_size(group)
    gathered = [None] * world
    dist.all_gather_object(gathered, (error, signature, eligible), group=group)
    for r, (err, _, _) in enumerate(gathered):
        if err is not None:
            kind, msg = err
            exc = {"TypeError": TypeError, "NotImplementedError": NotImplementedError,
                   "RuntimeError": RuntimeError}.get(kind, ValueError)
            raise exc(f"rank {r}: {msg}")
    for r, (_, sig, _) in enumerate(gathered):
        if sig != gathered[0][1]:
            raise ValueError(f"ranks disagree on the selection arguments: rank 0 {gathered[0][1]}, "
                             f"rank {r} {sig}")
    return [e for _, _, e in gathered]


def distributed_masks(tensors, amount, *, scores=None, masks=None, process_group=None,
                      zero: bool = False) -> list:
    """global_magnitude_masks (zero=False) or global_magnitude_prune_ (zero=True) over the
    tensors of every rank of `process_group` (or of the DTensors' mesh). Returns this rank's
    keep-masks (DTensors for DTensor inputs), bit-identical to one process pruning the
    concatenation in the global order of the module docstring."""
    tensors = list(tensors)
    error, local, index, mesh = None, [], [], None
    try:
        group, local, scores_l, masks_l, mesh = _local_view(tensors, scores, masks, process_group)
        if local:
            local, scores_l, masks_l, _, index = check_selection_args(local, 0, scores_l, masks_l, writes=zero)
        if mesh is not None and len(index) != len(set(index)):
            raise ValueError("the same DTensor is listed twice; list each parameter once")
        eligible = (sum(int(m.sum()) for m in masks_l) if masks_l is not None else sum(t.numel() for t in local))
        n_params = len(tensors) if mesh is not None else None
        signature = (repr(amount), scores is None, masks is None, zero, n_params,
                     None if mesh is None else [tuple(t.shape) for t in tensors])
    except (TypeError, ValueError, NotImplementedError, RuntimeError) as exc:
        if process_group is None and not any(is_dtensor(t) for t in tensors):
            raise
        group = process_group if process_group is not None else tensors[0].device_mesh.get_group()
        error, signature, eligible = (type(exc).__name__, str(exc)), None, 0
    counts = _agree(group, error, signature, eligible)
    k = resolve_amount(amount, sum(counts))
    rank = dist.get_rank(group)
    values = scores_l if scores_l is not None else [t.detach() for t in local]
    magnitude = scores is None

    def histogram(shift, prefix):
        hist = torch.zeros(_BINS + 1, dtype=torch.int64)  # the last entry flags NaN
        nan_error = None
        if values:
            try:
                hist[:_BINS] = torch.ops.sparsedistill.select_histogram(values, masks_l, shift, prefix, magnitude).cpu()
            except ValueError as exc:  # NaN: flagged, raised on every rank below
                hist[_BINS], nan_error = rank + 1, str(exc)
        hist = _all_reduce(hist, group)
        if hist[_BINS]:
            raise ValueError(nan_error or "another rank's tensors hold NaN: magnitudes (or scores) must be comparable")
        return hist[:_BINS]

    if k == 0:
        keep = [m.clone() if masks_l is not None else torch.ones_like(v, dtype=torch.bool)
                for m, v in zip(masks_l or [None] * len(values), values)]
        histogram(16, -1)  # the NaN check, on every rank alike
    else:
        high = histogram(16, -1)
        hb, below_high = _find_bin(high, k)
        low = histogram(0, hb)
        lb, below_low = _find_bin(low, k - below_high)
        threshold, need = hb << 16 | lb, k - below_high - below_low
        if need == int(low[lb]):  # every tie goes: no ranking across ranks needed
            prune = torch.tensor([v.numel() for v in values], dtype=torch.int64)
        else:
            ties = (torch.ops.sparsedistill.select_tie_counts(values, masks_l, threshold, magnitude).cpu()
                    if values else torch.zeros(0, dtype=torch.int64))
            prune = _ties_to_prune(ties, need, group, rank, mesh, len(tensors))
        keep = (torch.ops.sparsedistill.select_at_threshold(values, masks_l, threshold, prune, magnitude)
                if values else [])
    if zero:
        with torch.no_grad():
            for t, m in zip(local, keep):
                t.detach().masked_fill_(~m, 0)
    out = [keep[i] for i in index]
    if mesh is not None:
        DTensor, _ = dtensor_types()
        out = [DTensor.from_local(m, mesh, t.placements, run_check=False, shape=t.shape, stride=t.stride())
               for m, t in zip(out, tensors)]
    return out


def _ties_to_prune(ties, need, group, rank, mesh, n_params):
    """How many of each local tensor's ties to prune, from every rank's tie counts and the
    global order (lists: rank, then position; DTensors: parameter, then mesh coordinate)."""
    world = dist.get_world_size(group)
    if mesh is None:  # lists: one total per rank
        totals = torch.zeros(world, dtype=torch.int64)
        totals[rank] = ties.sum()
        totals = _all_reduce(totals, group)
        before = int(totals[:rank].sum()) + torch.cumsum(ties, 0) - ties
    else:  # DTensors: a (world, params) table
        table = torch.zeros(world, n_params, dtype=torch.int64)
        table[rank] = ties  # one local shard per parameter (duplicates are refused)
        table = _all_reduce(table, group)
        per_param = table.sum(0)
        before_param = torch.cumsum(per_param, 0) - per_param
        before_rank = torch.cumsum(table, 0) - table  # ranks below, per parameter
        before = before_param + before_rank[rank]
    return torch.clamp(need - before, min=0).minimum(ties).to(torch.int64).contiguous()

