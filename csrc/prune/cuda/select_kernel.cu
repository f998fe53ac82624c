// CUDA kernels of sparsedistill::select_smallest (schema in sparsedistill/prune/ops.py): exact
// selection of the k smallest keys across a list of tensors; same masks as prune/select_cpu.cpp.
//
// Keys are select_cpu.cpp's 32-bit order keys. Radix select in three digits, high first (12, 12 and
// 8 bits, so that a histogram fits in shared memory): each digit pass histograms the digit of
// the eligible keys that share the prefix found so far (per-block shared histograms merged into
// a global one with atomics; counts do not depend on the order of the atomics), then a one-block
// kernel scans that histogram to extend the prefix and the remaining rank. After the last digit
// the k-th smallest key K and `need` (how many keys == K to prune) are known. When only some of
// the ties go, they are ranked by position: a tie count per chunk, an exclusive scan across the
// chunks (one block, deterministic) and a block-wide scan inside the mask pass.
// The kernels read every decision (prefix, rank, whether ties need ranks) from device memory, so
// the host launches everything without waiting; see select_host.cpp for its one read at the end.
#include <algorithm>
#include <climits>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "prune/cuda/select_kernel.h"

namespace sparsedistill {
namespace {

constexpr int kThreads = 256;       // streaming passes (a multiple of 32: warp-wide intrinsics)
constexpr int kFindThreads = 1024;  // the one-block histogram and tie scans
constexpr int kMaxBins = 4096;
constexpr int kStateWords = sizeof(SelectState) / sizeof(unsigned long long);
static_assert(sizeof(SelectState) == kStateWords * sizeof(unsigned long long), "SelectState words");
static_assert(kSelectChunk % kThreads == 0, "a chunk is whole block iterations");

struct Digit {
  int shift, bits;
};
constexpr Digit kDigits[3] = {{20, 12}, {8, 12}, {0, 8}};

// ------------------------------------------------------------------------------- keys
// The key of float bits u, exactly select_cpu.cpp's order_bits: negatives flip every bit, the rest
// set the sign bit; -0 becomes +0 first.
__device__ __forceinline__ uint32_t order_bits(uint32_t u) {
  u = (u & 0x7fffffffu) == 0 ? 0u : u;
  return u ^ ((0u - (u >> 31)) | 0x80000000u);
}

// float32 bits of element i. Like the CPU kernel's static_cast<float>: bf16 and f16 widen
// exactly, float64 rounds to nearest float32 (so doubles that round alike are equal keys).
__device__ __forceinline__ uint32_t float_bits(const SelectTensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::kFloat32: return __float_as_uint(static_cast<const float*>(t.values)[i]);
    case DType::kBFloat16:  // bf16 is the top half of a float32
      return static_cast<uint32_t>(static_cast<const uint16_t*>(t.values)[i]) << 16;
    case DType::kFloat16:
      return __float_as_uint(__half2float(static_cast<const __half*>(t.values)[i]));
    default: return __float_as_uint(__double2float_rn(static_cast<const double*>(t.values)[i]));
  }
}

// Order key of element i (sign_mask clears the sign for magnitudes); sets nan if it is NaN.
__device__ __forceinline__ uint32_t load_key(const SelectTensor& t, int64_t i, uint32_t sign_mask,
                                             bool& nan) {
  const uint32_t u = float_bits(t, i);
  nan |= (u & 0x7fffffffu) > 0x7f800000u;
  return order_bits(u & sign_mask);
}

__device__ __forceinline__ bool is_eligible(const SelectTensor& t, int64_t i) {
  return t.keep == nullptr || t.keep[i] != 0;
}

// zero_smallest: element i of t.zero becomes +0 (all bits clear, as masked_fill_(.., 0) and the
// CPU kernel write it); a plain store, so tensors that overlap each other only ever see zeros.
__device__ __forceinline__ void zero_element(const SelectTensor& t, int64_t i) {
  switch (t.zero_dtype) {
    case DType::kFloat64: static_cast<unsigned long long*>(t.zero)[i] = 0ull; break;
    case DType::kFloat32: static_cast<uint32_t*>(t.zero)[i] = 0u; break;
    default: static_cast<uint16_t*>(t.zero)[i] = 0u; break;  // bfloat16, float16
  }
}

// ------------------------------------------------------------------------------- chunks
struct ChunkRange {
  SelectTensor t;
  int64_t begin, end;  // flat element range within t
};

// Thread 0 looks chunk c up (the last tensor whose first chunk is <= c; the list holds no empty
// tensors) and shares it through `out`. Ends with a barrier; the caller must pass another
// (end_chunk) before the next call overwrites `out`.
__device__ __forceinline__ void begin_chunk(const SelectTensor* tensors, int64_t num_tensors,
                                            int64_t c, ChunkRange& out) {
  if (threadIdx.x == 0) {
    int64_t lo = 0, hi = num_tensors - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (tensors[mid].first_chunk <= c) lo = mid; else hi = mid - 1;
    }
    out.t = tensors[lo];
    out.begin = (c - out.t.first_chunk) * kSelectChunk;
    out.end = min(out.t.numel, out.begin + kSelectChunk);
  }
  __syncthreads();
}

