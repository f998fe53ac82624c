// Launcher of the CUDA distillation-loss kernel. No torch headers: the host wrapper
// (host.cpp) converts tensors to raw pointers and passes the current stream.
#pragma once
#include <cuda_runtime.h>
#include "common/dtype.h"
#include "distill/params.h"

namespace sparsedistill {

// student, teacher: rows x vocab, contiguous, both of `dtype`.
// labels: rows int64 or nullptr. grad: rows x vocab of `dtype`, or nullptr when !compute_grad.
// grad_scale: one float32 on the device that every gradient element is multiplied by (the
// reduction's 1/count), read by the kernel so the host never needs its value.
// loss_rows, soft_rows, hard_rows: rows float32 each.
// Returns the launch status (cudaGetLastError after the launch); never synchronises.
cudaError_t launch_distill_loss(const void* student, const void* teacher, const int64_t* labels,
                                const float* grad_scale, void* grad, float* loss_rows,
                                float* soft_rows, float* hard_rows, DType dtype,
                                const DistillParams& params, cudaStream_t stream);

// grad[r, :] *= row_scale[r] in place, rows x vocab contiguous; rows whose scale is exactly 1
// are not touched (no memory traffic), so the usual loss.backward() costs nothing here.
cudaError_t launch_scale_rows(void* grad, const float* row_scale, DType dtype, int64_t rows,
                              int64_t vocab, cudaStream_t stream);

}  // namespace sparsedistill
