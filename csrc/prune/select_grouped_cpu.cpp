// C++ CPU kernel of sparsedistill::select_smallest_grouped (schema in sparsedistill/prune/ops.py):
// exact k-smallest selection inside every group_rows x group_cols tile of a matrix, e.g. per
// output row for Wanda. Tiles run in parallel, one task each:
//   1. the tile's order keys (order_keys.h) into a thread-local buffer, row-major in the tile;
//      not-eligible elements get the key 0xffffffff, above every real key (NaN is rejected);
//   2. the k-th smallest key K by radix selection: an 11-bit histogram of the top bits (below
//      the sign bit for magnitudes, whose keys all have it set), then of the next 11 and the
//      last bits among the keys that share the bits found so far (the candidates are copied
//      out after the first pass, so later passes read few keys);
//   3. the mask pass in tile order: keys < K are pruned, and of the keys == K the first
//      (k - #below) in row-major tile order: the tie rule of every pruning function. When
//      pruning in place with no tie at K (the usual call), the mask and the zeros are written
//      in the same pass.
#include <ATen/Parallel.h>
#include <torch/library.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "prune/checks.h"
#include "prune/order_keys.h"
#include "prune/undo_log.h"

namespace sparsedistill {
namespace {

constexpr uint32_t kNotEligible = 0xffffffffu;
constexpr int64_t kFewCandidates = 256;  // below this many candidates, kth_of_few beats another pass

#if defined(__AVX512F__)
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}
#endif

// The rank-th smallest (1-based) of c[0, m) (c is reordered); *less = how many are strictly
// smaller, *same how many equal it. With AVX-512, rounds of 16 buckets between the current
// minimum and maximum (15 vector compares per 16 keys) keep only the bucket that holds the rank
// until few keys are left, then nth_element: the candidates here are the keys of a narrow band,
// nearly uniform in it, so each round leaves about a sixteenth, and std::nth_element on the
// whole band had been 37% of Wanda's per-row selection. A caller that knows every key lies in
// [lo0, hi0] (the guided band) passes those bounds, which saves the first round's min/max pass.
uint32_t kth_of_few(uint32_t* c, int64_t m, int64_t rank, int64_t* less, int64_t* same, uint32_t lo0 = 1,
                    uint32_t hi0 = 0) {
  int64_t skipped = 0;
#if defined(__AVX512F__)
  for (int round = 0; round < 4 && m > 48; ++round) {
    uint32_t lo = lo0, hi = hi0;
    if (round > 0 || lo0 > hi0) {
      __m512i vmin = _mm512_set1_epi32(-1), vmax = _mm512_setzero_si512();
      for (int64_t i = 0; i < m; i += 16) {
        const __mmask16 live = tail_mask(m - i);
        const __m512i v = _mm512_maskz_loadu_epi32(live, c + i);
        vmin = _mm512_mask_min_epu32(vmin, live, vmin, v);
        vmax = _mm512_mask_max_epu32(vmax, live, vmax, v);
      }
      lo = _mm512_reduce_min_epu32(vmin);
      hi = _mm512_reduce_max_epu32(vmax);
    }
    if (lo == hi) {  // all equal
      *less = skipped;
      *same = m;
      return lo;
    }
    // Bucket j is [t_j, t_{j+1}), t_0 = lo, t_16 = past hi; rounding up puts lo in bucket 0 and
    // hi in bucket 15, so every round from the keys' own min and max drops at least one key.
    uint32_t t[16];
    __m512i vt[16];
    int64_t below[17] = {0};
    for (int j = 1; j < 16; ++j) {
      t[j] = lo + static_cast<uint32_t>((static_cast<uint64_t>(hi - lo) * j + 15) / 16);
      vt[j] = _mm512_set1_epi32(static_cast<int>(t[j]));
    }
    for (int64_t i = 0; i < m; i += 16) {
      const __mmask16 live = tail_mask(m - i);
      const __m512i v = _mm512_maskz_loadu_epi32(live, c + i);
      for (int j = 1; j < 16; ++j) below[j] += __builtin_popcount(_mm512_mask_cmp_epu32_mask(live, v, vt[j], _MM_CMPINT_LT));
    }
    below[16] = m;
    int s = 15;
    while (below[s] >= rank) --s;  // below[0] = 0 < rank
    const __m512i vlo = _mm512_set1_epi32(static_cast<int>(s ? t[s] : lo));
    int64_t kept = 0;
    for (int64_t i = 0; i < m; i += 16) {  // in place: the store never passes the loads
      const __mmask16 live = tail_mask(m - i);
      const __m512i v = _mm512_maskz_loadu_epi32(live, c + i);
      __mmask16 in = _mm512_mask_cmp_epu32_mask(live, v, vlo, _MM_CMPINT_NLT);
      if (s < 15) in = _mm512_mask_cmp_epu32_mask(in, v, vt[s + 1], _MM_CMPINT_LT);
      _mm512_mask_storeu_epi32(c + kept, (1u << __builtin_popcount(in)) - 1u, _mm512_maskz_compress_epi32(in, v));
      kept += __builtin_popcount(in);
    }
    skipped += below[s];
    rank -= below[s];
    m = kept;
  }
#else
  (void)lo0;
  (void)hi0;
#endif
  std::nth_element(c, c + (rank - 1), c + m);
  const uint32_t key = c[rank - 1];
  int64_t l = 0, e = 0;
  for (int64_t i = 0; i < m; ++i) {
    l += c[i] < key;
    e += c[i] == key;
  }
  *less = skipped + l;
  *same = e;
  return key;
}

// Whether values holds a NaN: one parallel read, no allocation (a bool tensor of values' size
// from at::isnan would cost a fresh page per 4096 elements on a VM).
bool has_nan(const at::Tensor& v) {
  std::atomic<bool> found{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, v.scalar_type(), "has_nan", [&] {
    const scalar_t* x = v.const_data_ptr<scalar_t>();
    at::parallel_for(0, v.numel(), 1 << 16, [&](int64_t b, int64_t e) {
      uint32_t nan = 0;
      for (int64_t i = b; i < e; ++i) nan |= static_cast<uint32_t>(is_nan_bits(float_bits(static_cast<float>(x[i]))));
      if (nan) found = true;
    });
  });
  return found.load();
}

// The rank-th smallest (1-based) of keys[0, n), rank in [1, n]; *below = how many keys are
// strictly smaller, *equal how many equal it. tmp: scratch of at least n keys. top_bit_set:
// every key has bit 31 set (magnitude keys, and kNotEligible), so the digits cover bits 30..0
// and the first one resolves one more mantissa bit.
uint32_t kth_key(const uint32_t* keys, int64_t n, int64_t rank, std::vector<uint32_t>& tmp,
                 int64_t* below, int64_t* equal, bool top_bit_set) {
  static constexpr int kSignedShift[3] = {21, 10, 0}, kSignedBits[3] = {11, 11, 10};
  static constexpr int kMagShift[3] = {20, 9, 0}, kMagBits[3] = {11, 11, 9};
  const int* shifts = top_bit_set ? kMagShift : kSignedShift;
  const int* widths = top_bit_set ? kMagBits : kSignedBits;
  // Four interleaved histograms for the first pass: neighbouring keys of a row mostly share
  // their top digit, and one histogram would make each increment wait for the previous one.
  int32_t hist4[4][1 << 11];
  int32_t* hist = hist4[0];
  uint32_t prefix = top_bit_set ? 0x80000000u : 0u;
  int64_t smaller = 0, count = n;
  const uint32_t* src = keys;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = shifts[pass], bins = 1 << widths[pass];
    const uint32_t digit_mask = static_cast<uint32_t>(bins - 1);
    if (pass == 0 && count >= 1024) {
      for (auto& h : hist4) std::fill(h, h + bins, 0);
      int64_t i = 0;
      for (; i + 4 <= count; i += 4) {
        ++hist4[0][(src[i] >> shift) & digit_mask];
        ++hist4[1][(src[i + 1] >> shift) & digit_mask];
        ++hist4[2][(src[i + 2] >> shift) & digit_mask];
        ++hist4[3][(src[i + 3] >> shift) & digit_mask];
      }
      for (; i < count; ++i) ++hist4[0][(src[i] >> shift) & digit_mask];
      for (int b = 0; b < bins; ++b) hist[b] += hist4[1][b] + hist4[2][b] + hist4[3][b];
    } else {
      std::fill(hist, hist + bins, 0);
      for (int64_t i = 0; i < count; ++i) ++hist[(src[i] >> shift) & digit_mask];
    }
    int b = 0;
    for (; b < bins; ++b) {
      if (rank <= hist[b]) break;
      rank -= hist[b];
      smaller += hist[b];
    }
    prefix |= static_cast<uint32_t>(b) << shift;
    if (pass == 2) {
      *equal = hist[b];
      break;
    }
    // Keep only the candidates whose digit is b (they share every higher digit already).
    int64_t m = 0;
    uint32_t* dst = tmp.data();
    for (int64_t i = 0; i < count; ++i) {
      const uint32_t key = src[i];
      dst[m] = key;
      m += ((key >> shift) & digit_mask) == static_cast<uint32_t>(b);
    }
    src = dst;
    count = m;
    if (count <= kFewCandidates) {  // few left (the usual case after the top 11 bits): select them
      int64_t less = 0;
      const uint32_t key = kth_of_few(tmp.data(), count, rank, &less, equal);
      *below = smaller + less;
      return key;
    }
  }
  *below = smaller;
  return prefix;
}

