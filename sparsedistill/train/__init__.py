"""Training with compression: MaskedPruner (pruner.py), the distillation and hard-label loops
(loops.py), and what a compressed model is worth (metrics.py)."""
from .loops import fit_distill, progress_bar, train_hard_labels
from .metrics import cpu_latency_ms, evaluate, model_stats
from .pruner import MaskedPruner, prunable_weights

__all__ = ["MaskedPruner", "prunable_weights", "fit_distill", "train_hard_labels", "progress_bar",
           "evaluate", "model_stats", "cpu_latency_ms"]
