// The AVX512_BF16 GEMM of bf16_gemm_cpu.h. A 6 x 64 register tile (24 float32 accumulators,
// 4 B vectors) over the whole K: each k pair is 4 loads of B, 6 broadcasts of A and 24
// `vdpbf16ps`. Tiles of rows x one 64-column panel are split over threads; the order keeps
// the operand that is reused (A for the logits, B for the weight gradient) in cache.
// Measured on the 2-core EPYC (docs/performance.md): ~960 GFLOP/s, against ~840 for ATen's
// bf16 `mm`, which rounds its output to bf16.
#include "distill/bf16_gemm_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/Utils.h>
#include <ATen/native/CPUBlas.h>

#include "common/huge_tensor.h"

#include <algorithm>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define SD_BF16_GEMM 1
#define SD_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#endif

namespace sparsedistill {
namespace {

constexpr int64_t kPanel = 64;  // columns of a B panel: 4 vectors of 16 float32

inline int64_t panels(int64_t n) { return (n + kPanel - 1) / kPanel; }

uint32_t pair(const uint16_t* lo, const uint16_t* hi, int64_t i) {
  return static_cast<uint32_t>(lo[i]) | (hi ? static_cast<uint32_t>(hi[i]) << 16 : 0u);
}

#ifdef SD_BF16_GEMM
template <int MR>
SD_TARGET_BF16 void tile(int64_t kp, const uint32_t* a, int64_t lda, const uint32_t* b, float* c,
                         int64_t ldc, int64_t cols, bool accumulate, const float* bias) {
  __m512 acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const uint32_t* bp = b + p * kPanel;
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp), b1 = (__m512bh)_mm512_loadu_si512(bp + 16),
                   b2 = (__m512bh)_mm512_loadu_si512(bp + 32), b3 = (__m512bh)_mm512_loadu_si512(bp + 48);
    for (int i = 0; i < MR; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i * lda + p]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
      acc[i][2] = _mm512_dpbf16_ps(acc[i][2], ai, b2);
      acc[i][3] = _mm512_dpbf16_ps(acc[i][3], ai, b3);
    }
  }
  for (int j = 0; j < 4; ++j) {
    const int64_t n = cols - 16 * j;
    if (n <= 0) break;
    const __mmask16 m = n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
    const __m512 bj = bias ? _mm512_maskz_loadu_ps(m, bias + 16 * j) : _mm512_setzero_ps();
    for (int i = 0; i < MR; ++i) {
      float* ci = c + i * ldc + 16 * j;
      __m512 v = _mm512_add_ps(acc[i][j], bj);
      if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, ci));
      _mm512_mask_storeu_ps(ci, m, v);
    }
  }
}

using TileFn = void (*)(int64_t, const uint32_t*, int64_t, const uint32_t*, float*, int64_t, int64_t,
                        bool, const float*);
constexpr TileFn kTiles[7] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};
#endif

}  // namespace

bool bf16_gemm_available() {
#ifdef SD_BF16_GEMM
  // libgcc's check includes the OS's support of the AVX-512 register state (XCR0).
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

bool amx_bf16_available() {
  static const bool ok = [] {
#if defined(__x86_64__) && defined(__GNUC__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tiles = (d & (1u << 22)) && (d & (1u << 24));  // AMX-BF16, AMX-TILE
    return tiles && at::cpu::init_amx();  // asks Linux for the tile state
#else
    return false;
#endif
  }();
  return ok;
}

at::Tensor pack_bf16_transposed(const at::Tensor& w) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.dim() == 2 && w.is_contiguous() && w.size(1) % 2 == 0,
              "pack_bf16_transposed: expected a contiguous bf16 (N, K) tensor with K even");
  const int64_t n = w.size(0), kp = w.size(1) / 2, np = panels(n);
  at::Tensor out = empty_huge({np * kp * kPanel}, w.options().dtype(at::kInt));
  const uint32_t* src = reinterpret_cast<const uint32_t*>(w.const_data_ptr());
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.mutable_data_ptr());
  at::parallel_for(0, np, 1, [&](int64_t first, int64_t last) {
    for (int64_t j = first; j < last; ++j) {
      uint32_t* panel = dst + j * kp * kPanel;
      const int64_t cols = std::min(kPanel, n - j * kPanel);
      // 16 x 16 blocks of the word transpose, so that reads and writes both stay in cache lines.
      for (int64_t p0 = 0; p0 < kp; p0 += 16) {
        const int64_t p1 = std::min(kp, p0 + 16);
        for (int64_t c = 0; c < cols; ++c) {
          const uint32_t* row = src + (j * kPanel + c) * kp;
          for (int64_t p = p0; p < p1; ++p) panel[p * kPanel + c] = row[p];
        }
        for (int64_t p = p0; p < p1; ++p) std::fill(panel + p * kPanel + cols, panel + (p + 1) * kPanel, 0u);
      }
    }
  });
  return out;
}

int64_t row_pairs_words(int64_t r, int64_t n) { return panels(n) * ((r + 1) / 2) * kPanel; }

