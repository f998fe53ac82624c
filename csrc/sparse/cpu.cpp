// C++ CPU kernels of sparsedistill::sparse_linear and the two products of its backward
// (schemas in sparsedistill/sparse/ops.py, weight layout in sparsedistill/sparse/reference.py).
//
// y = x @ W.T for a CSR weight W (out, in). Two paths:
// - one input row (B == 1, decoding): a gather-dot per weight row, y[r] = sum_j v_j x[c_j];
//   x is 4 * in bytes and stays in L1/L2, so the weight stream (value + 2- or 4-byte index)
//   is the only memory traffic.
// - a batch (B > 1): x is transposed once into xT (in, B padded to the vector width), so each
//   nonzero (r, c, v) adds v * xT[c, :] to a row of accumulators held in vector registers:
//   contiguous loads vectorised over the batch, each nonzero read once per 128-column tile.
// Rows are split between threads by nonzero count (plus a per-row cost), not by row count, so
// threads finish together on unevenly pruned weights. Accumulation is float32 (float64 for
// float64 weights); bfloat16/float16 values are widened as they are read.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif
#include <vector>

#include "common/cpu_memory.h"
#include "sparse/checks.h"

namespace sparsedistill {
namespace {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

constexpr int64_t kRowCost = 4;  // a row's fixed cost (loop setup, one output) in nonzeros

// parts + 1 row boundaries that split rows into ranges of about equal cost (nonzeros + kRowCost
// per row); cost(r) = row_ptr[r] + kRowCost * r is increasing, so each boundary is a search.
std::vector<int64_t> balanced_row_splits(const int64_t* row_ptr, int64_t rows, int64_t parts) {
  const auto cost = [&](int64_t r) { return row_ptr[r] + kRowCost * r; };
  const int64_t total = cost(rows);
  std::vector<int64_t> splits(parts + 1, rows);
  splits[0] = 0;
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = total / parts * p + total % parts * p / parts;
    int64_t lo = splits[p - 1], hi = rows;  // first r with cost(r) >= target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (cost(mid) < target) lo = mid + 1; else hi = mid;
    }
    splits[p] = lo;
  }
  return splits;
}

// Below this cost (nonzeros x vectors per nonzero, + kRowCost per row) a call runs on the
// calling thread: waking the pool costs a few microseconds, more than such a call's work.
constexpr int64_t kSerialCost = 16384;

// Runs fn(r0, r1) over row ranges of about equal cost, in parallel when the work is worth it;
// vectors is the number of vector operations per nonzero.
template <typename Fn>
void parallel_over_rows(const int64_t* row_ptr, int64_t rows, int64_t vectors, Fn&& fn) {
  if ((row_ptr[rows] + kRowCost * rows) * vectors < kSerialCost) {
    if (rows > 0) fn(int64_t{0}, rows);
    return;
  }
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(rows, 8 * at::get_num_threads()));
  const auto splits = balanced_row_splits(row_ptr, rows, parts);
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      if (splits[p] < splits[p + 1]) fn(splits[p], splits[p + 1]);
  });
}

// Rows [b0, b1) and columns [c0, c1) of x (B, n) in scalar_t, transposed into dst (n, width)
// in acc_t: dst[c, b - b0] = x[b, c], columns [b1 - b0, width) zeroed. Contiguous stores,
// strided loads (why, as measured: docs/performance.md, "Sparse matmul").
template <typename scalar_t, typename acc_t>
inline void transpose_rows(const scalar_t* x, int64_t n, int64_t b0, int64_t b1, int64_t c0, int64_t c1,
                           int64_t width, acc_t* dst) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    // In 16x16 blocks through registers: rows of x lie n floats apart, often a multiple of
    // 4 KiB, so element by element the loads of one column all fall in one L1 set.
    at::vec::transpose_mxn<float>(x + b0 * n + c0, n, dst + c0 * width, width, static_cast<int>(b1 - b0),
                                  static_cast<int>(c1 - c0));
    if (b1 - b0 < width)
      for (int64_t c = c0; c < c1; ++c) std::fill(dst + c * width + (b1 - b0), dst + (c + 1) * width, 0.f);
    return;
  }
  for (int64_t c = c0; c < c1; ++c) {
    acc_t* row = dst + c * width;
    for (int64_t b = b0; b < b1; ++b) row[b - b0] = static_cast<acc_t>(x[b * n + c]);
    std::fill(row + (b1 - b0), row + width, acc_t(0));
  }
}

