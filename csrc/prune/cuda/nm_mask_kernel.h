// Launcher of the CUDA nm_mask kernel. No torch headers: the host wrapper (nm_mask_host.cpp)
// converts tensors to raw pointers and passes the current stream.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "common/dtype.h"

namespace sparsedistill {

// values: groups x m elements of dtype, contiguous; keep: groups x m bools. In every group the
// m - prune largest keys are kept (key |x| if magnitude, else x; NaN above every number, NaNs
// equal; ties: the lower index is pruned first), exactly as prune/nm_mask_cpu.cpp. One thread per
// group, one launch. Returns the launch status; never synchronises.
cudaError_t launch_nm_mask(const void* values, DType dtype, int64_t groups, int64_t m,
                           int64_t prune, bool magnitude, uint8_t* keep, cudaStream_t stream);

}  // namespace sparsedistill
