"""Knowledge distillation: the fused softened-softmax loss (ops.py: the op and its autograd;
reference.py: the pure-PyTorch kernels; checks.py: argument checks; loss.py: the public API).
Native kernels: csrc/distill/."""
from . import ops  # noqa: F401  (defines the ops)
from .loss import DistillationLoss, distillation_loss

__all__ = ["distillation_loss", "DistillationLoss"]
