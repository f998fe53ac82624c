// What every CUDA host wrapper shares: the DType of a torch dtype, and the check of a launch.
#pragma once
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include "common/checks.h"
#include "common/dtype.h"

// A failed launch raises RuntimeError carrying CUDA's own message (not a ValueError: the
// arguments were fine, the device was not).
#define SD_CHECK_LAUNCH(err, what)                                                             \
  TORCH_CHECK((err) == cudaSuccess, ::sparsedistill::message("sparsedistill: ", what,         \
                                                             " CUDA kernel launch failed: ",  \
                                                             cudaGetErrorString(err)))

namespace sparsedistill {

// The DType of a dtype the checks admitted (is_float_dtype).
inline DType to_kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: return DType::kFloat64;
  }
}

}  // namespace sparsedistill
