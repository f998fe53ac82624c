// What the CPU and CUDA host code of sparsedistill::fused_linear_distill share: the logits'
// transform softcap(logit_scale * z) and its chain rule, on ATen tensors of one chunk (any
// device; the ops run on the tensors' device and, on CUDA, on the current stream).
#pragma once
#include <ATen/ATen.h>

namespace sparsedistill {

// z <- softcap(scale * z) in place, softcap(x) = cap * tanh(x / cap) (cap == 0: none).
inline void transform_logits_(at::Tensor& z, double scale, double cap) {
  if (scale != 1.0) z.mul_(scale);
  if (cap != 0.0) z.div_(cap).tanh_().mul_(cap);
}

// g <- g * d(transformed)/dz in place, given the transformed logits `capped`:
// d(cap tanh(scale z / cap))/dz = scale * (1 - (capped / cap)^2).
inline void chain_rule_(at::Tensor& g, const at::Tensor& capped, double scale, double cap) {
  if (cap != 0.0) {
    const at::Tensor u = capped / cap;
    g.mul_(1.0 - u * u);
  }
  if (scale != 1.0) g.mul_(scale);
}

// The 7 outputs of the op.
using FusedLinearOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                      at::Tensor, at::Tensor>;

}  // namespace sparsedistill