// The band pass of the guided selection: of keys[0, n), how many are < lo (returned), and the
// keys in [lo, hi] copied to band (*band_n of them).
int64_t count_and_gather(const uint32_t* keys, int64_t n, uint32_t lo, uint32_t hi, uint32_t* band,
                         int64_t* band_n) {
  int64_t below = 0, m = 0, i = 0;
#if defined(__AVX512F__)
  const __m512i vlo = _mm512_set1_epi32(static_cast<int>(lo)), vhi = _mm512_set1_epi32(static_cast<int>(hi));
  for (; i + 16 <= n; i += 16) {
    const __m512i k = _mm512_loadu_si512(keys + i);
    const __mmask16 lt = _mm512_cmp_epu32_mask(k, vlo, _MM_CMPINT_LT);
    const __mmask16 in = _mm512_mask_cmp_epu32_mask(static_cast<__mmask16>(~lt), k, vhi, _MM_CMPINT_LE);
    // The register form of compress, then a plain store: the memory form is slow on some cores.
    _mm512_storeu_si512(band + m, _mm512_maskz_compress_epi32(in, k));
    below += __builtin_popcount(lt);
    m += __builtin_popcount(in);
  }
#endif
  for (; i < n; ++i) {
    const uint32_t k = keys[i];
    band[m] = k;
    below += k < lo;
    m += (k >= lo) & (k <= hi);
  }
  *band_n = m;
  return below;
}