void pack_bf16_row_pairs(const at::Tensor& x, at::Tensor& out) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.is_contiguous(),
              "pack_bf16_row_pairs: expected a contiguous bf16 (R, N) tensor");
  const int64_t r = x.size(0), n = x.size(1), kp = (r + 1) / 2, np = panels(n);
  TORCH_CHECK(out.scalar_type() == at::kInt && out.is_contiguous() && out.numel() >= row_pairs_words(r, n),
              "pack_bf16_row_pairs: out is too small");
  const uint16_t* src = reinterpret_cast<const uint16_t*>(x.const_data_ptr());
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.mutable_data_ptr());
  at::parallel_for(0, kp, 16, [&](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p) {
      const uint16_t* lo = src + 2 * p * n;
      const uint16_t* hi = 2 * p + 1 < r ? lo + n : nullptr;
      for (int64_t j = 0; j < np; ++j) {
        uint32_t* d = dst + (j * kp + p) * kPanel;
        const int64_t c0 = j * kPanel, cols = std::min(kPanel, n - c0);
        for (int64_t c = 0; c < cols; ++c) d[c] = pair(lo, hi, c0 + c);
        std::fill(d + cols, d + kPanel, 0u);
      }
    }
  });
}

void pack_bf16_transposed_pairs(const at::Tensor& x, at::Tensor& out) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.is_contiguous(),
              "pack_bf16_transposed_pairs: expected a contiguous bf16 (R, N) tensor");
  const int64_t r = x.size(0), n = x.size(1), kp = (r + 1) / 2;
  TORCH_CHECK(out.scalar_type() == at::kInt && out.is_contiguous() && out.numel() >= n * kp,
              "pack_bf16_transposed_pairs: out is too small");
  const uint16_t* src = reinterpret_cast<const uint16_t*>(x.const_data_ptr());
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.mutable_data_ptr());
  constexpr int64_t kBlock = 32;  // columns of x per task: the rows' cache lines are reused
  at::parallel_for(0, (n + kBlock - 1) / kBlock, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t c0 = b * kBlock, c1 = std::min(n, c0 + kBlock);
      for (int64_t p0 = 0; p0 < kp; p0 += 16) {
        const int64_t p1 = std::min(kp, p0 + 16);
        for (int64_t p = p0; p < p1; ++p) {
          const uint16_t* lo = src + 2 * p * n;
          const uint16_t* hi = 2 * p + 1 < r ? lo + n : nullptr;
          for (int64_t c = c0; c < c1; ++c) dst[c * kp + p] = pair(lo, hi, c);
        }
      }
    }
  });
}

namespace {

// Tasks of up to `rows` rows x one 64-column panel of C, threaded: tile(m0, m1, j) for each,
// then done() once per thread. by_panel (few rows: the logits of a chunk) runs down a panel
// first, so A stays in L2; otherwise (many rows: the weight gradient) along the rows, reusing B.
template <typename Tile, typename Done>
void parallel_tiles(int64_t M, int64_t N, int64_t rows, bool by_panel, const Tile& tile, const Done& done) {
  const int64_t np = panels(N), nm = (M + rows - 1) / rows;
  at::parallel_for(0, np * nm, 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t i = by_panel ? t % nm : t / np, j = by_panel ? t / nm : t % np;
      tile(i * rows, std::min(M, (i + 1) * rows), j);
    }
    done();
  });
}

}  // namespace

void bf16_gemm(int64_t M, int64_t N, int64_t kp, const uint32_t* A, int64_t lda, const uint32_t* B,
               float* C, int64_t ldc, bool accumulate, const float* bias, bool amx) {
  const bool by_panel = N >= M;
  if (amx) {
    // Our panels are VNNI blocks ([K/2][64][2] bf16, the layout oneDNN's AMX brgemm takes), so
    // each task is one brgemm call; the bias is added to C first (or is C's start value).
    TORCH_CHECK(amx_bf16_available(), "bf16_gemm: this CPU has no usable AMX-BF16");
    auto tile = [&](int64_t m0, int64_t m1, int64_t j) {
      const int64_t c0 = j * kPanel, cols = std::min(kPanel, N - c0);
      float* c = C + m0 * ldc + c0;
      for (int64_t r = 0; bias && r < m1 - m0; ++r)
        for (int64_t n = 0; n < cols; ++n) c[r * ldc + n] = (accumulate ? c[r * ldc + n] : 0.f) + bias[c0 + n];
      at::native::cpublas::brgemm(m1 - m0, cols, 2 * kp, 2 * lda, kPanel, ldc, accumulate || bias != nullptr,
                                  reinterpret_cast<const at::BFloat16*>(A + m0 * lda),
                                  reinterpret_cast<const at::BFloat16*>(B + j * kp * kPanel), c, true);
    };
    parallel_tiles(M, N, by_panel ? std::min<int64_t>(M, 256) : 64, by_panel, tile,
                   [] { at::native::cpublas::brgemm_release(true); });
    return;
  }
#ifdef SD_BF16_GEMM
  TORCH_CHECK(bf16_gemm_available(), "bf16_gemm: this CPU has no AVX512_BF16");
  auto tile = [&](int64_t m0, int64_t m1, int64_t j) {
    const int64_t c0 = j * kPanel, cols = std::min(kPanel, N - c0);
    const float* bj = bias ? bias + c0 : nullptr;
    for (int64_t m = m0; m < m1; m += 6) {
      const int64_t mr = std::min<int64_t>(6, m1 - m);
      kTiles[mr](kp, A + m * lda, lda, B + j * kp * kPanel, C + m * ldc + c0, ldc, cols, accumulate, bj);
    }
  };
  parallel_tiles(M, N, by_panel ? M : 48, by_panel, tile, [] {});
#else
  TORCH_CHECK(false, "bf16_gemm: built without x86-64 AVX512_BF16 support");
#endif
}

}  // namespace sparsedistill
