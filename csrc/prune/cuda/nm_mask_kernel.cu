// CUDA kernel of sparsedistill::nm_mask; same masks as prune/nm_mask_cpu.cpp (see there for the
// order). One thread per group: an element is pruned iff fewer than `prune` elements of its
// group precede it (smaller key, or equal key at a lower index). O(m^2) compares per group,
// meant for the small m of N:M sparsity; 2:4 and 4:8 keep their keys in registers.
#include <algorithm>
#include <climits>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "prune/cuda/nm_mask_kernel.h"

namespace sparsedistill {
namespace {

constexpr int kThreads = 256;

// Keys in the value's precision: the 16-bit types widen exactly to float, float64 stays.
__device__ __forceinline__ float load(const float* x, int64_t i) { return x[i]; }
__device__ __forceinline__ float load(const __half* x, int64_t i) { return __half2float(x[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* x, int64_t i) { return __bfloat162float(x[i]); }
__device__ __forceinline__ double load(const double* x, int64_t i) { return x[i]; }

template <typename T>
__device__ __forceinline__ T key_of(T v, bool magnitude) { return magnitude ? fabs(v) : v; }

// a comes before b (ties aside): smaller, or a number where b is NaN.
template <typename T>
__device__ __forceinline__ bool key_less(T a, T b) { return a < b || (isnan(b) && !isnan(a)); }

// kM > 0: m is kM, keys in registers; kM == 0: any m, keys re-read from memory (L1).
template <int kM, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
nm_mask_kernel(const scalar_t* x, uint8_t* keep, int64_t groups, int64_t m_runtime, int64_t prune,
               bool magnitude) {
  using acc_t = decltype(load(x, 0));
  const int64_t m = kM > 0 ? kM : m_runtime;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const int64_t base = g * m;
    if constexpr (kM > 0) {
      acc_t key[kM];
#pragma unroll
      for (int i = 0; i < kM; ++i) key[i] = key_of(load(x, base + i), magnitude);
#pragma unroll
      for (int i = 0; i < kM; ++i) {
        int rank = 0;
#pragma unroll
        for (int j = 0; j < kM; ++j)
          rank += key_less(key[j], key[i]) || (j < i && !key_less(key[i], key[j]));
        keep[base + i] = rank >= prune;
      }
    } else {
      for (int64_t i = 0; i < m; ++i) {
        const acc_t ki = key_of(load(x, base + i), magnitude);
        int64_t rank = 0;
        for (int64_t j = 0; j < m; ++j) {
          const acc_t kj = key_of(load(x, base + j), magnitude);
          rank += key_less(kj, ki) || (j < i && !key_less(ki, kj));
        }
        keep[base + i] = rank >= prune;
      }
    }
  }
}

template <typename scalar_t>
cudaError_t launch_typed(const void* values, int64_t groups, int64_t m, int64_t prune,
                         bool magnitude, uint8_t* keep, cudaStream_t stream) {
  const auto* x = static_cast<const scalar_t*>(values);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((groups + kThreads - 1) / kThreads, INT_MAX));
  if (m == 4) {
    nm_mask_kernel<4><<<grid, kThreads, 0, stream>>>(x, keep, groups, m, prune, magnitude);
  } else if (m == 8) {
    nm_mask_kernel<8><<<grid, kThreads, 0, stream>>>(x, keep, groups, m, prune, magnitude);
  } else {
    nm_mask_kernel<0><<<grid, kThreads, 0, stream>>>(x, keep, groups, m, prune, magnitude);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_nm_mask(const void* values, DType dtype, int64_t groups, int64_t m,
                           int64_t prune, bool magnitude, uint8_t* keep, cudaStream_t stream) {
  if (groups == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch_typed<float>(values, groups, m, prune, magnitude, keep, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(values, groups, m, prune, magnitude, keep, stream);
    case DType::kFloat16: return launch_typed<__half>(values, groups, m, prune, magnitude, keep, stream);
    default: return launch_typed<double>(values, groups, m, prune, magnitude, keep, stream);
  }
}

}  // namespace sparsedistill
