"""sparsedistill: fast model compression for PyTorch.

    import sparsedistill
    loss = sparsedistill.distillation_loss(student_logits, teacher_logits, labels, T=4, alpha=0.5)

Every op is a torch.library op (torch.ops.sparsedistill.*) with a pure-PyTorch default kernel;
the compiled C++/CUDA kernels override it when the extension is built. See backend_info().
"""
from . import _ops  # noqa: F401  (defines the ops before the native library registers kernels)
from ._backend import backend_info, load_native

load_native()

from .distill import DistillationLoss, distillation_loss  # noqa: E402
from . import prune  # noqa: E402  (drop-in for torch.nn.utils.prune)
from .pruning import (  # noqa: E402
    global_magnitude_masks, global_magnitude_prune_, magnitude_mask, magnitude_prune_,
)  # noqa: E402
from .sparse import SparseWeight, sparse_linear  # noqa: E402
from .sparse_modules import SparseLinear, SparsifyReport, sparsify  # noqa: E402
from .structured import (  # noqa: E402
    CubicSparsitySchedule, channel_norms, cubic_sparsity_schedule, group_norms, nm_mask,
    shrink_conv_pair, shrink_dead_units_, shrink_linear_pair, shrink_mlp_, structured_mask,
    to_semi_structured,
)
from .metrics import cpu_latency_ms, evaluate, model_stats  # noqa: E402
from .train import MaskedPruner, fit_distill, train_hard_labels  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "distillation_loss", "DistillationLoss",
    "magnitude_mask", "magnitude_prune_", "global_magnitude_masks", "global_magnitude_prune_",
    "nm_mask", "to_semi_structured", "channel_norms", "group_norms", "structured_mask",
    "shrink_linear_pair", "shrink_conv_pair", "shrink_mlp_", "shrink_dead_units_",
    "cubic_sparsity_schedule", "CubicSparsitySchedule",
    "SparseWeight", "sparse_linear", "SparseLinear", "sparsify", "SparsifyReport",
    "MaskedPruner", "fit_distill", "train_hard_labels", "evaluate", "model_stats", "cpu_latency_ms",
    "prune", "backend_info", "__version__",
]