// x (B, n) in scalar_t -> xT (n, Bp) in acc_t, zero-padded columns [B, Bp). On huge pages:
// the backward kernels read its rows at random.
template <typename scalar_t, typename acc_t>
HugePageArray<acc_t> transpose_padded(const scalar_t* x, int64_t B, int64_t n, int64_t Bp) {
  HugePageArray<acc_t> xt(static_cast<size_t>(n * Bp));
  at::parallel_for(0, n, 64, [&](int64_t c0, int64_t c1) { transpose_rows(x, n, 0, B, c0, c1, Bp, xt.data()); });
  return xt;
}

// The batch path's input, transposed into tiles: tile t holds batch columns
// [t * width, (t + 1) * width) of every input feature as a contiguous (in, width) block, so
// that a tile (at most kTileBytes) stays in L2 while the weight rows stream past it.
constexpr int64_t kTileBytes = int64_t{1} << 20;

template <typename acc_t>
struct BatchTiles {
  BatchTiles(int64_t vectors, int64_t width, int64_t count, int64_t in)
      : data(static_cast<size_t>(count * in * width)), vectors(vectors), width(width), count(count), in(in) {}
  HugePageArray<acc_t> data;  // read at random rows: huge pages keep the TLB from thrashing
  int64_t vectors, width, count, in;  // vectors per tile, width = vectors * lanes
  const acc_t* tile(int64_t t) const { return data.data() + t * in * width; }
};

template <typename scalar_t, typename acc_t>
BatchTiles<acc_t> make_batch_tiles(const scalar_t* x, int64_t B, int64_t in) {
  constexpr int64_t lanes = at::vec::Vectorized<acc_t>::size();
  const int64_t needed = (B + lanes - 1) / lanes;
  int64_t vectors = 1;
  while (vectors < 8 && vectors < needed &&
         2 * vectors * lanes * in * static_cast<int64_t>(sizeof(acc_t)) <= kTileBytes)
    vectors *= 2;
  const int64_t width = vectors * lanes;
  BatchTiles<acc_t> t(vectors, width, (B + width - 1) / width, in);
  at::parallel_for(0, in, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t tile = 0; tile < t.count; ++tile) {
      const int64_t b0 = tile * t.width;
      transpose_rows(x, in, b0, std::min(B, b0 + t.width), c0, c1, t.width, t.data.data() + tile * in * t.width);
    }
  });
  return t;
}

template <typename Fn>
void with_vectors(int64_t vectors, Fn&& fn) {
  switch (vectors) {
    case 8: fn(std::integral_constant<int, 8>()); break;
    case 4: fn(std::integral_constant<int, 4>()); break;
    case 2: fn(std::integral_constant<int, 2>()); break;
    default: fn(std::integral_constant<int, 1>()); break;
  }
}

// out[0, W * lanes) = sum over the nonzeros j of row [j0, j1) of v_j * tile[c_j, :]. U nonzeros
// are in flight at a time in separate accumulators, so a narrow tile is not bound by the
// latency of one FMA chain.
template <int W, typename scalar_t, typename index_t, typename acc_t>
inline void row_times_tile(const scalar_t* values, const index_t* cols, int64_t j0, int64_t j1,
                           const acc_t* tile, acc_t* out) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int U = W >= 8 ? 1 : 8 / W;
  constexpr int64_t stride = W * Vec::size();
  Vec acc[U][W];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < W; ++v) acc[u][v] = Vec(acc_t(0));
  int64_t j = j0;
  for (; j + U <= j1; j += U)
    for (int u = 0; u < U; ++u) {
      const Vec wv(static_cast<acc_t>(values[j + u]));
      const acc_t* xr = tile + static_cast<int64_t>(cols[j + u]) * stride;
      for (int v = 0; v < W; ++v) acc[u][v] = at::vec::fmadd(wv, Vec::loadu(xr + v * Vec::size()), acc[u][v]);
    }
  for (; j < j1; ++j) {
    const Vec wv(static_cast<acc_t>(values[j]));
    const acc_t* xr = tile + static_cast<int64_t>(cols[j]) * stride;
    for (int v = 0; v < W; ++v) acc[0][v] = at::vec::fmadd(wv, Vec::loadu(xr + v * Vec::size()), acc[0][v]);
  }
  for (int v = 0; v < W; ++v) {
    Vec sum = acc[0][v];
    for (int u = 1; u < U; ++u) sum = sum + acc[u][v];
    sum.store(out + v * Vec::size());
  }
}