// ------------------------------------------------------------------------------- scans
// Inclusive sum over the block of x (blockDim.x a multiple of 32, at most 1024); *total gets
// the block's sum. Every thread must call it.
__device__ unsigned long long block_inclusive_sum(unsigned long long x, unsigned long long* total) {
  __shared__ unsigned long long warp_sums[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int d = 1; d < 32; d <<= 1) {
    const unsigned long long y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    unsigned long long s = lane < warps ? warp_sums[lane] : 0;
    for (int d = 1; d < 32; d <<= 1) {
      const unsigned long long y = __shfl_up_sync(0xffffffffu, s, d);
      if (lane >= d) s += y;
    }
    if (lane < warps) warp_sums[lane] = s;
  }
  __syncthreads();
  const unsigned long long result = x + (warp > 0 ? warp_sums[warp - 1] : 0);
  *total = warp_sums[warps - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return result;
}

// ------------------------------------------------------------------------------- kernels
__device__ __forceinline__ void flush_counts(uint32_t* counts, int bins, unsigned long long* hist) {
  for (int b = threadIdx.x; b < bins; b += blockDim.x) {
    if (counts[b] != 0) {
      atomicAdd(&hist[b], static_cast<unsigned long long>(counts[b]));
      counts[b] = 0;
    }
  }
}

// Histogram of key bits [shift, shift + bits) over the eligible keys whose bits above them
// equal state->prefix (all eligible keys for the first digit, which also looks for NaN in every
// element, eligible or not, like the CPU kernel). Blocks stride over the chunks.
template <bool kFirst>
__global__ void __launch_bounds__(kThreads)
histogram_kernel(const SelectTensor* tensors, int64_t num_tensors, int64_t num_chunks,
                 uint32_t sign_mask, Digit digit, SelectState* state, unsigned long long* hist) {
  if (!kFirst && state->invalid) return;
  __shared__ uint32_t counts[kMaxBins];
  __shared__ ChunkRange chunk;
  const int bins = 1 << digit.bits;
  const uint32_t digit_mask = bins - 1;
  const int prefix_shift = digit.shift + digit.bits;  // < 32 unless kFirst
  const unsigned long long prefix = kFirst ? 0 : state->prefix;
  const int lane = threadIdx.x & 31;
  for (int b = threadIdx.x; b < bins; b += blockDim.x) counts[b] = 0;
  int64_t pending = 0;  // elements counted since the last flush: keeps every count < 2^32
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    begin_chunk(tensors, num_tensors, c, chunk);  // (its barrier also orders the zeroing above)
    const SelectTensor t = chunk.t;
    const int64_t begin = chunk.begin, end = chunk.end;
    bool nan = false;
    for (int64_t base = begin; base < end; base += blockDim.x) {  // block-uniform loop
      const int64_t i = base + threadIdx.x;
      uint32_t bin = 0xffffffffu;  // not counted
      if (i < end) {
        const uint32_t key = load_key(t, i, sign_mask, nan);
        if (is_eligible(t, i) && (kFirst || (key >> prefix_shift) == prefix))
          bin = (key >> digit.shift) & digit_mask;
      }
      // Lanes with the same bin add once: runs of equal keys (zeros, quantised weights) would
      // otherwise serialise on one shared counter.
      const unsigned peers = __match_any_sync(0xffffffffu, bin);
      if (bin != 0xffffffffu && lane == __ffs(peers) - 1) atomicAdd(&counts[bin], __popc(peers));
    }
    if (kFirst && __syncthreads_or(nan) && threadIdx.x == 0)
      atomicMax(&state->nan_code, ~static_cast<unsigned long long>(t.index));  // max: first tensor
    pending += end - begin;
    __syncthreads();  // end_chunk: everyone is done with `chunk` and its counts
    if (pending > (int64_t{1} << 30)) {
      flush_counts(counts, bins, hist);
      pending = 0;
      __syncthreads();
    }
  }
  __syncthreads();
  flush_counts(counts, bins, hist);
}