// The magnitude key of a non-negative float (order_bits of its bits).
inline uint32_t magnitude_key(float f) { return order_bits(float_bits(f) & 0x7fffffffu); }

// The float whose magnitude key is k (bit 31 set).
inline float key_value(uint32_t k) {
  const uint32_t u = k & 0x7fffffffu;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

#if defined(__AVX512F__)
// The guided selection of one float32 row in two fused passes, for the usual Wanda call (a row
// group, no eligibility mask, pruning in place). The products p = |x| * scale (or |x|) are
// non-negative, so their float order is their key order and neither pass needs a keys buffer:
//   1. count the p below the band [lo, hi] = guess * (1 -+ eps), gather the bits of those
//      inside it, and look for NaN (returns kGuidedMiss / kGuidedNaN when it cannot finish);
//   2. (zero_row_float) keep p > K and zero the rest, writing mask and weights in one pass.
constexpr int kGuidedHit = 0, kGuidedMiss = 1, kGuidedNaN = 2;

inline __m512 products16(const float* x, const float* sc, int64_t c, __mmask16 m) {
  const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(m, x + c));
  return sc ? _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m, sc + c)) : a;
}


// Full vectors in the body and one masked vector for the tail: masked loads and stores in
// every iteration made the passes slower than the keys-buffer path on this EPYC.
int guided_row_float(const float* x, const float* sc, int64_t n, int64_t want, float lo, float hi,
                     uint32_t* band, float* K, int64_t* below, int64_t* equal, int64_t* band_size) {
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  int64_t under = 0, m = 0;
  __mmask16 nan = 0;
  auto step = [&](__m512 p, __mmask16 live) {
    nan |= _mm512_mask_cmp_ps_mask(live, p, p, _CMP_UNORD_Q);
    const __mmask16 lt = _mm512_mask_cmp_ps_mask(live, p, vlo, _CMP_LT_OQ);
    const __mmask16 in = _mm512_mask_cmp_ps_mask(live & static_cast<__mmask16>(~lt), p, vhi, _CMP_LE_OQ);
    _mm512_storeu_si512(band + m, _mm512_maskz_compress_epi32(in, _mm512_castps_si512(p)));
    under += __builtin_popcount(lt);
    m += __builtin_popcount(in);
  };
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + c));
    step(sc ? _mm512_mul_ps(a, _mm512_loadu_ps(sc + c)) : a, static_cast<__mmask16>(0xFFFF));
  }
  if (c < n) step(products16(x, sc, c, tail_mask(n - c)), tail_mask(n - c));
  *band_size = m;
  if (nan) return kGuidedNaN;
  if (!(under < want && want <= under + m)) return kGuidedMiss;
  int64_t less = 0;
  const uint32_t kb = kth_of_few(band, m, want - under, &less, equal, float_bits(lo), float_bits(hi));
  std::memcpy(K, &kb, sizeof(kb));
  *below = under + less;
  return kGuidedHit;
}

