"""Knowledge distillation: the fused softened-softmax loss (ops.py: the op and its autograd;
reference.py: the pure-PyTorch kernels; checks.py: argument checks; loss.py: the public API),
and the same loss from hidden states and output projections without the logits
(fused_linear.py: the public API; fused_linear_ops.py: the op; fused_linear_reference.py).
Native kernels: csrc/distill/."""
from . import ops  # noqa: F401  (defines the ops)
from .loss import DistillationLoss, distillation_loss
from .fused_linear import FusedLinearDistillationLoss, fused_linear_distillation_loss

__all__ = ["distillation_loss", "DistillationLoss", "fused_linear_distillation_loss",
           "FusedLinearDistillationLoss"]
