// CUDA kernels of sparse_linear (y = x @ W.T + bias) and its two backward products, for a CSR
// weight W (out, in): row_ptr int64, col_idx int16/int32, row_order int32 (rows by nnz, longest
// first). float32/bfloat16/float16 accumulate in float32, float64 in float64.
//
// Work mapping (after Sputnik, Gale et al. 2020). A "group" of G lanes (a power of two <= 32,
// aligned inside its warp) owns one output row; group k of the grid takes row row_order[k], so
// the longest rows start first and the groups of a warp get rows of similar length (row
// swizzle). Lanes load runs of kK = 4 consecutive nonzeros (one vector load of values and one of
// col_idx when the run is whole and the arrays are aligned; scalar loads at the row's ends).
//
//  * Small batch, B <= 4 (rowsplit; B == 1 is the GEMV): the G lanes split the row's
//    nonzeros, each lane keeps B partial sums, and the group reduces them with shuffles. The
//    dense operand stays (B, in): a nonzero reads x[b, c] for b < B, B scattered elements that
//    are served by L1/L2 (x is only B * in elements and every row re-reads it). Per nonzero
//    this reads sizeof(value) + sizeof(index) bytes from DRAM (6 for fp32/int16, 4 for
//    bf16/int16) plus B cached elements of x.
//  * Larger batch, B > 4 (colsplit): the G lanes split a tile of batch columns instead (kCols
//    = 16 bytes of columns per lane, so G * kCols >= B up to G = 32), and every lane walks the
//    whole row. The group stages G * kK nonzeros at a time in shared memory, (value as the
//    accumulator type, column pre-scaled to its element offset col * B: index pre-scaling),
//    loaded by the group with coalesced vector loads, then every lane reuses each staged pair
//    across its kCols batch columns. Here the dense operand is transposed once by the wrapper,
//    to (in, B): a nonzero then reads one contiguous run of B elements (16-byte vector loads
//    when B % kCols == 0), instead of B elements `in` apart, each costing its own 32-byte
//    sector, i.e. 8x (fp32) or 16x (16-bit) the bytes moved from L2 per nonzero. The transpose
//    costs 2 * B * in elements once; the product moves nnz * B, which is (nnz / in) times
//    more, so it pays whenever W has more than a few nonzeros per column. Per nonzero and per
//    batch tile: sizeof(value) + sizeof(index) DRAM bytes for W plus B * sizeof(elem) bytes
//    of x from L2/L1. Outputs are written straight into y (B, out): B * out elements against
//    nnz * B reads, so their uncoalesced stores do not matter.
//  * grad_input (grad_out @ W) walks W the same two ways and scatters instead of gathering:
//    acc[b, c] += v * grad_out[b, r] with atomicAdd into a zero-filled float32 (float64)
//    buffer, (B, in) or batch-minor (in, B) so that a nonzero's B atomics are contiguous. The
//    order of the additions varies between runs, so results can differ in the last bits
//    (non-deterministic); the wrapper casts the buffer to the output dtype.
//  * grad_values (SDDMM) is deterministic: rowsplit computes a nonzero's B-term dot product in
//    one lane; colsplit splits it over the group's lanes (batch columns) and reduces with
//    shuffles, one nonzero after another, grad_out's row r staying in L1 for the whole row.
// Offsets that can pass 2^31 (b * in, r * B, the staged col * B when in * B >= 2^31) are
// 64-bit; the staged offsets are 32-bit when they fit.
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "sparse/cuda/kernel.h"

