"""sparsedistill: fast model compression for PyTorch.

    import sparsedistill
    loss = sparsedistill.distillation_loss(student_logits, teacher_logits, labels, T=4, alpha=0.5)

One folder per technique: distill/ (the fused loss), prune/ (magnitude, N:M and structured
pruning; as a namespace, a drop-in for torch.nn.utils.prune), sparse/ (sparse matmul for pruned
weights), train/ (pruning and distillation loops, metrics). Every op is a torch.library op
(torch.ops.sparsedistill.*) with a pure-PyTorch default kernel; the compiled C++/CUDA kernels
override it when the extension is built. See backend_info().
"""
from ._library import backend_info, load_native
from . import distill, prune, sparse, train  # noqa: E402,F401  (each area defines its ops on import)

load_native()  # after the ops are defined: the native library registers kernels for them

from .distill import (  # noqa: E402
    DistillationLoss, FusedLinearDistillationLoss, distillation_loss, fused_linear_distillation_loss,
)
from .prune import (  # noqa: E402
    CubicSparsitySchedule, channel_norms, cubic_sparsity_schedule, global_magnitude_masks,
    global_magnitude_prune_, group_norms, magnitude_mask, magnitude_prune_, nm_mask,
    shrink_conv_pair, shrink_dead_units_, shrink_linear_pair, shrink_mlp_, structured_mask,
    to_semi_structured, collect_statistics, prune_model, sparsegpt_prune_, wanda_prune_, wanda_scores,
)
from .sparse import (  # noqa: E402
    SparseLinear, SparseWeight, SparsifyPlan, SparsifyReport, apply_plan, from_pretrained,
    save_pretrained, sparse_linear, sparsify,
)
from .train import MaskedPruner, cpu_latency_ms, evaluate, fit_distill, model_stats, train_hard_labels  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "distillation_loss", "DistillationLoss", "fused_linear_distillation_loss",
    "FusedLinearDistillationLoss",
    "magnitude_mask", "magnitude_prune_", "global_magnitude_masks", "global_magnitude_prune_",
    "nm_mask", "to_semi_structured", "channel_norms", "group_norms", "structured_mask",
    "shrink_linear_pair", "shrink_conv_pair", "shrink_mlp_", "shrink_dead_units_",
    "cubic_sparsity_schedule", "CubicSparsitySchedule",
    "collect_statistics", "prune_model", "sparsegpt_prune_", "wanda_prune_", "wanda_scores",
    "SparseWeight", "sparse_linear", "SparseLinear", "sparsify", "SparsifyReport", "SparsifyPlan",
    "apply_plan", "save_pretrained", "from_pretrained",
    "MaskedPruner", "fit_distill", "train_hard_labels", "evaluate", "model_stats", "cpu_latency_ms",
    "prune", "distill", "sparse", "train", "backend_info", "__version__",
]