// Keeps p > K of one row and zeroes the rest. kOut: 0 nothing else, 1 the keep-mask into out,
// 2 the pruned originals into the undo slot (gathered in stage, then streamed to the slot in
// whole lines; kept elements are never zero, as p > K >= 0, so the zeros are the pruned ones).
template <bool kScaled, int kOut>
void zero_row_float_as(float* __restrict__ x, const float* sc, int64_t n, float K, bool* __restrict__ out,
                       float* __restrict__ stage, float* __restrict__ slot) {
  int64_t c = 0, m = 0;
  for (; c + 16 <= n; c += 16) {
    const __m512 v = _mm512_loadu_ps(x + c);
    const __m512 p = kScaled ? _mm512_mul_ps(_mm512_abs_ps(v), _mm512_loadu_ps(sc + c)) : _mm512_abs_ps(v);
    const __mmask16 kept = _mm512_cmp_ps_mask(p, _mm512_set1_ps(K), _CMP_GT_OQ);
    if (kOut == 1) _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c), _mm_maskz_mov_epi8(kept, _mm_set1_epi8(1)));
    if (kOut == 2) {
      const __mmask16 pruned = static_cast<__mmask16>(~kept);
      _mm512_storeu_ps(stage + m, _mm512_maskz_compress_ps(pruned, v));
      m += __builtin_popcount(pruned);
    }
    _mm512_storeu_ps(x + c, _mm512_maskz_mov_ps(kept, v));
  }
  for (; c < n; ++c) {
    const float p = kScaled ? std::fabs(x[c]) * sc[c] : std::fabs(x[c]);
    if (kOut == 1) out[c] = p > K;
    if (kOut == 2 && !(p > K)) stage[m++] = x[c];
    x[c] = p > K ? x[c] : 0.f;
  }
  if (kOut == 2)  // stage holds m + 15 floats or more, the slot round_up(m, 16)
    for (int64_t i = 0; i < m; i += 16) _mm512_stream_ps(slot + i, _mm512_loadu_ps(stage + i));
}

