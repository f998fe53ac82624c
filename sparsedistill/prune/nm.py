"""N:M sparsity: masks that keep n of every m consecutive weights (the op sparsedistill::nm_mask),
and the conversion of a 2:4 mask to torch's semi-structured sparse tensor (Ampere+ GPUs).

Masks are True where a weight is kept. Among equal magnitudes the lowest index is pruned first,
the tie rule of every pruning function of the package.
"""
from __future__ import annotations

import torch

from .checks import check_dim, check_float_tensor, check_int
from .distributed import dtensor_types

__all__ = ["nm_mask", "to_semi_structured"]


def nm_mask(tensor: torch.Tensor, n: int = 2, m: int = 4, dim: int = -1, *, scores=None) -> torch.Tensor:
    """Bool N:M keep-mask: of every `m` consecutive weights along `dim`, the `n` largest in
    magnitude (or in `scores`, a tensor of tensor's shape: e.g. Wanda's |W| * ||X||) are kept
    (exactly n per group). Among equal keys the lowest index is pruned first (so an all-equal
    2:4 group keeps its last two weights), as in magnitude_mask.

    Runs the op sparsedistill::nm_mask (one C++/CUDA kernel launch where the extension is
    built) on a view with `dim` moved last; float64 magnitudes are compared in float64.
    A Shard(0) DTensor (FSDP2) with dim != 0 is masked within each rank's shard (its groups
    never straddle shards); the mask is a DTensor of the same placement."""
    DTensor, Shard = dtensor_types()
    if DTensor is not None and isinstance(tensor, DTensor):
        d = dim + tensor.dim() if isinstance(dim, int) and dim < 0 else dim
        if (len(tensor.placements) != 1 or not isinstance(tensor.placements[0], Shard)
                or tensor.placements[0].dim != 0 or d == 0):
            raise NotImplementedError(f"nm_mask of a DTensor with placements {tensor.placements} along dim "
                                      f"{dim}: only Shard(0) DTensors along another dim")
        local = scores.to_local() if isinstance(scores, DTensor) else scores
        keep = nm_mask(tensor.to_local(), n, m, dim, scores=local)
        return DTensor.from_local(keep, tensor.device_mesh, tensor.placements, run_check=False,
                                  shape=tensor.shape, stride=tensor.stride())
    check_float_tensor("tensor", tensor)
    m = check_int("m", m, low=1)
    n = check_int("n", n)
    if not 0 < n < m:
        raise ValueError(f"n must satisfy 0 < n < m (= {m}), got {n}")
    dim = check_dim(dim, tensor)
    size = tensor.shape[dim]
    if size % m:
        raise ValueError(f"dim: size {size} of dim {dim} is not divisible by m = {m}")
    if scores is not None:
        check_float_tensor("scores", scores)
        if scores.shape != tensor.shape or scores.device != tensor.device:
            raise ValueError(f"scores must have tensor's shape {tuple(tensor.shape)} and device "
                             f"({tensor.device}), got {tuple(scores.shape)} on {scores.device}")
    ranked = tensor if scores is None else scores
    if torch.isnan(ranked).any():
        raise ValueError(f"{'tensor' if scores is None else 'scores'} contains NaN; it cannot be ranked")
    keep = torch.ops.sparsedistill.nm_mask(ranked.detach().movedim(dim, -1), n, m, scores is None)
    return keep.movedim(-1, dim).contiguous()


def to_semi_structured(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`torch.sparse.to_sparse_semi_structured(weight * mask)`: a 2:4 sparse tensor for the
    hardware-accelerated sparse matmul of Ampere+ GPUs.

    `mask` must be a bool 2:4 mask of `weight`'s (2-D) shape along its last dim (at most 2 kept in
    every 4 consecutive columns, e.g. nm_mask(weight, 2, 4)), `weight` float16, bfloat16 or float32
    on a CUDA device of compute capability >= 8.0, and torch must provide semi-structured sparsity.
    Anything else raises a ValueError/TypeError/RuntimeError saying what is wrong; shape limits of
    torch's backends (minimum sizes, multiples) are reported from torch's own check.
    Only the error paths are tested without a GPU."""
    check_float_tensor("weight", weight)
    if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"weight must be float16, bfloat16 or float32 for 2:4 sparsity, got {weight.dtype}")
    if weight.dim() != 2 or weight.shape[1] % 4:
        raise ValueError(f"weight must be 2-D with a multiple of 4 columns, got shape {tuple(weight.shape)}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != weight.shape:
        raise TypeError(f"mask must be a bool tensor of shape {tuple(weight.shape)}, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    if mask.device != weight.device:
        raise ValueError(f"mask must be on {weight.device}, got {mask.device}")
    if (mask.reshape(-1, 4).sum(-1) > 2).any():
        raise ValueError("mask is not a 2:4 pattern: some group of 4 columns keeps more than 2")
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        raise RuntimeError(f"torch {torch.__version__} has no semi-structured sparsity support")
    if not weight.is_cuda:
        raise RuntimeError(f"semi-structured sparsity needs a CUDA tensor, weight is on {weight.device}")
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        raise RuntimeError("semi-structured sparsity needs a GPU of compute capability >= 8.0")
    try:
        return torch.sparse.to_sparse_semi_structured((weight.detach() * mask).contiguous())
    except RuntimeError as e:
        raise RuntimeError(f"torch rejected the 2:4 conversion of weight {tuple(weight.shape)} "
                           f"{weight.dtype}: {e}") from e
