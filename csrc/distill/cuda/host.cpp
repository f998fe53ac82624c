// CUDA host wrapper of sparsedistill::distill_loss: checks (distill/checks.h), allocates the
// outputs and launches the kernel of kernel.cu on the current stream. Compiled by the
// host compiler, so the heavy torch headers stay out of nvcc's way.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_host.h"
#include "distill/checks.h"
#include "distill/cuda/kernel.h"

namespace sparsedistill {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> distill_loss_cuda(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& labels,
    const at::Tensor& grad_scale, double T, double alpha, double beta, int64_t divergence,
    int64_t ignore_index, bool compute_grad) {
  const DistillParams p = check_distill_args(student, teacher, labels, grad_scale, T, alpha, beta,
                                             divergence, ignore_index, compute_grad);
  SD_CHECK_ARG(student.is_cuda(), "student must be a CUDA tensor, got ", device_str(student));
  if (student.scalar_type() == at::kDouble) {
    return distill_loss_via_float32(distill_loss_cuda, student, teacher, labels, grad_scale, T,
                                    alpha, beta, divergence, ignore_index, compute_grad);
  }
  const c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor y = labels.has_value() ? labels->contiguous() : at::Tensor();
  DistillOutputs out = alloc_distill_outputs(s, compute_grad);
  if (p.rows == 0) return out.as_tuple();
  // Labels are range-checked by the Python layer (one small reduction) where it is not traced;
  // the kernel itself answers an out-of-range label with a NaN row rather than a device trap.
  const cudaError_t err = launch_distill_loss(
      s.const_data_ptr(), t.const_data_ptr(), y.defined() ? y.const_data_ptr<int64_t>() : nullptr,
      grad_scale.const_data_ptr<float>(), compute_grad ? out.grad.mutable_data_ptr() : nullptr, out.loss.mutable_data_ptr<float>(),
      out.soft.mutable_data_ptr<float>(), out.hard.mutable_data_ptr<float>(),
      to_kernel_dtype(s.scalar_type()), p, c10::cuda::getCurrentCUDAStream());
  SD_CHECK_LAUNCH(err, "distill_loss");
  return out.as_tuple();
}

void scale_rows_cuda(at::Tensor& grad, const at::Tensor& row_scale) {
  if (scale_rows_checked_or_done(grad, row_scale)) return;
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor scale = row_scale.contiguous();
  const cudaError_t err =
      launch_scale_rows(grad.mutable_data_ptr(), scale.const_data_ptr<float>(),
                        to_kernel_dtype(grad.scalar_type()), grad.size(0), grad.size(1),
                        c10::cuda::getCurrentCUDAStream());
  SD_CHECK_LAUNCH(err, "scale_rows_");
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CUDA, m) {
  m.impl("distill_loss", &distill_loss_cuda);
  m.impl("scale_rows_", &scale_rows_cuda);
}

}  // namespace sparsedistill