namespace sparsedistill {
namespace {

constexpr int kThreads = 256;  // threads per block: kThreads / G rows per block
constexpr int kK = 4;          // consecutive nonzeros a lane loads at once

template <typename Elem> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename Elem> using Acc = typename AccOf<Elem>::type;

// Batch columns per lane in the colsplit kernels: one 16-byte vector of the dense operand.
template <typename Elem> constexpr int kCols = 16 / static_cast<int>(sizeof(Elem));

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }

__device__ __forceinline__ void store_acc(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_acc(double* p, double v) { *p = v; }
__device__ __forceinline__ void store_acc(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_acc(__half* p, float v) { *p = __float2half_rn(v); }

template <typename T, int N> struct alignas(sizeof(T) * N) Pack { T v[N]; };

// One vector load; p must be aligned to sizeof(T) * N.
template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

// The entries p[j .. j + kK) that lie in [lo, hi), returned as a mask of the valid ones
// (invalid entries are zero). One vector load when all are valid and `vec` says the array is
// aligned for it (j is always a multiple of kK).
template <typename T>
__device__ __forceinline__ unsigned load_run(const T* __restrict__ p, int64_t j, int64_t lo,
                                             int64_t hi, bool vec, T (&out)[kK]) {
  if (vec && j >= lo && j + kK <= hi) {
    const Pack<T, kK> run = load_pack<kK>(p + j);
#pragma unroll
    for (int k = 0; k < kK; ++k) out[k] = run.v[k];
    return (1u << kK) - 1u;
  }
  unsigned valid = 0;
#pragma unroll
  for (int k = 0; k < kK; ++k) {
    const int64_t jk = j + k;
    const bool ok = jk >= lo && jk < hi;
    out[k] = ok ? p[jk] : T();
    valid |= ok ? 1u << k : 0u;
  }
  return valid;
}

// G lanes aligned inside a warp, owning row row_order[id].
struct Group {
  int size, lane;
  unsigned mask;  // the group's lanes, for __syncwarp and shuffles
  int64_t id;
};

__device__ __forceinline__ Group this_group(int G) {
  Group g;
  g.size = G;
  g.lane = static_cast<int>(threadIdx.x) & (G - 1);
  const int warp_lane = static_cast<int>(threadIdx.x) & 31;
  g.mask = G == 32 ? 0xffffffffu : ((1u << G) - 1u) << (warp_lane & ~(G - 1));
  g.id = static_cast<int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  return g;
}

// Sum over the group; every lane of the group gets it. All its lanes must call.
template <typename T>
__device__ __forceinline__ T group_sum(T v, const Group& g) {
  for (int o = g.size / 2; o > 0; o >>= 1) v += __shfl_xor_sync(g.mask, v, o);
  return v;
}

// rowsplit walk: visit(j, value, column) for this lane's nonzeros of [s, e): runs of kK that
// start at multiples of kK, lane l taking runs l, l + G, l + 2G, ... (values may be nullptr:
// value 0 is passed).
template <typename Elem, typename Index, typename Visit>
__device__ __forceinline__ void for_lane_nonzeros(const Elem* __restrict__ values,
                                                  const Index* __restrict__ cols, int64_t s,
                                                  int64_t e, const Group& g, bool vec,
                                                  Visit&& visit) {
  const int64_t step = static_cast<int64_t>(g.size) * kK;
  for (int64_t j = (s & ~int64_t{kK - 1}) + g.lane * kK; j < e; j += step) {
    Index c[kK];
    Elem v[kK] = {};
    const unsigned valid = load_run(cols, j, s, e, vec, c);
    if (values != nullptr) load_run(values, j, s, e, vec, v);
#pragma unroll
    for (int k = 0; k < kK; ++k)
      if (valid >> k & 1u) visit(j + k, to_acc(v[k]), static_cast<int>(c[k]));
  }
}

// colsplit walk: stages the row's nonzeros [s, e) through the group's G * kK shared slots (sv,
// so), lane l loading the run at chunk + l * kK, then every lane of the group calls
// visit(j, value, offset) for each staged nonzero in order, offset = column * ld being the
// column's pre-scaled element offset in the batch-minor operand. All lanes of the group must
// call (it synchronises them).
template <typename Elem, typename Index, typename Offset, typename Visit>
__device__ __forceinline__ void for_staged_nonzeros(const Elem* __restrict__ values,
                                                    const Index* __restrict__ cols, int64_t s,
                                                    int64_t e, int64_t ld, const Group& g,
                                                    bool vec, Acc<Elem>* sv, Offset* so,
                                                    Visit&& visit) {
  const int64_t step = static_cast<int64_t>(g.size) * kK;
  for (int64_t chunk = s & ~int64_t{kK - 1}; chunk < e; chunk += step) {
    const int64_t j = chunk + g.lane * kK;
    Index c[kK];
    Elem v[kK] = {};
    const unsigned valid = load_run(cols, j, s, e, vec, c);
    if (values != nullptr) load_run(values, j, s, e, vec, v);
#pragma unroll
    for (int k = 0; k < kK; ++k) {
      if (valid >> k & 1u) {
        sv[g.lane * kK + k] = to_acc(v[k]);
        so[g.lane * kK + k] = static_cast<Offset>(c[k]) * static_cast<Offset>(ld);
      }
    }
    __syncwarp(g.mask);
    const int i0 = chunk < s ? static_cast<int>(s - chunk) : 0;
    const int i1 = e - chunk < step ? static_cast<int>(e - chunk) : static_cast<int>(step);
    for (int i = i0; i < i1; ++i) visit(chunk + i, sv[i], so[i]);
    __syncwarp(g.mask);  // before the next chunk overwrites the slots
  }
}

// ---------------------------------------------------------------------------------------------
// rowsplit kernels (B <= kMaxB; dense operands (B, in) and (B, out)).

template <typename Elem, typename Index, int kMaxB>
__global__ void __launch_bounds__(kThreads) linear_rowsplit_kernel(
    const Elem* __restrict__ x, const Elem* __restrict__ values,
    const int64_t* __restrict__ row_ptr, const Index* __restrict__ cols,
    const int32_t* __restrict__ row_order, const Elem* __restrict__ bias, Elem* __restrict__ y,
    int B, int64_t in, int64_t out, int G, bool vec) {
  using A = Acc<Elem>;
  const Group g = this_group(G);
  if (g.id >= out) return;
  const int r = row_order[g.id];
  A acc[kMaxB];
#pragma unroll
  for (int b = 0; b < kMaxB; ++b) acc[b] = A(0);
  for_lane_nonzeros(values, cols, row_ptr[r], row_ptr[r + 1], g, vec, [&](int64_t, A v, int c) {
#pragma unroll
    for (int b = 0; b < kMaxB; ++b)
      if (b < B) acc[b] += v * to_acc(__ldg(x + b * in + c));
  });
#pragma unroll
  for (int b = 0; b < kMaxB; ++b) acc[b] = group_sum(acc[b], g);
  if (g.lane != 0) return;
  const A bias_r = bias != nullptr ? to_acc(bias[r]) : A(0);
#pragma unroll
  for (int b = 0; b < kMaxB; ++b)
    if (b < B) store_acc(y + b * out + r, bias != nullptr ? acc[b] + bias_r : acc[b]);
}

template <typename Elem, typename Index, int kMaxB>
__global__ void __launch_bounds__(kThreads) grad_input_rowsplit_kernel(
    const Elem* __restrict__ grad_out, const Elem* __restrict__ values,
    const int64_t* __restrict__ row_ptr, const Index* __restrict__ cols,
    const int32_t* __restrict__ row_order, Acc<Elem>* __restrict__ acc, int B, int64_t in,
    int64_t out, int G, bool vec) {
  using A = Acc<Elem>;
  const Group g = this_group(G);
  if (g.id >= out) return;
  const int r = row_order[g.id];
  A go[kMaxB];
#pragma unroll
  for (int b = 0; b < kMaxB; ++b) go[b] = b < B ? to_acc(grad_out[b * out + r]) : A(0);
  for_lane_nonzeros(values, cols, row_ptr[r], row_ptr[r + 1], g, vec, [&](int64_t, A v, int c) {
#pragma unroll
    for (int b = 0; b < kMaxB; ++b)
      if (b < B) atomicAdd(acc + b * in + c, v * go[b]);
  });
}

template <typename Elem, typename Index, int kMaxB>
__global__ void __launch_bounds__(kThreads) grad_values_rowsplit_kernel(
    const Elem* __restrict__ grad_out, const Elem* __restrict__ x,
    const int64_t* __restrict__ row_ptr, const Index* __restrict__ cols,
    const int32_t* __restrict__ row_order, Elem* __restrict__ grad_values, int B, int64_t in,
    int64_t out, int G, bool vec) {
  using A = Acc<Elem>;
  const Group g = this_group(G);
  if (g.id >= out) return;
  const int r = row_order[g.id];
  A go[kMaxB];
#pragma unroll
  for (int b = 0; b < kMaxB; ++b) go[b] = b < B ? to_acc(grad_out[b * out + r]) : A(0);
  const Elem* no_values = nullptr;
  for_lane_nonzeros(no_values, cols, row_ptr[r], row_ptr[r + 1], g, vec, [&](int64_t j, A, int c) {
    A d = A(0);
#pragma unroll
    for (int b = 0; b < kMaxB; ++b)
      if (b < B) d += go[b] * to_acc(__ldg(x + b * in + c));
    store_acc(grad_values + j, d);
  });
}

// ---------------------------------------------------------------------------------------------
// colsplit kernels (B > kSparseRowSplitMaxBatch; batch-minor operands (in, B) and (out, B)).
// kVecB: B % kCols == 0 and the operands 16-byte aligned, so a lane's kCols columns are one
// vector. Offset: the staged col * B, int32 when in * B fits.

#define SD_COLSPLIT_SETUP                                                    \
  using A = Acc<Elem>;                                                       \
  constexpr int kC = kCols<Elem>;                                            \
  __shared__ A s_val[kThreads * kK];                                         \
  __shared__ Offset s_off[kThreads * kK];                                    \
  const Group g = this_group(G);                                             \
  if (g.id >= out) return;                                                   \
  const int r = row_order[g.id];                                             \
  const int64_t s = row_ptr[r], e = row_ptr[r + 1];                          \
  A* sv = s_val + (static_cast<int>(threadIdx.x) & ~(G - 1)) * kK;           \
  Offset* so = s_off + (static_cast<int>(threadIdx.x) & ~(G - 1)) * kK;      \
  (void)kC;

template <typename Elem, typename Index, typename Offset, bool kVecB>
__global__ void __launch_bounds__(kThreads) linear_colsplit_kernel(
    const Elem* __restrict__ xt, const Elem* __restrict__ values,
    const int64_t* __restrict__ row_ptr, const Index* __restrict__ cols,
    const int32_t* __restrict__ row_order, const Elem* __restrict__ bias, Elem* __restrict__ y,
    int64_t B, int64_t out, int G, bool vec) {
  SD_COLSPLIT_SETUP
  const int64_t tile = static_cast<int64_t>(G) * kC;
  for (int64_t b0 = blockIdx.y * tile; b0 < B; b0 += gridDim.y * tile) {
    const int64_t b = b0 + static_cast<int64_t>(g.lane) * kC;  // this lane's first column
    A acc[kC];
#pragma unroll
    for (int k = 0; k < kC; ++k) acc[k] = A(0);
    // Lanes past B stay in the walk: they stage nonzeros for the others.
    for_staged_nonzeros(values, cols, s, e, B, g, vec, sv, so, [&](int64_t, A v, Offset off) {
      if (b >= B) return;
      const Elem* p = xt + off + b;
      if constexpr (kVecB) {
        const Pack<Elem, kC> xv = load_pack<kC>(p);
#pragma unroll
        for (int k = 0; k < kC; ++k) acc[k] += v * to_acc(xv.v[k]);
      } else {
#pragma unroll
        for (int k = 0; k < kC; ++k)
          if (b + k < B) acc[k] += v * to_acc(__ldg(p + k));
      }
    });
    if (b >= B) continue;
    const A bias_r = bias != nullptr ? to_acc(bias[r]) : A(0);
#pragma unroll
    for (int k = 0; k < kC; ++k)
      if (b + k < B) store_acc(y + (b + k) * out + r, bias != nullptr ? acc[k] + bias_r : acc[k]);
  }
}

template <typename Elem, typename Index, typename Offset, bool kVecB>
__global__ void __launch_bounds__(kThreads) grad_input_colsplit_kernel(
    const Elem* __restrict__ grad_out_t, const Elem* __restrict__ values,
    const int64_t* __restrict__ row_ptr, const Index* __restrict__ cols,
    const int32_t* __restrict__ row_order, Acc<Elem>* __restrict__ acc_t, int64_t B,
    int64_t out, int G, bool vec) {
  SD_COLSPLIT_SETUP
  const int64_t tile = static_cast<int64_t>(G) * kC;
  for (int64_t b0 = blockIdx.y * tile; b0 < B; b0 += gridDim.y * tile) {
    const int64_t b = b0 + static_cast<int64_t>(g.lane) * kC;
    const Elem* go_row = grad_out_t + static_cast<int64_t>(r) * B + b;
    A go[kC];
    if (kVecB && b < B) {
      const Pack<Elem, kC> gv = load_pack<kC>(go_row);
#pragma unroll
      for (int k = 0; k < kC; ++k) go[k] = to_acc(gv.v[k]);
    } else {
#pragma unroll
      for (int k = 0; k < kC; ++k) go[k] = b + k < B ? to_acc(go_row[k]) : A(0);
    }
    for_staged_nonzeros(values, cols, s, e, B, g, vec, sv, so, [&](int64_t, A v, Offset off) {
      if (b >= B) return;
      A* p = acc_t + off + b;
#pragma unroll
      for (int k = 0; k < kC; ++k)
        if (b + k < B) atomicAdd(p + k, v * go[k]);
    });
  }
}

template <typename Elem, typename Index, typename Offset, bool kVecB>
__global__ void __launch_bounds__(kThreads) grad_values_colsplit_kernel(
    const Elem* __restrict__ grad_out_t, const Elem* __restrict__ xt,
    const int64_t* __restrict__ row_ptr, const Index* __restrict__ cols,
    const int32_t* __restrict__ row_order, Elem* __restrict__ grad_values, int64_t B,
    int64_t out, int G, bool vec) {
  SD_COLSPLIT_SETUP
  const Elem* go_row = grad_out_t + static_cast<int64_t>(r) * B;
  const Elem* no_values = nullptr;
  const int64_t stride = static_cast<int64_t>(G) * kC;
  for_staged_nonzeros(no_values, cols, s, e, B, g, vec, sv, so, [&](int64_t j, A, Offset off) {
    const Elem* x_col = xt + off;
    A d = A(0);
    for (int64_t b = static_cast<int64_t>(g.lane) * kC; b < B; b += stride) {
      if constexpr (kVecB) {
        const Pack<Elem, kC> gv = load_pack<kC>(go_row + b), xv = load_pack<kC>(x_col + b);
#pragma unroll
        for (int k = 0; k < kC; ++k) d += to_acc(gv.v[k]) * to_acc(xv.v[k]);
      } else {
#pragma unroll
        for (int k = 0; k < kC; ++k)
          if (b + k < B) d += to_acc(go_row[b + k]) * to_acc(__ldg(x_col + b + k));
      }
    }
    d = group_sum(d, g);
    if (g.lane == 0) store_acc(grad_values + j, d);
  });
}

#undef SD_COLSPLIT_SETUP

// ---------------------------------------------------------------------------------------------
// Host side: choosing G and the template arguments.

template <typename T> struct Tag { using type = T; };

bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

int pow2_at_least(int64_t n, int lo, int hi) {
  int p = lo;
  while (p < hi && p < n) p *= 2;
  return p;
}

// rowsplit: enough lanes that one pass of kK-runs covers an average row (2 to 32).
int rowsplit_group(const SparseStructure& w) {
  const int64_t avg = (w.nnz + w.out_features - 1) / w.out_features;
  return pow2_at_least((avg + kK - 1) / kK, 2, 32);
}

// colsplit: enough lanes for all B columns at kCols each (1 to 32; more columns tile grid.y).
template <typename Elem>
int colsplit_group(int64_t batch) {
  return pow2_at_least((batch + kCols<Elem> - 1) / kCols<Elem>, 1, 32);
}

unsigned row_blocks(int64_t rows, int G) {
  const int64_t per_block = kThreads / G;
  return static_cast<unsigned>((rows + per_block - 1) / per_block);  // rows <= INT_MAX
}

template <typename F>
cudaError_t dispatch_types(DType dtype, SparseIndex index, F&& f) {
  auto with_index = [&](auto elem) -> cudaError_t {
    switch (index) {
      case SparseIndex::kInt16: return f(elem, Tag<int16_t>{});
      case SparseIndex::kInt32: return f(elem, Tag<int32_t>{});
    }
    return cudaErrorInvalidValue;
  };
  switch (dtype) {
    case DType::kFloat32: return with_index(Tag<float>{});
    case DType::kBFloat16: return with_index(Tag<__nv_bfloat16>{});
    case DType::kFloat16: return with_index(Tag<__half>{});
    case DType::kFloat64: return with_index(Tag<double>{});
  }
  return cudaErrorInvalidValue;
}

// f(Tag<Offset>, std::bool_constant<kVecB>) for the colsplit kernels.
template <typename F>
void dispatch_colsplit(bool offsets_fit_int32, bool vec_b, F&& f) {
  if (offsets_fit_int32) {
    if (vec_b) f(Tag<int32_t>{}, std::true_type{});
    else f(Tag<int32_t>{}, std::false_type{});
  } else {
    if (vec_b) f(Tag<int64_t>{}, std::true_type{});
    else f(Tag<int64_t>{}, std::false_type{});
  }
}

// Launch geometry and flags shared by the three ops.
struct Plan {
  bool rowsplit;
  int G;
  dim3 grid;
  bool vec;              // values/col_idx aligned for kK-runs
  bool vec_b;            // colsplit: B % kCols == 0 and dense operands 16-byte aligned
  bool offsets_fit_int32;
};

template <typename Elem, typename Index>
Plan make_plan(const SparseStructure& w, int64_t batch, const void* values,
               std::initializer_list<const void*> dense) {
  Plan p{};
  p.rowsplit = !sparse_batch_minor(batch);
  p.vec = aligned(values, kK * sizeof(Elem)) && aligned(w.col_idx, kK * sizeof(Index));
  if (p.rowsplit) {
    p.G = rowsplit_group(w);
    p.grid = dim3(row_blocks(w.out_features, p.G));
    return p;
  }
  p.G = colsplit_group<Elem>(batch);
  const int64_t tiles = (batch + int64_t{p.G} * kCols<Elem> - 1) / (int64_t{p.G} * kCols<Elem>);
  p.grid = dim3(row_blocks(w.out_features, p.G), static_cast<unsigned>(tiles < 65535 ? tiles : 65535));
  p.vec_b = batch % kCols<Elem> == 0;
  for (const void* d : dense) p.vec_b = p.vec_b && aligned(d, 16);
  p.offsets_fit_int32 = w.in_features * batch <= INT_MAX;
  return p;
}

// The kernel variant launch_ladder picked: rowsplit for up to kMaxBatch batch rows, or colsplit
// with Offset-typed staged offsets and (kVecB) 16-byte batch loads.
template <int kMaxBatch_>
struct RowSplit {
  static constexpr bool kRowSplit = true;
  static constexpr int kMaxBatch = kMaxBatch_;
};
template <typename Offset_, bool kVecB_>
struct ColSplit {
  static constexpr bool kRowSplit = false;
  using Offset = Offset_;
  static constexpr bool kVecB = kVecB_;
};

// The dispatch ladder of the three launchers: element and index type, the Plan (values and the
// dense operands decide the vector loads), then the variant: rowsplit with B == 1 or B <=
// kSparseRowSplitMaxBatch, else colsplit by offset type and vectorised batch, its batch tiles
// in grid.y unless !batch_tiles. op(Tag<Elem>, Tag<Index>, split, launch) names the op's kernel
// for `split` and its leading arguments (operands, outputs): launch(kernel, args...) launches
// it on the plan's grid with args followed by the sizes (rowsplit: B, in, out; colsplit: batch,
// out) and the plan's G and vec. Returns the launch status.
template <typename Op>
cudaError_t launch_ladder(DType dtype, const SparseStructure& w, int64_t batch, const void* values,
                          std::initializer_list<const void*> dense, bool batch_tiles,
                          cudaStream_t stream, Op&& op) {
  return dispatch_types(dtype, w.index, [&](auto elem, auto index) -> cudaError_t {
    using Elem = typename decltype(elem)::type;
    using Index = typename decltype(index)::type;
    Plan p = make_plan<Elem, Index>(w, batch, values, dense);
    if (p.rowsplit) {
      const int B = static_cast<int>(batch < INT_MAX ? batch : INT_MAX);  // rowsplit: B <= 4
      auto launch = [&](auto kernel, auto... args) {
        kernel<<<p.grid, kThreads, 0, stream>>>(args..., B, w.in_features, w.out_features, p.G, p.vec);
      };
      if (batch == 1) op(elem, index, RowSplit<1>{}, launch);
      else op(elem, index, RowSplit<kSparseRowSplitMaxBatch>{}, launch);
    } else {
      if (!batch_tiles) p.grid.y = 1;
      auto launch = [&](auto kernel, auto... args) {
        kernel<<<p.grid, kThreads, 0, stream>>>(args..., batch, w.out_features, p.G, p.vec);
      };
      dispatch_colsplit(p.offsets_fit_int32, p.vec_b, [&](auto offset, auto vec_b) {
        op(elem, index, ColSplit<typename decltype(offset)::type, decltype(vec_b)::value>{}, launch);
      });
    }
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t launch_sparse_linear(const void* x, const void* values, const SparseStructure& w,
                                 const void* bias, void* y, DType dtype, int64_t batch,
                                 cudaStream_t stream) {
  if (batch <= 0 || w.out_features <= 0) return cudaSuccess;
  return launch_ladder(dtype, w, batch, values, {x}, /*batch_tiles=*/true, stream,
                       [&](auto elem, auto index, auto split, auto&& launch) {
    using Elem = typename decltype(elem)::type;
    using Index = typename decltype(index)::type;
    using S = decltype(split);
    auto kernel = [] {
      if constexpr (S::kRowSplit) return linear_rowsplit_kernel<Elem, Index, S::kMaxBatch>;
      else return linear_colsplit_kernel<Elem, Index, typename S::Offset, S::kVecB>;
    }();
    launch(kernel, static_cast<const Elem*>(x), static_cast<const Elem*>(values), w.row_ptr,
           static_cast<const Index*>(w.col_idx), w.row_order, static_cast<const Elem*>(bias),
           static_cast<Elem*>(y));
  });
}

cudaError_t launch_sparse_linear_grad_input(const void* grad_out, const void* values,
                                            const SparseStructure& w, void* acc,
                                            DType dtype, int64_t batch,
                                            cudaStream_t stream) {
  if (batch <= 0 || w.out_features <= 0 || w.nnz <= 0 || w.in_features <= 0) return cudaSuccess;
  return launch_ladder(dtype, w, batch, values, {grad_out}, /*batch_tiles=*/true, stream,
                       [&](auto elem, auto index, auto split, auto&& launch) {
    using Elem = typename decltype(elem)::type;
    using Index = typename decltype(index)::type;
    using S = decltype(split);
    auto kernel = [] {
      if constexpr (S::kRowSplit) return grad_input_rowsplit_kernel<Elem, Index, S::kMaxBatch>;
      else return grad_input_colsplit_kernel<Elem, Index, typename S::Offset, S::kVecB>;
    }();
    launch(kernel, static_cast<const Elem*>(grad_out), static_cast<const Elem*>(values), w.row_ptr,
           static_cast<const Index*>(w.col_idx), w.row_order, static_cast<Acc<Elem>*>(acc));
  });
}

cudaError_t launch_sparse_linear_grad_values(const void* grad_out, const void* x,
                                             const SparseStructure& w, void* grad_values,
                                             DType dtype, int64_t batch,
                                             cudaStream_t stream) {
  if (batch <= 0 || w.out_features <= 0 || w.nnz <= 0) return cudaSuccess;
  // No values operand (the output is of the nonzeros); one pass over B per nonzero: no batch tiles.
  return launch_ladder(dtype, w, batch, nullptr, {grad_out, x}, /*batch_tiles=*/false, stream,
                       [&](auto elem, auto index, auto split, auto&& launch) {
    using Elem = typename decltype(elem)::type;
    using Index = typename decltype(index)::type;
    using S = decltype(split);
    auto kernel = [] {
      if constexpr (S::kRowSplit) return grad_values_rowsplit_kernel<Elem, Index, S::kMaxBatch>;
      else return grad_values_colsplit_kernel<Elem, Index, typename S::Offset, S::kVecB>;
    }();
    launch(kernel, static_cast<const Elem*>(grad_out), static_cast<const Elem*>(x), w.row_ptr,
           static_cast<const Index*>(w.col_idx), w.row_order, static_cast<Elem*>(grad_values));
  });
}

}  // namespace sparsedistill
