// A bfloat16 x bfloat16 -> float32 GEMM for the CPU fused linear loss, on AVX512_BF16
// (`vdpbf16ps`): float32 products of the exact bf16 values, float32 accumulation, float32
// output. CPU ATen has no such GEMM (`mm(..., out_dtype=float32)` is CUDA-only, oneDNN's
// `mkldnn_matmul` refuses a float32 output for bf16 inputs), except `cpublas::brgemm` on AMX,
// which this file calls on the same packed panels where the CPU has AMX-BF16.
//
// Layouts, in 32-bit words that each hold a pair of bf16 values along K (low half = even k):
//   A: M x kp words, row stride lda (a row-major bf16 M x K matrix with K even is one as is);
//   B: packed panels of 64 columns, panel j = [kp][64] words, word (p, n) = (B[2p, n],
//      B[2p + 1, n]); columns past N and the pair past an odd K are zero.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace sparsedistill {

// Whether this CPU (and OS) runs the kernel: AVX512F/BW and AVX512_BF16.
bool bf16_gemm_available();

// Whether it has AMX-BF16 tiles the OS lets this process use: bf16_gemm(amx=true) then runs
// ATen's cpublas::brgemm (oneDNN's AMX ukernel) on the same packed panels.
bool amx_bf16_available();

// B panels of W^T for a bf16 W (N x K, rows contiguous, K even): the logits' B, z = h @ W.T.
at::Tensor pack_bf16_transposed(const at::Tensor& w);

// B panels of a bf16 X (R x N, rows contiguous) itself, pairing consecutive rows (R may be odd),
// into the first row_pairs_words(R, N) words of `out` (int32).
int64_t row_pairs_words(int64_t r, int64_t n);
void pack_bf16_row_pairs(const at::Tensor& x, at::Tensor& out);

// A words of X^T for a bf16 X (R x N, rows contiguous): N x ceil(R / 2) words, row n = pairs
// (X[2p, n], X[2p + 1, n]), into the first N * ceil(R / 2) words of `out` (int32).
void pack_bf16_transposed_pairs(const at::Tensor& x, at::Tensor& out);

// C (M x N, float32, row stride ldc) = [C +] A @ B [+ bias (N, float32)], threaded over tiles;
// amx: on AMX tiles (ATen's brgemm) instead of our AVX512_BF16 register tiles.
void bf16_gemm(int64_t M, int64_t N, int64_t kp, const uint32_t* A, int64_t lda,
               const uint32_t* B, float* C, int64_t ldc, bool accumulate, const float* bias, bool amx);

}  // namespace sparsedistill
