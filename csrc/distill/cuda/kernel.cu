// Fused knowledge-distillation loss (forward KL, reverse KL or JSD between temperature-scaled
// softmaxes, plus an optional hard cross-entropy term) and its gradient w.r.t. the student.
//
// One thread block per row. Pass 1 streams student and teacher once with an online softmax
// (running max + rescaled sums); pass 2 re-reads the row, hopefully from L2, to reduce the
// divergence and, for forward KL, write the gradient. Reverse KL and JSD need the reduced
// divergence before the gradient, so they write it in a third pass.
//
// All arithmetic is float32 and in base 2: with c = log2(e) / T, exp((x - m) / T) is
// exp2((x - m) * c), so every per-element exponential is one MUFU.EX2 (see exp2_ftz).
// x - m is formed first so that the rounding error is relative to the shifted value, not to
// the logits' magnitude (logits of 1e4 that differ by O(1) stay accurate).
#include <cfloat>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include "distill/cuda/kernel.h"

namespace sparsedistill {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kMinThreads = 128;
constexpr int kMaxThreads = 1024;
constexpr int kChunksPerThread = 8;  // target 16-byte chunks per thread when sizing blocks

// How the hard (cross-entropy) term is computed: no labels; labels with T == 1, where
// softmax(s) is q itself; labels with T != 1, which needs its own sum and exponentials.
enum class HardTerm { kNone, kSharesSoftmax, kSeparate };

// 2^x as a single MUFU.EX2 (2 ulp). exp2f() adds three instructions to keep subnormal results;
// results below 2^-126 (~1.2e-38) flush to 0 here, far below anything that moves a sum or the
// tolerance of a gradient. exp2(-inf) = 0, exp2(NaN) = NaN, exp2(+inf) = +inf.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// ---------------------------------------------------------------------------------------------
// Storage <-> float32. A chunk is the kVec<Elem> elements of one 16-byte vector access.
template <typename Elem> constexpr int kVec = 16 / sizeof(Elem);

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ void from_float(float x, float& out) { out = x; }
__device__ __forceinline__ void from_float(float x, __nv_bfloat16& out) { out = __float2bfloat16_rn(x); }
__device__ __forceinline__ void from_float(float x, __half& out) { out = __float2half_rn(x); }

// kStreaming marks the last read of a row: evict-first, so it does not push out rows still
// waiting for their second pass.
template <typename Elem>
__device__ __forceinline__ void unpack(uint4 raw, float (&out)[kVec<Elem>], const Elem*) {
  Elem e[kVec<Elem>];
  memcpy(e, &raw, sizeof(raw));
#pragma unroll
  for (int i = 0; i < kVec<Elem>; ++i) out[i] = to_float(e[i]);
}
// bf16 is the top half of a float: mask/shift the packed words directly (one op per element).
__device__ __forceinline__ void unpack(uint4 raw, float (&out)[8], const __nv_bfloat16*) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(w[i] << 16);
    out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

template <bool kStreaming, typename Elem>
__device__ __forceinline__ void load_chunk(const Elem* p, float (&out)[kVec<Elem>]) {
  const uint4* v = reinterpret_cast<const uint4*>(p);
  unpack(kStreaming ? __ldcs(v) : __ldg(v), out, p);
}

template <typename Elem>
__device__ __forceinline__ void store_chunk(Elem* p, const float (&in)[kVec<Elem>]) {
  Elem e[kVec<Elem>];
#pragma unroll
  for (int i = 0; i < kVec<Elem>; ++i) from_float(in[i], e[i]);
  uint4 raw;
  memcpy(&raw, e, sizeof(raw));
  __stcs(reinterpret_cast<uint4*>(p), raw);  // evict-first: the grad is not re-read here
}

// Elements before the first 16-byte boundary of the row: these and the tail after the last
// whole chunk are handled one element at a time. Rows start only element-aligned when
// V * sizeof(Elem) % 16 != 0. Without vec_ok (student, teacher and grad not equally
// misaligned, so no common boundary) the whole row is "head": correct, just slower.
template <typename Elem>
__device__ __forceinline__ int row_head(const Elem* row, int V, bool vec_ok) {
  if (!vec_ok) return V;
  const int misalign = static_cast<int>(reinterpret_cast<uintptr_t>(row) & 15);
  const int head = ((16 - misalign) & 15) / static_cast<int>(sizeof(Elem));
  return head < V ? head : V;
}

template <int N> struct Chunk {
  static constexpr int kSize = N;
  float s[N];  // student logits
  float t[N];  // teacher logits
  float g[N];  // gradient to store (only read back when the sweep has a grad row)
};

// Calls visit(chunk, first_column) over the whole row: scalar head, 16-byte body, scalar tail.
// kBackward walks the body from the end, so a pass right after a forward pass first re-reads
// what it touched last, which is what most likely is still in L2.
template <bool kBackward, bool kStreaming, typename Elem, typename Visit>
__device__ __forceinline__ void sweep_row(const Elem* __restrict__ s, const Elem* __restrict__ t,
                                          Elem* __restrict__ g, int V, int head, Visit&& visit) {
  constexpr int kN = kVec<Elem>;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int nchunks = (V - head) / kN;
  const int tail = head + nchunks * kN;

  auto scalar_at = [&](int j) {
    Chunk<1> c;
    c.s[0] = to_float(s[j]);
    c.t[0] = to_float(t[j]);
    visit(c, j);
    if (g != nullptr) from_float(c.g[0], g[j]);
  };
  for (int j = tid; j < head; j += nt) scalar_at(j);
  for (int j = tail + tid; j < V; j += nt) scalar_at(j);

  // Two chunks per step, both loaded before either is used: twice the bytes in flight per
  // thread, which is what a one-block-per-row kernel needs to approach the memory bandwidth.
  auto load_at = [&](int k, Chunk<kN>& c) {
    load_chunk<kStreaming>(s + head + k * kN, c.s);
    load_chunk<kStreaming>(t + head + k * kN, c.t);
  };
  auto finish_at = [&](int k, Chunk<kN>& c) {
    visit(c, head + k * kN);
    if (g != nullptr) store_chunk(g + head + k * kN, c.g);
  };
  // Visit order: k = first, first + step, ... (forward) or the mirror image (backward).
  auto index = [&](int i) { return kBackward ? nchunks - 1 - i : i; };
  int i = tid;
  for (; i + nt < nchunks; i += 2 * nt) {
    Chunk<kN> c0, c1;
    load_at(index(i), c0);
    load_at(index(i + nt), c1);
    finish_at(index(i), c0);
    finish_at(index(i + nt), c1);
  }
  if (i < nchunks) {
    Chunk<kN> c0;
    load_at(index(i), c0);
    finish_at(index(i), c0);
  }
}

template <typename Elem>
__device__ void fill_row(Elem* g, int V, int head, float value) {
  const int tid = threadIdx.x, nt = blockDim.x;
  const int nchunks = (V - head) / kVec<Elem>;
  const int tail = head + nchunks * kVec<Elem>;
  for (int j = tid; j < head; j += nt) from_float(value, g[j]);
  for (int j = tail + tid; j < V; j += nt) from_float(value, g[j]);
  float values[kVec<Elem>];
#pragma unroll
  for (int i = 0; i < kVec<Elem>; ++i) values[i] = value;
  for (int k = tid; k < nchunks; k += nt) store_chunk(g + head + k * kVec<Elem>, values);
}

// Largest block the launcher picks: kMaxThreads, or SPARSEDISTILL_CUDA_MAX_THREADS (a power of
// two in [128, 1024], read once) for tuning on a new GPU.
inline int max_block_threads() {
  static const int value = [] {
    const char* env = std::getenv("SPARSEDISTILL_CUDA_MAX_THREADS");
    const int v = env ? std::atoi(env) : kMaxThreads;
    return (v >= kMinThreads && v <= kMaxThreads && (v & (v - 1)) == 0) ? v : kMaxThreads;
  }();
  return value;
}

// ---------------------------------------------------------------------------------------------
// Block reductions. T is an aggregate of floats; combine must be commutative.
template <typename T>
__device__ __forceinline__ T shfl_xor_all(T v, int lane_mask) {
  static_assert(sizeof(T) % sizeof(float) == 0, "T must consist of floats");
  float f[sizeof(T) / sizeof(float)];
  memcpy(f, &v, sizeof(T));
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(T) / sizeof(float)); ++i)
    f[i] = __shfl_xor_sync(0xffffffffu, f[i], lane_mask);
  memcpy(&v, f, sizeof(T));
  return v;
}

