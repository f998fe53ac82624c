// The value dtypes the CUDA pruning kernels read, as the host wrappers name them to launchers
// that see no torch headers.
#pragma once
#include <cstdint>

namespace sparsedistill {

enum class PruneDType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kFloat64 = 3 };

}  // namespace sparsedistill
