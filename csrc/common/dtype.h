// The element dtypes, as host wrappers name them to CUDA launchers that see no torch headers
// (one enum for every area; common/cuda_host.h maps a torch dtype onto it).
#pragma once
#include <cstdint>

namespace sparsedistill {

enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kFloat64 = 3 };

}  // namespace sparsedistill