void zero_row_float(float* x, const float* sc, int64_t n, float K, bool* out, float* stage, float* slot) {
  if (sc) {
    if (out) zero_row_float_as<true, 1>(x, sc, n, K, out, stage, slot);
    else if (slot) zero_row_float_as<true, 2>(x, sc, n, K, out, stage, slot);
    else zero_row_float_as<true, 0>(x, sc, n, K, out, stage, slot);
  } else {
    if (out) zero_row_float_as<false, 1>(x, sc, n, K, out, stage, slot);
    else if (slot) zero_row_float_as<false, 2>(x, sc, n, K, out, stage, slot);
    else zero_row_float_as<false, 0>(x, sc, n, K, out, stage, slot);
  }
}
#endif

// The selection of every tile into mask (rows x cols bools). col_scale (or nullptr): keys of
// |x_ij| * col_scale[j] (float32 products) instead of x / |x|. zero: also set the pruned
// elements of values to zero in the mask pass (values must then be contiguous and writable);
// with zero, mp may be nullptr: no mask is written (a tile-sized scratch serves the tie path).
// Returns the first tile whose k is outside [0, eligible] (or -1) and sets *nan_seen; with
// zero, the caller has checked k before, and NaN before too unless it passes an undo log: then
// each tile logs what it zeroes, the tasks stop at the first NaN, and the tiles already pruned
// are restored before returning, so a rejected call leaves values as they were.
int64_t select_tiles(const at::Tensor& v, const bool* ep, const int64_t* kp, int64_t group_rows,
                     int64_t group_cols, bool magnitude, const float* col_scale, bool zero, bool* mp,
                     bool* nan_seen, UndoLog* undo = nullptr) {
  const int64_t cols = v.size(1), grid_cols = cols / group_cols;
  const int64_t groups = (v.size(0) / group_rows) * grid_cols, tile = group_rows * group_cols;
  std::atomic<int64_t> bad_k{std::numeric_limits<int64_t>::max()};
  std::atomic<bool> any_nan{false};
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(tile, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, v.scalar_type(), "select_smallest_grouped", [&] {
    scalar_t* x = const_cast<scalar_t*>(v.const_data_ptr<scalar_t>());
    at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
      std::vector<uint32_t> keys(tile), tmp(tile + 16);
      std::vector<uint8_t> scratch(mp ? 0 : tile);
      // Where the mask of row r of the tile at (r0, c0) goes.
      auto mask_row = [&](int64_t r0, int64_t c0, int64_t r) -> bool* {
        return mp ? mp + (r0 + r) * cols + c0 : reinterpret_cast<bool*>(scratch.data()) + r * group_cols;
      };
      const uint32_t sign_mask = (magnitude || col_scale) ? 0x7fffffffu : 0xffffffffu;
      // Guided selection (rows of one matrix, magnitude keys): neighbouring rows have nearly the
      // same threshold, so the previous row's threshold value times (1 -+ eps) brackets this
      // row's; one vectorised pass counts the keys below the bracket and gathers those inside,
      // and kth_of_few on them finds K. A miss falls back to the radix selection and
      // widens eps; a band much wider than needed narrows it.
      const bool guided = group_rows == 1 && !ep && sign_mask == 0x7fffffffu && tile >= 512;
      float guess = -1.f, eps = 0.0625f;
      for (int64_t g = g0; g < g1; ++g) {
        if (undo && any_nan.load(std::memory_order_relaxed)) break;  // to be undone: write no more
        const int64_t r0 = (g / grid_cols) * group_rows, c0 = (g % grid_cols) * group_cols;
        bool band_tried = false;
#if defined(__AVX512F__)
        // The usual Wanda call on float32 rows: two fused passes (guided_row_float), no keys.
        if constexpr (std::is_same_v<scalar_t, float>) {
          const int64_t want = kp[g];
          if (guided && zero && guess > 0.f && want > 0 && want < tile) {
            float* row = reinterpret_cast<float*>(x) + r0 * cols + c0;  // scalar_t is float here
            const float* sc = col_scale ? col_scale + c0 : nullptr;
            float K = 0.f;
            int64_t below = 0, equal = 0, band_n = 0;
            const int got = guided_row_float(row, sc, tile, want, guess * (1.f - eps), guess * (1.f + eps),
                                             tmp.data(), &K, &below, &equal, &band_n);
            if (got == kGuidedHit && want - below == equal) {  // no tie kept at K: every p <= K goes
              zero_row_float(row, sc, tile, K, mp ? mp + r0 * cols + c0 : nullptr,
                             reinterpret_cast<float*>(tmp.data()), undo ? undo->slot<float>(g) : nullptr);
              if (undo) undo->mark_written(g);
              guess = K;
              if (band_n > tile / 8 && eps > 1.f / 256) eps *= 0.5f;
              continue;
            }
            if (got == kGuidedMiss && eps < 0.5f) eps *= 2.f;
            band_tried = got == kGuidedMiss;  // the keys path below goes straight to radix
            // A miss, a NaN or a tie kept at K: the general path below, from the keys.
          }
        }
#endif
        int64_t n_eligible = 0;
        uint32_t nan = 0;
        for (int64_t r = 0; r < group_rows; ++r) {
          const int64_t base = (r0 + r) * cols + c0;
          uint32_t* kr = keys.data() + r * group_cols;
          if (col_scale) {
            const float* sc = col_scale + c0;
            for (int64_t c = 0; c < group_cols; ++c) {
              const uint32_t u = float_bits(std::fabs(static_cast<float>(x[base + c])) * sc[c]);
              nan |= static_cast<uint32_t>(is_nan_bits(u));
              kr[c] = order_bits(u & sign_mask);
            }
          } else {
            for (int64_t c = 0; c < group_cols; ++c) {
              const uint32_t u = float_bits(static_cast<float>(x[base + c]));
              nan |= static_cast<uint32_t>(is_nan_bits(u));
              kr[c] = order_bits(u & sign_mask);
            }
          }
          if (ep) {
            for (int64_t c = 0; c < group_cols; ++c) {
              const bool e = ep[base + c];
              n_eligible += e;
              kr[c] = e ? kr[c] : kNotEligible;
            }
          }
        }
        if (!ep) n_eligible = tile;
        const int64_t want = kp[g];
        if (want < 0 || want > n_eligible) {
          int64_t cur = bad_k.load();
          while (g < cur && !bad_k.compare_exchange_weak(cur, g)) {}
          continue;
        }
        if (nan) {
          any_nan = true;
          if (undo) break;
          continue;
        }
        // Threshold: prune every key < K and the first `ties` keys == K (tile order).
        uint32_t K = 0;
        int64_t ties = 0, equal = 0;
        if (want > 0) {
          int64_t below = -1;
          if (guided && !band_tried && guess >= 0.f && want < tile) {
            const uint32_t lo = magnitude_key(guess * (1.f - eps)), hi = magnitude_key(guess * (1.f + eps));
            int64_t band_n = 0;
            const int64_t under = count_and_gather(keys.data(), tile, lo, hi, tmp.data(), &band_n);
            if (under < want && want <= under + band_n) {
              int64_t less = 0;
              K = kth_of_few(tmp.data(), band_n, want - under, &less, &equal, lo, hi);
              below = under + less;
              if (band_n > tile / 8 && eps > 1.f / 256) eps *= 0.5f;
            } else if (eps < 0.5f) {
              eps *= 2.f;
            }
          }
          if (below < 0) K = kth_key(keys.data(), tile, want, tmp, &below, &equal, sign_mask == 0x7fffffffu);
          if (guided) guess = key_value(K);
          ties = want - below;
        }
        // Every key == K goes (the usual case: no tie at the threshold): one compare, no scan.
        const bool all_ties = want > 0 && ties == equal;
        scalar_t* logged = undo ? undo->slot<scalar_t>(g) : nullptr;  // this tile's undo slot
        if (all_ties && zero && !ep) {  // the usual pruning call: mask and zeros in one pass
          for (int64_t r = 0; r < group_rows; ++r) {
            const int64_t base = (r0 + r) * cols + c0;
            bool* __restrict__ out = mask_row(r0, c0, r);
            scalar_t* __restrict__ xr = x + base;
            const uint32_t* __restrict__ kr = keys.data() + r * group_cols;
            const scalar_t zero_value(0);
            if (undo) logged = log_zeroed(logged, xr, group_cols, [&](int64_t c) { return kr[c] > K; });
            for (int64_t c = 0; c < group_cols; ++c) {
              const bool kept = kr[c] > K;
              out[c] = kept;
              xr[c] = kept ? xr[c] : zero_value;
            }
          }
          if (undo) undo->mark_written(g);
          continue;
        }
        for (int64_t r = 0; r < group_rows; ++r) {
          bool* out = mask_row(r0, c0, r);
          const uint32_t* kr = keys.data() + r * group_cols;
          // Branch-free for the keys off the threshold; the ties (== K) in tile order after.
          if (all_ties) {
            for (int64_t c = 0; c < group_cols; ++c) out[c] = kr[c] > K && kr[c] != kNotEligible;
            continue;
          }
          for (int64_t c = 0; c < group_cols; ++c) out[c] = kr[c] >= K && kr[c] != kNotEligible;
          if (want == 0) continue;
          for (int64_t c = 0; c < group_cols && ties > 0; ++c) {
            if (kr[c] == K) {
              out[c] = false;
              --ties;
            }
          }
        }
        if (zero) {  // pruned and not-eligible elements, as the reference's masked_fill_
          for (int64_t r = 0; r < group_rows; ++r) {
            const int64_t base = (r0 + r) * cols + c0;
            const uint8_t* __restrict__ out = reinterpret_cast<const uint8_t*>(mask_row(r0, c0, r));
            scalar_t* __restrict__ xr = x + base;
            const scalar_t zero_value(0);
            if (undo) logged = log_zeroed(logged, xr, group_cols, [&](int64_t c) { return out[c] != 0; });
            for (int64_t c = 0; c < group_cols; ++c) {
              const scalar_t v = xr[c];
              xr[c] = out[c] ? v : zero_value;  // restrict: the mask is not the weights, so it vectorises
            }
          }
          if (undo) undo->mark_written(g);
        }
      }
#if defined(__AVX512F__)
      if (undo) _mm_sfence();  // the row path's streaming stores, before the restore reads them
#endif
    });
    if (undo && any_nan.load()) {  // put back every tile already pruned: its zeros, in tile order
      for (int64_t g = 0; g < groups; ++g) {
        if (!undo->written(g)) continue;
        const int64_t r0 = (g / grid_cols) * group_rows, c0 = (g % grid_cols) * group_cols;
        const scalar_t* logged = undo->slot<scalar_t>(g);
        for (int64_t r = 0; r < group_rows; ++r) {
          scalar_t* xr = x + (r0 + r) * cols + c0;
          for (int64_t c = 0; c < group_cols; ++c)
            if (static_cast<float>(xr[c]) == 0.f) xr[c] = *logged++;
        }
      }
    }
  });
  *nan_seen = any_nan.load();
  const int64_t gk = bad_k.load();
  return gk == std::numeric_limits<int64_t>::max() ? -1 : gk;
}

