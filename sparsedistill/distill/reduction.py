"""The weight of each row in a loss's reduction, shared by distillation_loss and the fused
linear loss, and its form across processes (DDP / FSDP: token mean over every rank)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def check_process_group(process_group, reduction: str) -> None:
    if process_group is None:
        return
    if reduction != "mean":
        raise ValueError(f"process_group applies to reduction='mean' (the token mean over every rank); "
                         f"got reduction={reduction!r}, which each rank computes on its own")
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("process_group was given but torch.distributed is not initialised "
                           "(call torch.distributed.init_process_group first)")


def row_weight(labels, ignore_index: int, rows: int, reduction: str, device, process_group=None) -> torch.Tensor:
    """1/count for "mean" (count of the rows that count: labels != ignore_index, all rows
    without labels; at least 1, so an empty or all-ignored batch gives 0, not NaN), else 1. A
    device tensor (no host sync), folded into the gradient by the ops.

    With process_group, count is summed over its ranks and the weight is world_size / count:
    each rank's loss is its sum scaled so that DDP's gradient average (a division by
    world_size) gives exactly the gradient of the mean over the concatenated batch, however
    the ignored tokens are spread over the ranks; the mean of the ranks' losses is that mean.
    One all-reduce of one number per call."""
    f32 = dict(dtype=torch.float32, device=device)
    if reduction != "mean":
        return torch.ones((), **f32)
    if process_group is None:
        if labels is not None:
            return 1.0 / torch.clamp((labels != ignore_index).sum(), min=1).to(torch.float32)
        return torch.full((), 1.0 / max(rows, 1), **f32)
    count = ((labels != ignore_index).sum() if labels is not None
             else torch.tensor(rows, dtype=torch.int64, device=device)).to(torch.int64)
    comm = "cuda" if dist.get_backend(process_group) == "nccl" else "cpu"
    total = count.to(comm).reshape(1).clone()
    dist.all_reduce(total, group=process_group)
    world = dist.get_world_size(process_group)
    return (world / torch.clamp(total.to(device)[0], min=1).to(torch.float32)).to(torch.float32)
