"""Pruning. As a namespace, ``from sparsedistill import prune`` is a drop-in for
``torch.nn.utils.prune`` (torch_compat.py: same names and semantics, bool masks, exact fast
selection), and it also holds the rest of the area:

- magnitude.py: exact k-smallest masks per tensor or across a model (the select_smallest and
  zero_smallest ops), by magnitude or by any score;
- nm.py: N:M masks (the nm_mask op) and 2:4 semi-structured conversion;
- structured.py: channel and group norms, structured masks; shrink.py: removing pruned units;
- schedule.py: the cubic sparsity schedule;
- calibration.py: activation statistics of every Linear's inputs (forward hooks);
  sparsegpt.py: the SparseGPT layer step; oneshot.py: prune_model, one-shot magnitude / Wanda /
  SparseGPT pruning of a whole model, block by block.

ops.py defines the ops, reference.py holds their pure-PyTorch kernels, checks.py the argument
checks; the native kernels are in csrc/prune/.
"""
from . import ops  # noqa: F401  (defines the ops)
from .magnitude import global_magnitude_masks, global_magnitude_prune_, magnitude_mask, magnitude_prune_
from .nm import nm_mask, to_semi_structured
from .calibration import LinearStats, collect_statistics
from .oneshot import LayerReport, PruneReport, find_blocks, prune_model, wanda_prune_, wanda_scores
from .sparsegpt import sparsegpt_prune_
from .schedule import CubicSparsitySchedule, cubic_sparsity_schedule
from .shrink import shrink_conv_pair, shrink_dead_units_, shrink_linear_pair, shrink_mlp_
from .structured import channel_norms, group_norms, structured_mask
from .torch_compat import *  # noqa: F401,F403  (torch.nn.utils.prune's names)
from .torch_compat import __all__ as _torch_names
from .torch_compat import (  # noqa: F401  (torch's private helpers, which its users call)
    _compute_norm, _compute_nparams_toprune, _validate_pruning_amount, _validate_pruning_amount_init,
    _validate_pruning_dim, _validate_structured_pruning,
)

__all__ = [*_torch_names, "magnitude_mask", "magnitude_prune_", "global_magnitude_masks",
           "global_magnitude_prune_", "nm_mask", "to_semi_structured", "channel_norms",
           "group_norms", "structured_mask", "shrink_linear_pair", "shrink_conv_pair",
           "shrink_mlp_", "shrink_dead_units_", "cubic_sparsity_schedule", "CubicSparsitySchedule",
           "collect_statistics", "LinearStats", "prune_model", "PruneReport", "LayerReport",
           "find_blocks", "wanda_scores", "wanda_prune_", "sparsegpt_prune_"]