int64_t tile_eligible(const bool* ep, int64_t g, int64_t cols, int64_t group_rows, int64_t group_cols) {
  const int64_t grid_cols = cols / group_cols;
  const int64_t r0 = (g / grid_cols) * group_rows, c0 = (g % grid_cols) * group_cols;
  int64_t n = ep ? 0 : group_rows * group_cols;
  for (int64_t r = 0; ep && r < group_rows; ++r)
    for (int64_t c = 0; c < group_cols; ++c) n += ep[(r0 + r) * cols + c0 + c];
  return n;
}

at::Tensor select_smallest_grouped_cpu(const at::Tensor& values, const std::optional<at::Tensor>& keep,
                                       int64_t group_rows, int64_t group_cols, const at::Tensor& k,
                                       bool magnitude) {
  check_grouped_args(values, keep, group_rows, group_cols, k);
  const at::Tensor v = values.contiguous();
  const at::Tensor eligible = keep.has_value() ? keep->contiguous() : at::Tensor();
  const at::Tensor kc = k.contiguous();
  at::Tensor mask = at::empty(v.sizes(), v.options().dtype(at::kBool));
  if (v.numel() == 0) return mask;  // no tiles either (a zero dim leaves a zero grid dim)
  const bool* ep = eligible.defined() ? eligible.const_data_ptr<bool>() : nullptr;
  bool nan = false;
  const int64_t bad = select_tiles(v, ep, kc.const_data_ptr<int64_t>(), group_rows, group_cols,
                                   magnitude, nullptr, false, mask.mutable_data_ptr<bool>(), &nan);
  // Errors as the reference orders them: the first tile with a bad k, else NaN anywhere.
  if (bad >= 0)
    check_grouped_k(bad, tile_eligible(ep, bad, v.size(1), group_rows, group_cols),
                    kc.const_data_ptr<int64_t>()[bad]);
  check_grouped_no_nan(nan);
  return mask;
}