template <typename scalar_t, typename index_t>
struct Csr {
  const scalar_t* values;
  const int64_t* row_ptr;
  const index_t* cols;
  int64_t rows, in;
};

// The one-row path reads kStreams rows at once, each from its own stretch of the weight, and
// prefetches each kPrefetchAhead nonzeros ahead: four streams keep more misses in flight than
// one (measured in docs/performance.md). MKL's dense gemv reads four rows at a time too.
constexpr int kStreams = 4;
constexpr int64_t kPrefetchAhead = 256;  // nonzeros

// The one-row path, sum over the nonzeros j of a row of v_j * x[c_j]: gathers of x where the
// ISA has them (float32, bfloat16 and float16 values, widened to float32), else scalar code.
#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kHasGatherPath = true;
constexpr int kGatherLanes = 16;
using GatherVec = __m512;
inline __m512i load_columns(const int16_t* c, __mmask16 m) { return _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, c)); }
inline __m512i load_columns(const int32_t* c, __mmask16 m) { return _mm512_maskz_loadu_epi32(m, c); }
inline __m512 load_values(const float* v, __mmask16 m) { return _mm512_maskz_loadu_ps(m, v); }
inline __m512 load_values(const c10::BFloat16* v, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, v)), 16));
}
inline __m512 load_values(const c10::Half* v, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, v)); }
template <typename value_t, typename index_t>
inline __m512 gather_fma(const value_t* v, const index_t* c, const float* x, __m512 acc, __mmask16 m = 0xffff) {
  return _mm512_fmadd_ps(load_values(v, m), _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, load_columns(c, m), x, 4), acc);
}
inline __m512 gather_zero() { return _mm512_setzero_ps(); }
inline __m512 gather_add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
inline float gather_sum(__m512 a) { return _mm512_reduce_add_ps(a); }
#elif defined(CPU_CAPABILITY_AVX2)
constexpr bool kHasGatherPath = true;
constexpr int kGatherLanes = 8;
using GatherVec = __m256;
// AVX2 has no masked 16-bit loads: the tail copies through a zero-padded buffer instead.
inline __m256i load_columns(const int16_t* c) { return _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c))); }
inline __m256i load_columns(const int32_t* c) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)); }
inline __m256 load_values(const float* v) { return _mm256_loadu_ps(v); }
inline __m256 load_values(const c10::BFloat16* v) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))), 16));
}
inline __m256 load_values(const c10::Half* v) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))); }
template <typename value_t, typename index_t>
inline __m256 gather_fma(const value_t* v, const index_t* c, const float* x, __m256 acc) {
  return _mm256_fmadd_ps(load_values(v), _mm256_i32gather_ps(x, load_columns(c), 4), acc);
}
inline __m256 gather_zero() { return _mm256_setzero_ps(); }
inline __m256 gather_add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
inline float gather_sum(__m256 a) {
  alignas(32) float l[8];
  _mm256_store_ps(l, a);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}
#else
constexpr bool kHasGatherPath = false;
#endif

