// Launchers of the CUDA sparse-linear kernels (sparse_linear_kernel.cu). No torch headers: the
// host wrapper (host.cpp) checks the arguments, lays the dense operands out as
// described below, allocates the outputs and passes raw pointers and the current stream.
// Every launcher returns the launch status (cudaGetLastError) and never synchronises.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "common/dtype.h"

namespace sparsedistill {

enum class SparseIndex { kInt16 = 0, kInt32 = 1 };

// The compressed weight's structure (CSR over the rows of W (out, in), see
// sparsedistill/sparse/reference.py). Contents are trusted: columns must lie in [0, in).
struct SparseStructure {
  const int64_t* row_ptr;    // out + 1
  const void* col_idx;       // nnz, int16 or int32 as `index`
  const int32_t* row_order;  // out, rows by nnz descending
  SparseIndex index;
  int64_t out_features, in_features, nnz;
};

// Up to this batch the kernels read the dense operands as given, (B, in) and (B, out); above
// it they want them batch-minor, transposed to (in, B) and (out, B), so that one nonzero
// touches a contiguous run of B elements (see the .cu for why). The wrapper transposes.
constexpr int64_t kSparseRowSplitMaxBatch = 4;
inline bool sparse_batch_minor(int64_t batch) { return batch > kSparseRowSplitMaxBatch; }

// y (B, out) = x @ W.T (+ bias), y always (B, out) contiguous. x is (B, in), or (in, B) when
// sparse_batch_minor(B). values, x, bias, y of `dtype`; bias may be nullptr.
cudaError_t launch_sparse_linear(const void* x, const void* values, const SparseStructure& w,
                                 const void* bias, void* y, DType dtype, int64_t batch,
                                 cudaStream_t stream);

// acc += grad_out @ W, accumulated with atomics into `acc`, a zero-filled float32 buffer
// (float64 for kFloat64). grad_out is (B, out) and acc (B, in), or (out, B) and (in, B) when
// sparse_batch_minor(B). The summation order varies from run to run (atomics).
cudaError_t launch_sparse_linear_grad_input(const void* grad_out, const void* values,
                                            const SparseStructure& w, void* acc,
                                            DType dtype, int64_t batch,
                                            cudaStream_t stream);

// grad_values[j] = sum_b grad_out[b, r] * x[b, c] for the nonzero j = (r, c), written as
// `dtype` (nnz). grad_out and x are (B, out) and (B, in), or (out, B) and (in, B) when
// sparse_batch_minor(B). Deterministic.
cudaError_t launch_sparse_linear_grad_values(const void* grad_out, const void* x,
                                             const SparseStructure& w, void* grad_values,
                                             DType dtype, int64_t batch,
                                             cudaStream_t stream);

}  // namespace sparsedistill