// zero_smallest_grouped: the selection by |values| (times col_scale per column) that writes the
// mask (if given) and zeroes the pruned values in its mask pass. k is checked first (per tile,
// from the eligible counts), NaN as below, so a rejected call leaves values and mask as they were.
void zero_smallest_grouped_cpu(const at::Tensor& values, const std::optional<at::Tensor>& mask,
                               const std::optional<at::Tensor>& keep, int64_t group_rows,
                               int64_t group_cols, const at::Tensor& k,
                               const std::optional<at::Tensor>& col_scale) {
  check_zero_grouped_args(values, mask, keep, group_rows, group_cols, k, col_scale);
  if (values.numel() == 0) return;
  const at::Tensor kc = k.contiguous();
  const at::Tensor eligible = keep.has_value() ? keep->contiguous() : at::Tensor();
  const bool* ep = eligible.defined() ? eligible.const_data_ptr<bool>() : nullptr;
  const int64_t* kp = kc.const_data_ptr<int64_t>();
  const int64_t tile = group_rows * group_cols;
  for (int64_t g = 0; g < kc.numel(); ++g)
    check_grouped_k(g, ep ? tile_eligible(ep, g, values.size(1), group_rows, group_cols) : tile, kp[g]);
  const at::Tensor scale = col_scale.has_value() ? col_scale->contiguous() : at::Tensor();
  const bool direct = values.is_contiguous() && (!mask.has_value() || mask->is_contiguous());
  // NaN, without writing the caller's tensors first: a copy (strided arguments) is checked
  // before it is copied back; in place without a mask, the undo log restores the tiles pruned
  // before the NaN (for tiles of 1 KiB or more: each has a line-padded slot); else (into a
  // caller's mask, or small tiles) one NaN pass runs first.
  std::optional<UndoLog> undo;
  if (direct && !mask.has_value() && tile * static_cast<int64_t>(values.element_size()) >= 1024)
    undo.emplace(kc.numel(), tile, values.element_size());
  else if (direct)
    check_grouped_no_nan(has_nan(values));
  at::Tensor v = direct ? values : values.clone(at::MemoryFormat::Contiguous);
  at::Tensor m;
  if (mask.has_value()) m = direct ? *mask : at::empty(values.sizes(), mask->options());
  bool nan = false;
  select_tiles(v, ep, kp, group_rows, group_cols, true, scale.defined() ? scale.const_data_ptr<float>() : nullptr,
               true, m.defined() ? m.mutable_data_ptr<bool>() : nullptr, &nan, undo ? &*undo : nullptr);
  check_grouped_no_nan(nan);
  if (!direct) {
    values.copy_(v);
    if (m.defined()) mask->copy_(m);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CPU, m) {
  m.impl("select_smallest_grouped", &select_smallest_grouped_cpu);
  m.impl("zero_smallest_grouped", &zero_smallest_grouped_cpu);
}

}  // namespace sparsedistill
