// Launcher of the CUDA distillation-loss kernel. No torch headers: the host wrapper
// (distill_cuda.cpp) converts tensors to raw pointers and passes the current stream.
#pragma once
#include <cuda_runtime.h>
#include "../distill_params.h"

namespace sparsedistill {

enum class LogitsDType { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// student, teacher: rows x vocab, contiguous, both of `dtype`.
// labels: rows int64 or nullptr. grad: rows x vocab of `dtype`, or nullptr when !compute_grad.
// loss_rows, soft_rows, hard_rows: rows float32 each.
// Returns the launch status (cudaGetLastError after the launch); never synchronises.
cudaError_t launch_distill_loss(const void* student, const void* teacher, const int64_t* labels,
                                void* grad, float* loss_rows, float* soft_rows, float* hard_rows,
                                LogitsDType dtype, const DistillParams& params,
                                cudaStream_t stream);

}  // namespace sparsedistill