// One block. Finds the bin of the histogram that holds the rank-th smallest counted key (rank
// = k for the first digit, else state->rank), appends it to state->prefix and leaves the rank
// within it; after the last digit writes threshold, need and ties instead. Zeroes the
// histogram for the next digit. The first digit also records the eligible count and marks the
// selection invalid (NaN seen, or k above the eligible count): later kernels then do nothing.
__global__ void __launch_bounds__(kFindThreads)
find_kernel(unsigned long long* hist, Digit digit, int index, int64_t k, SelectState* state) {
  const int bins = 1 << digit.bits;
  const int per = (bins + blockDim.x - 1) / blockDim.x;
  const int first = min(bins, static_cast<int>(threadIdx.x) * per);
  const int last = min(bins, first + per);
  unsigned long long mine = 0;
  for (int b = first; b < last; ++b) mine += hist[b];
  unsigned long long total;
  // Read the shared state before block_inclusive_sum: its barriers order every thread's reads
  // before the finder's writes below (a late warp would otherwise see the new rank).
  const bool nan_seen = index == 0 && state->nan_code != 0;
  const bool was_invalid = index != 0 && state->invalid;
  const unsigned long long prev_rank = index != 0 ? state->rank : 0ull;
  const unsigned long long incl = block_inclusive_sum(mine, &total);
  unsigned long long rank;
  if (index == 0) {
    const bool invalid = nan_seen || static_cast<unsigned long long>(k) > total;
    if (threadIdx.x == 0) {
      state->eligible = total;
      state->invalid = invalid;
    }
    if (invalid || k == 0) return;  // k == 0: the host launches only the mask pass next
    rank = static_cast<unsigned long long>(k);
  } else {
    if (was_invalid) return;
    rank = prev_rank;
  }
  const unsigned long long excl = incl - mine;
  if (excl < rank && rank <= incl) {  // exactly one thread: 1 <= rank <= total
    unsigned long long below = excl;
    int b = first;
    while (below + hist[b] < rank) below += hist[b++];
    const unsigned long long key_bits = (state->prefix << digit.bits) | static_cast<unsigned>(b);
    if (index < 2) {
      state->prefix = key_bits;
      state->rank = rank - below;
    } else {
      state->threshold = key_bits;
      state->need = rank - below;
      state->ties = hist[b];
    }
  }
  __syncthreads();  // the finder has read its bins
  for (int b = first; b < last; ++b) hist[b] = 0;
}

// Ties (eligible keys == K) of each chunk, when only some of them are pruned.
__global__ void __launch_bounds__(kThreads)
tie_count_kernel(const SelectTensor* tensors, int64_t num_tensors, int64_t num_chunks,
                 uint32_t sign_mask, const SelectState* state, unsigned long long* chunk_ties) {
  if (state->invalid || state->need >= state->ties) return;
  const uint32_t threshold = static_cast<uint32_t>(state->threshold);
  __shared__ ChunkRange chunk;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    begin_chunk(tensors, num_tensors, c, chunk);
    const SelectTensor t = chunk.t;
    const int64_t end = chunk.end;
    unsigned long long count = 0;
    bool nan = false;  // (checked by the first pass)
    for (int64_t base = chunk.begin; base < end; base += blockDim.x) {
      const int64_t i = base + threadIdx.x;
      const bool tie = i < end && is_eligible(t, i) && load_key(t, i, sign_mask, nan) == threshold;
      count += __syncthreads_count(tie);
    }
    if (threadIdx.x == 0) chunk_ties[c] = count;
    __syncthreads();  // end_chunk
  }
}

// One block: chunk_ties becomes the exclusive prefix sum (ties in all earlier chunks).
__global__ void __launch_bounds__(kFindThreads)
tie_scan_kernel(int64_t num_chunks, const SelectState* state, unsigned long long* chunk_ties) {
  if (state->invalid || state->need >= state->ties) return;
  unsigned long long carry = 0;
  for (int64_t base = 0; base < num_chunks; base += blockDim.x) {
    const int64_t c = base + threadIdx.x;
    const unsigned long long x = c < num_chunks ? chunk_ties[c] : 0;
    unsigned long long total;
    const unsigned long long incl = block_inclusive_sum(x, &total);
    if (c < num_chunks) chunk_ties[c] = carry + incl - x;
    carry += total;
  }
}