template <typename scalar_t, typename index_t, typename acc_t>
inline acc_t row_dot(const scalar_t* values, const index_t* cols, int64_t j0, int64_t j1, const acc_t* x) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (kHasGatherPath && std::is_same_v<acc_t, float>) {
    constexpr int L = kGatherLanes;
    GatherVec a0 = gather_zero(), a1 = gather_zero();
    int64_t j = j0;
    if (j + 4 * L <= j1) {  // four gathers in flight: a cached weight is bound by their latency
      GatherVec a2 = gather_zero(), a3 = gather_zero();
      for (; j + 4 * L <= j1; j += 4 * L) {
        a0 = gather_fma(values + j, cols + j, x, a0);
        a1 = gather_fma(values + j + L, cols + j + L, x, a1);
        a2 = gather_fma(values + j + 2 * L, cols + j + 2 * L, x, a2);
        a3 = gather_fma(values + j + 3 * L, cols + j + 3 * L, x, a3);
      }
      a0 = gather_add(a0, a2);
      a1 = gather_add(a1, a3);
    }
    if (j + 2 * L <= j1) {
      a0 = gather_fma(values + j, cols + j, x, a0);
      a1 = gather_fma(values + j + L, cols + j + L, x, a1);
      j += 2 * L;
    }
    for (; j + L <= j1; j += L) a0 = gather_fma(values + j, cols + j, x, a0);
#if defined(CPU_CAPABILITY_AVX512)
    if (j < j1) a1 = gather_fma(values + j, cols + j, x, a1, static_cast<__mmask16>((1u << (j1 - j)) - 1));
    return gather_sum(gather_add(a0, a1));
#else
    float sum = gather_sum(gather_add(a0, a1));
    for (; j < j1; ++j) sum += static_cast<float>(values[j]) * x[cols[j]];
    return sum;
#endif
  }
#endif
  acc_t s[4] = {0, 0, 0, 0};  // four chains hide the FMA latency
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4)
    for (int u = 0; u < 4; ++u) s[u] += static_cast<acc_t>(values[j + u]) * x[cols[j + u]];
  for (; j < j1; ++j) s[0] += static_cast<acc_t>(values[j]) * x[cols[j]];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// out[s] = row_dot of row s, for S rows [j0[s], j1[s]): the length they share runs interleaved,