// Every thread gets the block's total. Two barriers: the partials are not rewritten by a later
// call before warp 0 has read them, and `total` not before every thread has read it.
template <typename T, typename Combine>
__device__ T block_allreduce(T v, T identity, Combine combine) {
  __shared__ T partial[kMaxThreads / 32];
  __shared__ T total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = combine(v, shfl_xor_all(v, m));
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? partial[lane] : identity;
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v = combine(v, shfl_xor_all(v, m));
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// Online-softmax state of one row: running maxima of the raw logits (max(x/T) = max(x)/T) and
// sums of exp2((x - max) * c). The maxima start at -FLT_MAX, not -inf, so that x - max and
// old_max - new_max are never -inf - (-inf): -inf logits contribute exp2(-inf) = 0. A NaN logit
// is skipped by fmaxf but gives exp2(NaN) = NaN in its sum; +inf gives inf - inf = NaN.
struct RowStats {
  float max_s, sum_s_T, sum_s;  // student: sum at temperature T, and at 1 (hard term)
  float max_t, sum_t_T;         // teacher
};

__device__ __forceinline__ RowStats merge_stats(const RowStats& a, const RowStats& b, float c) {
  RowStats r;
  r.max_s = fmaxf(a.max_s, b.max_s);
  r.max_t = fmaxf(a.max_t, b.max_t);
  const float ds_a = a.max_s - r.max_s, ds_b = b.max_s - r.max_s;
  r.sum_s_T = a.sum_s_T * exp2_ftz(ds_a * c) + b.sum_s_T * exp2_ftz(ds_b * c);
  r.sum_s = a.sum_s * exp2_ftz(ds_a * kLog2e) + b.sum_s * exp2_ftz(ds_b * kLog2e);
  r.sum_t_T = a.sum_t_T * exp2_ftz((a.max_t - r.max_t) * c) + b.sum_t_T * exp2_ftz((b.max_t - r.max_t) * c);
  return r;
}

// Folds one chunk into a thread's state. The sums are rescaled only when the max grows, which
// after the first few chunks almost never happens: ~one exponential per sum and element.
template <bool kTrackUnscaled, int N>
__device__ __forceinline__ void accumulate_stats(RowStats& st, const Chunk<N>& c, float cT) {
  float cmax_s = c.s[0], cmax_t = c.t[0];
#pragma unroll
  for (int i = 1; i < N; ++i) { cmax_s = fmaxf(cmax_s, c.s[i]); cmax_t = fmaxf(cmax_t, c.t[i]); }
  if (cmax_s > st.max_s) {
    const float d = st.max_s - cmax_s;
    st.sum_s_T *= exp2_ftz(d * cT);
    if (kTrackUnscaled) st.sum_s *= exp2_ftz(d * kLog2e);
    st.max_s = cmax_s;
  }
  if (cmax_t > st.max_t) {
    st.sum_t_T *= exp2_ftz((st.max_t - cmax_t) * cT);
    st.max_t = cmax_t;
  }
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const float ds = c.s[i] - st.max_s;
    st.sum_s_T += exp2_ftz(ds * cT);
    if (kTrackUnscaled) st.sum_s += exp2_ftz(ds * kLog2e);
    st.sum_t_T += exp2_ftz((c.t[i] - st.max_t) * cT);
  }
}

