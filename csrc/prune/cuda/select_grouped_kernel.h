// Launcher of the CUDA select_smallest_grouped kernel. No torch headers: the host wrapper
// (select_grouped_host.cpp) passes raw pointers and the current stream.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "common/dtype.h"

namespace sparsedistill {

// values: rows x cols (contiguous, dtype); keep: the same shape (bools) or nullptr; k: one int64
// count per group_rows x group_cols tile, row-major over the tile grid. Writes mask (rows x
// cols): in every tile its k smallest eligible keys are pruned, ties lowest row-major position
// first, the masks of prune/select_grouped_cpu.cpp. One block per tile, one launch. col_scale
// (or nullptr): rank by |x_ij| * col_scale[j] (float32) instead.
// status[0] receives 1 + the flat index of a tile whose k is outside [0, eligible] (0: none;
// the lowest such tile), status[1] 1 if a NaN was read; both must be zero on entry. A tile with
// either writes no mask. Returns the launch status; never synchronises.
cudaError_t launch_select_grouped(const void* values, DType dtype, const uint8_t* keep,
                                  const int64_t* k, int64_t rows, int64_t cols, int64_t group_rows,
                                  int64_t group_cols, bool magnitude, const float* col_scale,
                                  uint8_t* mask,
                                  unsigned long long* status, cudaStream_t stream);

}  // namespace sparsedistill