// keep = eligible && (key > K || (key == K && rank >= need)), rank = the tie's position among
// all eligible ties (ties_before[c] of them precede chunk c). When every tie goes (need ==
// ties, or k == 0 with the zeroed state: K = 0 lies below every non-NaN key), no ranks.
// zero_smallest (t.zero set): the thread that decides element i also zeroes it when pruned,
// after it has read values[i] and keep[i] (so these may be the very buffers written).
__global__ void __launch_bounds__(kThreads)
mask_kernel(const SelectTensor* tensors, int64_t num_tensors, int64_t num_chunks,
            uint32_t sign_mask, const SelectState* state, const unsigned long long* ties_before) {
  if (state->invalid) return;
  const uint32_t threshold = static_cast<uint32_t>(state->threshold);
  const unsigned long long need = state->need;
  const bool rank_ties = need < state->ties;  // block-uniform
  __shared__ ChunkRange chunk;
  __shared__ unsigned warp_ties[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    begin_chunk(tensors, num_tensors, c, chunk);
    const SelectTensor t = chunk.t;
    const int64_t end = chunk.end;
    unsigned long long rank = rank_ties ? ties_before[c] : 0;  // ties before this iteration
    bool nan = false;
    for (int64_t base = chunk.begin; base < end; base += blockDim.x) {
      const int64_t i = base + threadIdx.x;
      bool keep = false, tie = false;
      if (i < end && is_eligible(t, i)) {
        const uint32_t key = load_key(t, i, sign_mask, nan);
        keep = key > threshold;
        tie = key == threshold;
      }
      if (rank_ties) {
        const unsigned ballot = __ballot_sync(0xffffffffu, tie);
        if (lane == 0) warp_ties[warp] = __popc(ballot);
        __syncthreads();
        unsigned long long before = __popc(ballot & ((1u << lane) - 1u));
        unsigned long long in_block = 0;
        for (int w = 0; w < kThreads / 32; ++w) {
          before += w < warp ? warp_ties[w] : 0u;
          in_block += warp_ties[w];
        }
        __syncthreads();  // warp_ties is rewritten next iteration
        keep = keep || (tie && rank + before >= need);
        rank += in_block;
      }
      if (i < end) {
        t.mask[i] = keep;
        if (!keep && t.zero != nullptr) zero_element(t, i);
      }
    }
    __syncthreads();  // end_chunk
  }
}

#define SD_RETURN_IF_LAUNCH_FAILED()            \
  do {                                          \
    const cudaError_t err = cudaGetLastError(); \
    if (err != cudaSuccess) return err;         \
  } while (0)

}  // namespace

int64_t select_zeroed_words() { return kStateWords + kMaxBins; }
int64_t select_workspace_words(int64_t num_chunks) { return select_zeroed_words() + num_chunks; }

cudaError_t launch_select_smallest(const SelectTensor* tensors, int64_t num_tensors,
                                   int64_t num_chunks, int64_t k, bool magnitude,
                                   unsigned long long* workspace, cudaStream_t stream) {
  if (num_chunks == 0) return cudaSuccess;
  auto* state = reinterpret_cast<SelectState*>(workspace);
  unsigned long long* hist = workspace + kStateWords;
  unsigned long long* chunk_ties = hist + kMaxBins;
  const uint32_t sign_mask = magnitude ? 0x7fffffffu : 0xffffffffu;
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  // Histogram passes: a few resident blocks per SM, each flushing its shared counts once.
  // Other passes: a block per chunk (striding if there were ever more than 2^31 - 1 chunks).
  const unsigned hist_grid = static_cast<unsigned>(std::min<int64_t>(num_chunks, int64_t{4} * sms));
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(num_chunks, INT_MAX));

  histogram_kernel<true><<<hist_grid, kThreads, 0, stream>>>(tensors, num_tensors, num_chunks,
                                                             sign_mask, kDigits[0], state, hist);
  SD_RETURN_IF_LAUNCH_FAILED();
  find_kernel<<<1, kFindThreads, 0, stream>>>(hist, kDigits[0], 0, k, state);
  SD_RETURN_IF_LAUNCH_FAILED();
  if (k > 0) {
    for (int d = 1; d < 3; ++d) {
      histogram_kernel<false><<<hist_grid, kThreads, 0, stream>>>(
          tensors, num_tensors, num_chunks, sign_mask, kDigits[d], state, hist);
      SD_RETURN_IF_LAUNCH_FAILED();
      find_kernel<<<1, kFindThreads, 0, stream>>>(hist, kDigits[d], d, k, state);
      SD_RETURN_IF_LAUNCH_FAILED();
    }
    tie_count_kernel<<<grid, kThreads, 0, stream>>>(tensors, num_tensors, num_chunks, sign_mask,
                                                   state, chunk_ties);
    SD_RETURN_IF_LAUNCH_FAILED();
    tie_scan_kernel<<<1, kFindThreads, 0, stream>>>(num_chunks, state, chunk_ties);
    SD_RETURN_IF_LAUNCH_FAILED();
  }
  mask_kernel<<<grid, kThreads, 0, stream>>>(tensors, num_tensors, num_chunks, sign_mask, state,
                                             chunk_ties);
  return cudaGetLastError();
}

}  // namespace sparsedistill