// The one-hot part of the hard gradient: subtract (1 - alpha) at the label column, checked once
// per chunk instead of once per element.
template <int N>
__device__ __forceinline__ void subtract_label(Chunk<N>& c, int j0, int y, float one_minus_alpha) {
  const int i_label = y - j0;
  if (static_cast<unsigned>(i_label) < static_cast<unsigned>(N)) {
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (i == i_label) c.g[i] -= one_minus_alpha;
  }
}

// ---------------------------------------------------------------------------------------------
template <typename Elem, Divergence kDiv, HardTerm kHard>
__global__ void __launch_bounds__(kMaxThreads, 1)
distill_loss_kernel(const Elem* __restrict__ student, const Elem* __restrict__ teacher,
                    const int64_t* __restrict__ labels, Elem* __restrict__ grad,
                    float* __restrict__ loss_rows, float* __restrict__ soft_rows,
                    float* __restrict__ hard_rows, const float* __restrict__ grad_scale,
                    DistillParams p, bool vec_ok) {
  const int V = static_cast<int>(p.vocab);
  const float T = p.temperature;
  const float cT = kLog2e / T;
  constexpr bool kLabels = kHard != HardTerm::kNone;
  const float alpha = kLabels ? p.alpha : 1.f;
  const float gs = grad != nullptr ? *grad_scale : 0.f;  // the reduction's weight of each row
  const float beta = p.beta;

  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const int64_t base = row * p.vocab;
    const Elem* s = student + base;
    const Elem* t = teacher + base;
    Elem* g = grad != nullptr ? grad + base : nullptr;
    const int head = row_head(s, V, vec_ok);

    int y = -1;  // label column, -1 without labels
    if (kLabels) {
      const int64_t label = labels[row];
      const bool ignored = (label == p.ignore_index);
      if (ignored || label < 0 || label >= p.vocab) {  // out of range: NaN backstop, no trap
        const float v = ignored ? 0.f : CUDART_NAN_F;
        if (threadIdx.x == 0) loss_rows[row] = soft_rows[row] = hard_rows[row] = v;
        if (g != nullptr) fill_row(g, V, head, v);
        continue;
      }
      y = static_cast<int>(label);
    }

    // Pass 1: online softmax normalisers.
    RowStats st{-FLT_MAX, 0.f, 0.f, -FLT_MAX, 0.f};
    sweep_row</*kBackward=*/false, /*kStreaming=*/false>(
        s, t, static_cast<Elem*>(nullptr), V, head,
        [&](const auto& c, int) { accumulate_stats<kHard == HardTerm::kSeparate>(st, c, cT); });
    st = block_allreduce(st, RowStats{-FLT_MAX, 0.f, 0.f, -FLT_MAX, 0.f},
                         [cT](const RowStats& a, const RowStats& b) { return merge_stats(a, b, cT); });

    const float max_s = st.max_s, max_t = st.max_t;
    const float log2_sum_s_T = log2f(st.sum_s_T), log2_sum_t_T = log2f(st.sum_t_T);
    const float log2_sum_s = kHard == HardTerm::kSeparate ? log2f(st.sum_s) : log2_sum_s_T;
    // log2 q_j and log2 p_j (natural log = these * ln 2).
    auto log2_q = [&](float sj) { return fmaf(sj - max_s, cT, -log2_sum_s_T); };
    auto log2_p = [&](float tj) { return fmaf(tj - max_t, cT, -log2_sum_t_T); };
    // a*T*gz + (1-a)*softmax(s)_j; the one-hot part is added per chunk by `elementwise`.
    auto total_grad = [&](float gz, float sj, float q) {
      float gj = alpha * T * gz;
      if constexpr (kHard == HardTerm::kSharesSoftmax) gj = fmaf(1.f - alpha, q, gj);
      if constexpr (kHard == HardTerm::kSeparate)
        gj = fmaf(1.f - alpha, exp2_ftz(fmaf(sj - max_s, kLog2e, -log2_sum_s)), gj);
      return gj * gs;
    };
    // Turns f(s_j, t_j) -> grad_j into a sweep_row visitor. Passes without a grad row return 0
    // and the stores (and the one-hot fix-up) compile away.
    auto elementwise = [&](auto f) {
      return [&, f](auto& c, int j0) mutable {
        constexpr int n = std::decay_t<decltype(c)>::kSize;
#pragma unroll
        for (int i = 0; i < n; ++i) c.g[i] = f(c.s[i], c.t[i]);
        if constexpr (kLabels) subtract_label(c, j0, y, (1.f - alpha) * gs);
      };
    };
    auto sum = [](float a, float b) { return a + b; };
    Elem* const no_grad = nullptr;

    float D;  // divergence at temperature T, natural log
    if constexpr (kDiv == kForwardKL) {
      // Pass 2: D = sum p (log p - log q) and gz = q - p, in one go.
      float acc = 0.f;
      sweep_row</*kBackward=*/true, /*kStreaming=*/true>(s, t, g, V, head,
                                                          elementwise([&](float sj, float tj) {
        const float lq = log2_q(sj), lp = log2_p(tj), pj = exp2_ftz(lp);
        acc += (pj != 0.f) ? pj * (lp - lq) : 0.f;
        if (g == nullptr) return 0.f;
        const float qj = exp2_ftz(lq);
        return total_grad(qj - pj, sj, qj);
      }));
      D = kLn2 * block_allreduce(acc, 0.f, sum);
    } else if constexpr (kDiv == kReverseKL) {
      // Pass 2: D = sum q (log q - log p). Pass 3: gz = q (log q - log p - D).
      float acc = 0.f;
      sweep_row</*kBackward=*/true, /*kStreaming=*/false>(s, t, no_grad, V, head,
                                                           elementwise([&](float sj, float tj) {
        const float lq = log2_q(sj), qj = exp2_ftz(lq);
        acc += (qj != 0.f) ? qj * (lq - log2_p(tj)) : 0.f;
        return 0.f;
      }));
      D = kLn2 * block_allreduce(acc, 0.f, sum);
      if (g != nullptr) {
        sweep_row</*kBackward=*/false, /*kStreaming=*/true>(s, t, g, V, head,
                                                             elementwise([&](float sj, float tj) {
          const float lq = log2_q(sj), qj = exp2_ftz(lq);
          const float gz = (qj != 0.f) ? qj * fmaf(kLn2, lq - log2_p(tj), -D) : 0.f;
          return total_grad(gz, sj, qj);
        }));
      }
    } else {
      static_assert(kDiv == kJSD, "unknown divergence");
      // log2 m = log2(beta p + (1-beta) q), formed as a log-add-exp of log2 p + log2 beta and
      // log2 q + log2(1-beta) so that a tiny p or q cannot underflow m to 0 (log m = -inf).
      const float log2_beta = log2f(beta), log2_one_minus_beta = log2f(1.f - beta);
      auto log2_m = [&](float lp, float lq) {
        const float a = lp + log2_beta, b = lq + log2_one_minus_beta;
        const float hi = fmaxf(a, b), lo = fminf(a, b);
        return hi + __log2f(1.f + exp2_ftz(lo - hi));  // NaN if p = q = 0; those terms are masked
      };
      // Pass 2: P = sum p (log p - log m), K = sum q (log q - log m), D = beta P + (1-beta) K.
      float2 acc = make_float2(0.f, 0.f);
      sweep_row</*kBackward=*/true, /*kStreaming=*/false>(s, t, no_grad, V, head,
                                                           elementwise([&](float sj, float tj) {
        const float lq = log2_q(sj), lp = log2_p(tj), lm = log2_m(lp, lq);
        const float qj = exp2_ftz(lq), pj = exp2_ftz(lp);
        acc.x += (pj != 0.f) ? pj * (lp - lm) : 0.f;
        acc.y += (qj != 0.f) ? qj * (lq - lm) : 0.f;
        return 0.f;
      }));
      acc = block_allreduce(acc, make_float2(0.f, 0.f),
                            [](float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); });
      const float K = kLn2 * acc.y;
      D = beta * kLn2 * acc.x + (1.f - beta) * K;
      if (g != nullptr) {
        // Pass 3: gz = (1-beta) q (log q - log m - K).
        sweep_row</*kBackward=*/false, /*kStreaming=*/true>(s, t, g, V, head,
                                                             elementwise([&](float sj, float tj) {
          const float lq = log2_q(sj), qj = exp2_ftz(lq);
          const float lm = log2_m(log2_p(tj), lq);
          const float gz = (qj != 0.f) ? (1.f - beta) * qj * fmaf(kLn2, lq - lm, -K) : 0.f;
          return total_grad(gz, sj, qj);
        }));
      }
    }

    if (threadIdx.x == 0) {
      const float soft = T * T * D;
      // lse(s) - s_y = (max_s - s_y) + ln(sum exp(s - max_s))
      const float hard = kLabels ? (max_s - to_float(s[y])) + kLn2 * log2_sum_s : 0.f;
      soft_rows[row] = soft;
      hard_rows[row] = hard;
      loss_rows[row] = alpha * soft + (1.f - alpha) * hard;
    }
  }
}