// two gathers per row in flight, the rest of each row alone.
template <int S, typename scalar_t, typename index_t>
inline void rows_dot(const scalar_t* values, const index_t* cols, const int64_t* j0, const int64_t* j1,
                     const float* x, float* out) {
  constexpr int L = kGatherLanes;
  int64_t n = j1[0] - j0[0];
  for (int s = 1; s < S; ++s) n = std::min(n, j1[s] - j0[s]);
  n -= n % (2 * L);
  GatherVec a[S][2];
  for (int s = 0; s < S; ++s) a[s][0] = a[s][1] = gather_zero();
  for (int64_t k = 0; k < n; k += 2 * L)
    for (int s = 0; s < S; ++s) {
      const int64_t j = j0[s] + k;
      const char* v = reinterpret_cast<const char*>(values + j + kPrefetchAhead);
      for (int64_t b = 0; b < 2 * L * static_cast<int64_t>(sizeof(scalar_t)); b += 64) _mm_prefetch(v + b, _MM_HINT_T0);
      const char* c = reinterpret_cast<const char*>(cols + j + kPrefetchAhead);
      for (int64_t b = 0; b < 2 * L * static_cast<int64_t>(sizeof(index_t)); b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
      a[s][0] = gather_fma(values + j, cols + j, x, a[s][0]);
      a[s][1] = gather_fma(values + j + L, cols + j + L, x, a[s][1]);
    }
  for (int s = 0; s < S; ++s)
    out[s] = gather_sum(gather_add(a[s][0], a[s][1])) + row_dot(values, cols, j0[s] + n, j1[s], x);
}
#endif

template <typename scalar_t, typename index_t>
void forward_kernel(const Csr<scalar_t, index_t>& w, const scalar_t* x, const scalar_t* bias,
                    scalar_t* y, int64_t B) {
  using acc_t = typename AccOf<scalar_t>::type;
  using Vec = at::vec::Vectorized<acc_t>;
  const int64_t out = w.rows;
  if (B == 1) {
    std::vector<acc_t> x_acc;
    const acc_t* xv = reinterpret_cast<const acc_t*>(x);
    if constexpr (!std::is_same_v<scalar_t, acc_t>) {
      x_acc.assign(x, x + w.in);
      xv = x_acc.data();
    }
    const auto store = [&](int64_t r, acc_t sum) {
      if (bias) sum += static_cast<acc_t>(bias[r]);
      y[r] = static_cast<scalar_t>(sum);
    };
    parallel_over_rows(w.row_ptr, out, 1, [&](int64_t r0, int64_t r1) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
      if constexpr (std::is_same_v<acc_t, float>) {  // row i of each of kStreams equal stretches
        const int64_t q = (r1 - r0) / kStreams;
        for (int64_t i = 0; i < q; ++i) {
          int64_t j0[kStreams], j1[kStreams];
          float sums[kStreams];
          for (int s = 0; s < kStreams; ++s) {
            j0[s] = w.row_ptr[r0 + s * q + i];
            j1[s] = w.row_ptr[r0 + s * q + i + 1];
          }
          rows_dot<kStreams>(w.values, w.cols, j0, j1, xv, sums);
          for (int s = 0; s < kStreams; ++s) store(r0 + s * q + i, sums[s]);
        }
        r0 += kStreams * q;
      }
#endif
      for (int64_t r = r0; r < r1; ++r) store(r, row_dot(w.values, w.cols, w.row_ptr[r], w.row_ptr[r + 1], xv));
    });
    return;
  }
  const BatchTiles<acc_t> tiles = make_batch_tiles<scalar_t, acc_t>(x, B, w.in);
  with_vectors(tiles.vectors, [&](auto kv) {
    constexpr int W = decltype(kv)::value;
    parallel_over_rows(w.row_ptr, out, tiles.vectors * tiles.count, [&](int64_t r0, int64_t r1) {
      // Results of kOutRows rows at a time, so that y is written in runs of kOutRows along a
      // row of y (one output row at a time meant one store per batch column, each to another
      // line: those stores stalled on the store buffer).
      constexpr int64_t kOutRows = 16;
      constexpr int64_t stride = W * Vec::size();
      alignas(64) acc_t sums[kOutRows * stride];
      for (int64_t t = 0; t < tiles.count; ++t) {  // a tile at a time: it stays in L2
        const int64_t b0 = t * tiles.width, b1 = std::min(B, b0 + tiles.width);
        for (int64_t rb = r0; rb < r1; rb += kOutRows) {
          const int64_t rows = std::min(kOutRows, r1 - rb);
          for (int64_t i = 0; i < rows; ++i)
            row_times_tile<W>(w.values, w.cols, w.row_ptr[rb + i], w.row_ptr[rb + i + 1], tiles.tile(t), sums + i * stride);
          if constexpr (std::is_same_v<scalar_t, float>) {  // through registers, as transpose_rows
            if (bias)
              for (int64_t i = 0; i < rows; ++i)
                for (int v = 0; v < W; ++v) {
                  float* s = sums + i * stride + v * Vec::size();
                  (Vec::loadu(s) + Vec(bias[rb + i])).store(s);
                }
            at::vec::transpose_mxn<float>(sums, stride, y + b0 * out + rb, out, static_cast<int>(rows),
                                          static_cast<int>(b1 - b0));
            continue;
          }
          for (int64_t b = b0; b < b1; ++b) {
            scalar_t* yb = y + b * out + rb;
            for (int64_t i = 0; i < rows; ++i)
              yb[i] = static_cast<scalar_t>(sums[i * stride + b - b0] + (bias ? static_cast<acc_t>(bias[rb + i]) : acc_t(0)));
          }
        }
      }
    });
  });
}

