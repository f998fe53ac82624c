// CUDA kernel of sparsedistill::select_smallest_grouped; the masks of prune/select_grouped_cpu.cpp.
// One block per tile:
//   1. count the eligible elements (and NaN) of the tile, check k;
//   2. the k-th smallest key K by radix selection, 8 bits at a time from the top (4 passes over
//      the tile, each a shared-memory histogram of the keys that share the digits found so far);
//   3. the mask pass in tile order, blockDim elements at a time: keys < K are pruned, and of the
//      keys == K the first (k - #below), counted by a block-wide prefix sum over each step.
// Keys are those of the CPU kernels: float32 bits ordered as unsigned (|x| if magnitude).
#include <cstdint>

#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "prune/cuda/select_grouped_kernel.h"

namespace sparsedistill {
namespace {

constexpr int kThreads = 256;
constexpr uint32_t kNotEligible = 0xffffffffu;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(double x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// The key of prune/order_keys.h; *nan set when x is NaN.
__device__ __forceinline__ uint32_t order_key(float x, bool magnitude, bool* nan) {
  uint32_t u = __float_as_uint(x);
  *nan = (u & 0x7fffffffu) > 0x7f800000u;
  if (magnitude) u &= 0x7fffffffu;
  u = (u & 0x7fffffffu) == 0 ? 0u : u;
  return u ^ ((0u - (u >> 31)) | 0x80000000u);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
select_grouped_kernel(const scalar_t* __restrict__ x, const uint8_t* __restrict__ keep,
                      const int64_t* __restrict__ k, int64_t cols, int64_t group_rows,
                      int64_t group_cols, int64_t grid_cols, bool magnitude,
                      const float* __restrict__ col_scale, uint8_t* __restrict__ mask,
                      unsigned long long* status) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ long long s_rank, s_below;
  __shared__ int s_flag;
  __shared__ long long s_ties_taken;
  const int64_t g = blockIdx.x;
  const int64_t tile = group_rows * group_cols;
  const int64_t r0 = (g / grid_cols) * group_rows, c0 = (g % grid_cols) * group_cols;
  auto offset = [&](int64_t i) { return (r0 + i / group_cols) * cols + c0 + i % group_cols; };
  auto key_at = [&](int64_t i, bool* nan) -> uint32_t {
    const int64_t o = offset(i);
    const float v = col_scale == nullptr ? to_float(x[o]) : fabsf(to_float(x[o])) * col_scale[o % cols];
    const uint32_t key = order_key(v, magnitude || col_scale != nullptr, nan);
    return (keep == nullptr || keep[o]) ? key : kNotEligible;
  };

  // 1. eligible count, NaN, k.
  int local_eligible = 0, local_nan = 0;
  for (int64_t i = threadIdx.x; i < tile; i += kThreads) {
    bool nan;
    const uint32_t key = key_at(i, &nan);
    local_eligible += key != kNotEligible || keep == nullptr;
    local_nan |= nan;
  }
  if (threadIdx.x == 0) s_flag = 0;
  __syncthreads();
  int unused, eligible;
  Scan(scan).ExclusiveSum(local_eligible, unused, eligible);  // eligible: the tile's total
  if (local_nan) atomicOr(&s_flag, 2);
  if (threadIdx.x == 0) {
    const long long want = k[g];
    if (want < 0 || want > eligible) atomicOr(&s_flag, 1);
    s_rank = want;
    s_below = 0;
    s_prefix = 0;
    s_ties_taken = 0;
  }
  __syncthreads();
  if (s_flag & 1) {
    if (threadIdx.x == 0) {
      // Record the lowest failing tile: status[0] holds 1 + tile, 0 = none.
      unsigned long long want = static_cast<unsigned long long>(g) + 1ull, cur = status[0];
      while ((cur == 0ull || want < cur)) {
        const unsigned long long seen = atomicCAS(&status[0], cur, want);
        if (seen == cur) break;
        cur = seen;
      }
    }
    return;
  }
  if (s_flag & 2) {
    if (threadIdx.x == 0) atomicExch(&status[1], 1ull);
    return;
  }
  const long long want = s_rank;

  // 2. radix selection of the want-th smallest key (want >= 1).
  uint32_t K = 0;
  if (want > 0) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = threadIdx.x; b < 256; b += kThreads) hist[b] = 0;
      __syncthreads();
      const uint32_t prefix = s_prefix;
      const uint32_t high_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
      for (int64_t i = threadIdx.x; i < tile; i += kThreads) {
        bool nan;
        const uint32_t key = key_at(i, &nan);
        if ((key & high_mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        long long rank = s_rank;
        int b = 0;
        for (; b < 255 && rank > hist[b]; ++b) {
          rank -= hist[b];
          s_below += hist[b];
        }
        s_rank = rank;
        s_prefix = prefix | (static_cast<uint32_t>(b) << shift);
      }
      __syncthreads();
    }
    K = s_prefix;
  }
  const long long ties = want - s_below;

  // 3. mask pass in tile order.
  for (int64_t base = 0; base < tile; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    uint32_t key = kNotEligible;
    if (i < tile) {
      bool nan;
      key = key_at(i, &nan);
    }
    const int is_tie = (want > 0 && i < tile && key == K) ? 1 : 0;
    int before = 0, step_ties = 0;
    Scan(scan).ExclusiveSum(is_tie, before, step_ties);
    const long long taken = s_ties_taken;
    if (i < tile) {
      const bool pruned = want > 0 && (key < K || (is_tie && taken + before < ties));
      mask[offset(i)] = !pruned && key != kNotEligible;
    }
    __syncthreads();
    if (threadIdx.x == 0) s_ties_taken = taken + step_ties;
    __syncthreads();
  }
}

template <typename scalar_t>
cudaError_t launch_typed(const void* values, const uint8_t* keep, const int64_t* k, int64_t rows,
                         int64_t cols, int64_t group_rows, int64_t group_cols, bool magnitude,
                         const float* col_scale, uint8_t* mask, unsigned long long* status,
                         cudaStream_t stream) {
  const int64_t grid_cols = cols / group_cols, tiles = (rows / group_rows) * grid_cols;
  if (tiles == 0) return cudaSuccess;
  if (tiles > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  select_grouped_kernel<scalar_t><<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(
      static_cast<const scalar_t*>(values), keep, k, cols, group_rows, group_cols, grid_cols,
      magnitude, col_scale, mask, status);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_select_grouped(const void* values, DType dtype, const uint8_t* keep,
                                  const int64_t* k, int64_t rows, int64_t cols, int64_t group_rows,
                                  int64_t group_cols, bool magnitude, const float* col_scale,
                                  uint8_t* mask, unsigned long long* status, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return launch_typed<float>(values, keep, k, rows, cols, group_rows, group_cols, magnitude, col_scale, mask, status, stream);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16>(values, keep, k, rows, cols, group_rows, group_cols, magnitude, col_scale, mask, status, stream);
    case DType::kFloat16:
      return launch_typed<__half>(values, keep, k, rows, cols, group_rows, group_cols, magnitude, col_scale, mask, status, stream);
    case DType::kFloat64:
      return launch_typed<double>(values, keep, k, rows, cols, group_rows, group_cols, magnitude, col_scale, mask, status, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sparsedistill