template <typename Elem>
cudaError_t launch_typed(const void* student, const void* teacher, const int64_t* labels,
                         const float* grad_scale, void* grad, float* loss_rows, float* soft_rows, float* hard_rows,
                         const DistillParams& params, cudaStream_t stream) {
  // The vector body needs student, teacher and grad equally misaligned: row offsets are the same
  // for all three, so then one head length per row aligns them all.
  auto misalign = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) & 15; };
  const bool vec_ok = misalign(student) == misalign(teacher) &&
                      (grad == nullptr || misalign(grad) == misalign(student));

  // Enough threads for ~kChunksPerThread 16-byte chunks each, as a power of two in [128, 1024].
  // Small blocks for small rows keep more rows in flight per SM; the cap is the block limit.
  const int64_t chunks = params.vocab / kVec<Elem>;
  int threads = kMinThreads;
  while (threads < max_block_threads() && int64_t{threads} * kChunksPerThread < chunks) threads *= 2;
  const unsigned blocks = static_cast<unsigned>(params.rows < INT_MAX ? params.rows : INT_MAX);

  const Elem* s = static_cast<const Elem*>(student);
  const Elem* t = static_cast<const Elem*>(teacher);
  Elem* g = static_cast<Elem*>(grad);
  // One kernel per (divergence, hard term) pair, so neither branches in the element loops.
  auto launch = [&](auto div, auto hard_term) {
    distill_loss_kernel<Elem, decltype(div)::value, decltype(hard_term)::value>
        <<<blocks, threads, 0, stream>>>(s, t, labels, g, loss_rows, soft_rows, hard_rows,
                                         grad_scale, params, vec_ok);
  };
  using NoHard = std::integral_constant<HardTerm, HardTerm::kNone>;
  using SharedHard = std::integral_constant<HardTerm, HardTerm::kSharesSoftmax>;
  using SeparateHard = std::integral_constant<HardTerm, HardTerm::kSeparate>;
  auto launch_div = [&](auto div) {
    if (!params.has_labels) launch(div, NoHard{});
    else if (params.temperature == 1.f) launch(div, SharedHard{});
    else launch(div, SeparateHard{});
  };
  switch (params.divergence) {
    case kForwardKL: launch_div(std::integral_constant<Divergence, kForwardKL>{}); break;
    case kReverseKL: launch_div(std::integral_constant<Divergence, kReverseKL>{}); break;
    case kJSD: launch_div(std::integral_constant<Divergence, kJSD>{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// grad[row, :] *= row_scale[row]; a block per row (grid-stride), skipped when the scale is 1.
template <typename Elem>
__global__ void scale_rows_kernel(Elem* __restrict__ grad, const float* __restrict__ row_scale,
                                  int64_t rows, int V) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float scale = row_scale[row];
    if (scale == 1.f) continue;  // the forward already folded this row's weight in
    Elem* g = grad + row * static_cast<int64_t>(V);
    const int head = row_head(g, V, /*vec_ok=*/true);  // one tensor: its head aligns it
    constexpr int kN = kVec<Elem>;
    const int nchunks = (V - head) / kN, tail = head + nchunks * kN;
    for (int j = threadIdx.x; j < head; j += blockDim.x) from_float(to_float(g[j]) * scale, g[j]);
    for (int j = tail + threadIdx.x; j < V; j += blockDim.x) from_float(to_float(g[j]) * scale, g[j]);
    for (int k = threadIdx.x; k < nchunks; k += blockDim.x) {
      float v[kN];
      load_chunk</*kStreaming=*/true>(g + head + k * kN, v);
#pragma unroll
      for (int i = 0; i < kN; ++i) v[i] *= scale;
      store_chunk(g + head + k * kN, v);
    }
  }
}

template <typename Elem>
cudaError_t launch_scale_rows_typed(void* grad, const float* row_scale, int64_t rows, int64_t vocab,
                                    cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(rows < INT_MAX ? rows : INT_MAX);
  scale_rows_kernel<Elem><<<blocks, 256, 0, stream>>>(static_cast<Elem*>(grad), row_scale, rows,
                                                      static_cast<int>(vocab));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_scale_rows(void* grad, const float* row_scale, DType dtype, int64_t rows,
                              int64_t vocab, cudaStream_t stream) {
  if (rows <= 0 || vocab <= 0) return cudaSuccess;
  if (vocab > INT_MAX || grad == nullptr || row_scale == nullptr) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32: return launch_scale_rows_typed<float>(grad, row_scale, rows, vocab, stream);
    case DType::kBFloat16: return launch_scale_rows_typed<__nv_bfloat16>(grad, row_scale, rows, vocab, stream);
    case DType::kFloat16: return launch_scale_rows_typed<__half>(grad, row_scale, rows, vocab, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_distill_loss(const void* student, const void* teacher, const int64_t* labels,
                                const float* grad_scale, void* grad, float* loss_rows,
                                float* soft_rows, float* hard_rows, DType dtype,
                                const DistillParams& params, cudaStream_t stream) {
  if (params.rows <= 0) return cudaSuccess;
  if (params.vocab < 0 || params.vocab > INT_MAX || (params.has_labels && labels == nullptr) ||
      (params.compute_grad && (grad == nullptr || grad_scale == nullptr)))
    return cudaErrorInvalidValue;
  if (!params.compute_grad) grad = nullptr;  // the kernel writes a grad row iff grad != nullptr
  if (!params.has_labels) labels = nullptr;
  switch (dtype) {
    case DType::kFloat32:
      return launch_typed<float>(student, teacher, labels, grad_scale, grad, loss_rows, soft_rows, hard_rows,
                                 params, stream);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16>(student, teacher, labels, grad_scale, grad, loss_rows, soft_rows,
                                         hard_rows, params, stream);
    case DType::kFloat16:
      return launch_typed<__half>(student, teacher, labels, grad_scale, grad, loss_rows, soft_rows,
                                  hard_rows, params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sparsedistill