// grad_values[j] = sum_b gy[b, r] * x[b, c_j] for the nonzero j = (r, c_j).
template <typename scalar_t, typename index_t>
void grad_values_kernel(const Csr<scalar_t, index_t>& w, const scalar_t* gy, const scalar_t* x,
                        scalar_t* gv, int64_t B) {
  using acc_t = typename AccOf<scalar_t>::type;
  using Vec = at::vec::Vectorized<acc_t>;
  const int64_t vectors = (B + Vec::size() - 1) / Vec::size(), Bp = vectors * Vec::size();
  const HugePageArray<acc_t> xt = transpose_padded<scalar_t, acc_t>(x, B, w.in, Bp);
  const HugePageArray<acc_t> gyt = transpose_padded<scalar_t, acc_t>(gy, B, w.rows, Bp);
  parallel_over_rows(w.row_ptr, w.rows, vectors, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const acc_t* g = gyt.data() + r * Bp;
      for (int64_t j = w.row_ptr[r]; j < w.row_ptr[r + 1]; ++j) {
        const acc_t* xr = xt.data() + static_cast<int64_t>(w.cols[j]) * Bp;
        Vec acc(acc_t(0));
        for (int64_t b = 0; b < Bp; b += Vec::size())
          acc = at::vec::fmadd(Vec::loadu(g + b), Vec::loadu(xr + b), acc);
        alignas(64) acc_t lanes[Vec::size()];
        acc.store(lanes);
        acc_t sum = 0;
        for (int l = 0; l < Vec::size(); ++l) sum += lanes[l];
        gv[j] = static_cast<scalar_t>(sum);
      }
    }
  });
}

// grad_input (B, in) = gy (B, out) @ W: each row range scatters v * gyT[r, :] into its own
// xT-shaped accumulator (no atomics, deterministic), and the accumulators are summed.
template <typename scalar_t, typename index_t>
void grad_input_kernel(const Csr<scalar_t, index_t>& w, const scalar_t* gy, scalar_t* gx,
                       int64_t B) {
  using acc_t = typename AccOf<scalar_t>::type;
  using Vec = at::vec::Vectorized<acc_t>;
  const int64_t Bp = B == 1 ? 1 : (B + Vec::size() - 1) / Vec::size() * Vec::size();
  const HugePageArray<acc_t> gyt = transpose_padded<scalar_t, acc_t>(gy, B, w.rows, Bp);
  // One accumulator per part; at most 256 MiB of them, and never more parts than threads.
  const int64_t part_bytes = std::max<int64_t>(1, w.in * Bp * static_cast<int64_t>(sizeof(acc_t)));
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(
      {at::get_num_threads(), (int64_t{256} << 20) / part_bytes, std::max<int64_t>(w.rows, 1)}));
  const auto splits = balanced_row_splits(w.row_ptr, w.rows, parts);
  HugePageArray<acc_t> accs(static_cast<size_t>(parts * w.in * Bp));  // scattered into at random
  acc_t* sums = accs.data();
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      acc_t* acc = sums + p * w.in * Bp;
      std::fill_n(acc, w.in * Bp, acc_t(0));
      for (int64_t r = splits[p]; r < splits[p + 1]; ++r) {
        const acc_t* g = gyt.data() + r * Bp;
        for (int64_t j = w.row_ptr[r]; j < w.row_ptr[r + 1]; ++j) {
          acc_t* dst = acc + static_cast<int64_t>(w.cols[j]) * Bp;
          const acc_t v = static_cast<acc_t>(w.values[j]);
          if (Bp == 1) {
            dst[0] += v * g[0];
            continue;
          }
          const Vec wv(v);
          for (int64_t b = 0; b < Bp; b += Vec::size())
            at::vec::fmadd(wv, Vec::loadu(g + b), Vec::loadu(dst + b)).store(dst + b);
        }
      }
    }
  });
  // Sum the parts and write (B, in), in column blocks.
  at::parallel_for(0, w.in, 256, [&](int64_t c0, int64_t c1) {
    for (int64_t p = 1; p < parts; ++p) {
      const acc_t* src = sums + p * w.in * Bp;
      for (int64_t i = c0 * Bp; i < c1 * Bp; ++i) sums[i] += src[i];
    }
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = c0; c < c1; ++c) gx[b * w.in + c] = static_cast<scalar_t>(sums[c * Bp + b]);
  });
}

template <typename Fn>
void dispatch_weight(const at::Tensor& values, const at::Tensor& col_idx, Fn&& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, values.scalar_type(), "sparse_linear", [&] {
    if (col_idx.scalar_type() == at::kShort) fn(scalar_t(), int16_t());
    else fn(scalar_t(), int32_t());
  });
}

template <typename scalar_t, typename index_t>
Csr<scalar_t, index_t> csr_of(const SparseLinearDims& s, const at::Tensor& values,
                              const at::Tensor& row_ptr, const at::Tensor& col_idx) {
  return {values.const_data_ptr<scalar_t>(), row_ptr.const_data_ptr<int64_t>(),
          col_idx.const_data_ptr<index_t>(), s.out_features, s.in_features};
}

at::Tensor sparse_linear_cpu(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& row_ptr, const at::Tensor& col_idx,
                             const at::Tensor& row_order, int64_t in_features,
                             const std::optional<at::Tensor>& bias) {
  const SparseLinearDims s =
      check_sparse_linear_args(input, values, row_ptr, col_idx, row_order, in_features, bias);
  const at::Tensor x = input.contiguous(), v = values.contiguous(), rp = row_ptr.contiguous(),
                   ci = col_idx.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({s.batch, s.out_features}, x.options());
  if (y.numel() == 0) return y;
  dispatch_weight(v, ci, [&](auto scalar, auto index) {
    using scalar_t = decltype(scalar);
    using index_t = decltype(index);
    forward_kernel(csr_of<scalar_t, index_t>(s, v, rp, ci), x.const_data_ptr<scalar_t>(),
                   b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                   y.mutable_data_ptr<scalar_t>(), s.batch);
  });
  return y;
}

at::Tensor sparse_linear_grad_input_cpu(const at::Tensor& grad_out, const at::Tensor& values,
                                        const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                        const at::Tensor& row_order, int64_t in_features) {
  const SparseLinearDims s = check_sparse_linear_grad_input_args(
      grad_out, values, row_ptr, col_idx, row_order, in_features);
  const at::Tensor g = grad_out.contiguous(), v = values.contiguous(), rp = row_ptr.contiguous(),
                   ci = col_idx.contiguous();
  at::Tensor gx = at::empty({s.batch, s.in_features}, g.options());
  if (gx.numel() == 0) return gx;
  dispatch_weight(v, ci, [&](auto scalar, auto index) {
    using scalar_t = decltype(scalar);
    using index_t = decltype(index);
    grad_input_kernel(csr_of<scalar_t, index_t>(s, v, rp, ci), g.const_data_ptr<scalar_t>(),
                      gx.mutable_data_ptr<scalar_t>(), s.batch);
  });
  return gx;
}

at::Tensor sparse_linear_grad_values_cpu(const at::Tensor& grad_out, const at::Tensor& input,
                                         const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                         const at::Tensor& row_order) {
  const SparseLinearDims s = check_sparse_linear_grad_values_args(
      grad_out, input, row_ptr, col_idx, row_order);
  const at::Tensor g = grad_out.contiguous(), x = input.contiguous(), rp = row_ptr.contiguous(),
                   ci = col_idx.contiguous();
  at::Tensor gv = at::empty({s.nnz}, x.options());
  if (gv.numel() == 0) return gv;
  if (s.batch == 0) return gv.zero_();
  dispatch_weight(gv, ci, [&](auto scalar, auto index) {
    using scalar_t = decltype(scalar);
    using index_t = decltype(index);
    const Csr<scalar_t, index_t> w{nullptr, rp.const_data_ptr<int64_t>(),
                                   ci.const_data_ptr<index_t>(), s.out_features, s.in_features};
    grad_values_kernel(w, g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                       gv.mutable_data_ptr<scalar_t>(), s.batch);
  });
  return gv;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CPU, m) {
  m.impl("sparse_linear", &sparse_linear_cpu);
  m.impl("sparse_linear_grad_input", &sparse_linear_grad_input_cpu);
  m.impl("sparse_linear_grad_values", &sparse_linear_grad_values_cpu);
}

}  // namespace sparsedistill
