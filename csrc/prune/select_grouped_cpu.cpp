// C++ CPU kernel of sparsedistill::select_smallest_grouped (schema in sparsedistill/prune/ops.py):
// exact k-smallest selection inside every group_rows x group_cols tile of a matrix, e.g. per
// output row for Wanda. Tiles run in parallel, one task each:
//   1. the tile's order keys (order_keys.h) into a thread-local buffer, row-major in the tile;
//      not-eligible elements get the key 0xffffffff, above every real key (NaN is rejected);
//   2. the k-th smallest key K by radix selection: an 11-bit histogram of the top bits, then of
//      the next 11 and the last 10 bits among the keys that share the bits found so far (the
//      candidates are copied out after the first pass, so later passes read few keys);
//   3. the mask pass in tile order: keys < K are pruned, and of the keys == K the first
//      (k - #below) in row-major tile order: the tie rule of every pruning function.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "prune/checks.h"
#include "prune/order_keys.h"

namespace sparsedistill {
namespace {

constexpr uint32_t kNotEligible = 0xffffffffu;

// The rank-th smallest (1-based) of keys[0, n), rank in [1, n]; *below = how many keys are
// strictly smaller. tmp: scratch of at least n keys.
uint32_t kth_key(const uint32_t* keys, int64_t n, int64_t rank, std::vector<uint32_t>& tmp,
                 int64_t* below) {
  static constexpr int kShift[3] = {21, 10, 0}, kBits[3] = {11, 11, 10};
  int64_t hist[1 << 11];
  uint32_t prefix = 0;
  int64_t smaller = 0, count = n;
  const uint32_t* src = keys;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = kShift[pass], bins = 1 << kBits[pass];
    const uint32_t digit_mask = static_cast<uint32_t>(bins - 1);
    std::fill(hist, hist + bins, 0);
    for (int64_t i = 0; i < count; ++i) ++hist[(src[i] >> shift) & digit_mask];
    int b = 0;
    for (; b < bins; ++b) {
      if (rank <= hist[b]) break;
      rank -= hist[b];
      smaller += hist[b];
    }
    prefix |= static_cast<uint32_t>(b) << shift;
    if (pass == 2) break;
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
  }
  *below = smaller;
  return prefix;
}

at::Tensor select_smallest_grouped_cpu(const at::Tensor& values, const std::optional<at::Tensor>& keep,
                                       int64_t group_rows, int64_t group_cols, const at::Tensor& k,
                                       bool magnitude) {
  check_grouped_args(values, keep, group_rows, group_cols, k);
  const at::Tensor v = values.contiguous();
  const at::Tensor eligible = keep.has_value() ? keep->contiguous() : at::Tensor();
  const at::Tensor kc = k.contiguous();
  const int64_t cols = v.size(1);
  const int64_t grid_cols = cols / group_cols, groups = kc.numel();
  const int64_t tile = group_rows * group_cols;
  at::Tensor mask = at::empty(v.sizes(), v.options().dtype(at::kBool));
  if (v.numel() == 0) return mask;  // no tiles either (a zero dim leaves a zero grid dim)
  const int64_t* kp = kc.const_data_ptr<int64_t>();
  const bool* ep = eligible.defined() ? eligible.const_data_ptr<bool>() : nullptr;
  bool* mp = mask.mutable_data_ptr<bool>();
  // The first failing group (lowest index) is reported, whichever thread found it.
  std::atomic<int64_t> bad_k{std::numeric_limits<int64_t>::max()}, bad_nan{std::numeric_limits<int64_t>::max()};
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(tile, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, v.scalar_type(), "select_smallest_grouped", [&] {
    const scalar_t* x = v.const_data_ptr<scalar_t>();
    at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
      std::vector<uint32_t> keys(tile), tmp(tile);
      const uint32_t sign_mask = magnitude ? 0x7fffffffu : 0xffffffffu;
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t r0 = (g / grid_cols) * group_rows, c0 = (g % grid_cols) * group_cols;
        int64_t n_eligible = 0;
        uint32_t nan = 0;
        for (int64_t r = 0; r < group_rows; ++r) {
          const int64_t base = (r0 + r) * cols + c0;
          uint32_t* kr = keys.data() + r * group_cols;
          for (int64_t c = 0; c < group_cols; ++c) {
            const uint32_t u = float_bits(static_cast<float>(x[base + c]));
            nan |= static_cast<uint32_t>(is_nan_bits(u));
            kr[c] = order_bits(u & sign_mask);
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
          int64_t cur = bad_nan.load();
          while (g < cur && !bad_nan.compare_exchange_weak(cur, g)) {}
          continue;
        }
        // Threshold: prune every key < K and the first `ties` keys == K (tile order).
        uint32_t K = 0;
        int64_t ties = 0;
        if (want > 0) {
          int64_t below = 0;
          K = kth_key(keys.data(), tile, want, tmp, &below);
          ties = want - below;
        }
        for (int64_t r = 0; r < group_rows; ++r) {
          bool* out = mp + (r0 + r) * cols + c0;
          const uint32_t* kr = keys.data() + r * group_cols;
          if (want == 0) {
            for (int64_t c = 0; c < group_cols; ++c) out[c] = kr[c] != kNotEligible;
            continue;
          }
          for (int64_t c = 0; c < group_cols; ++c) {
            const uint32_t key = kr[c];
            bool pruned = key < K;
            if (key == K && ties > 0) {
              pruned = true;
              --ties;
            }
            out[c] = !pruned && key != kNotEligible;
          }
        }
      }
    });
  });
  // Errors as the reference orders them: the first group with a bad k, else NaN anywhere.
  const int64_t none = std::numeric_limits<int64_t>::max(), gk = bad_k.load();
  if (gk != none) {
    const int64_t r0 = (gk / grid_cols) * group_rows, c0 = (gk % grid_cols) * group_cols;
    int64_t n_eligible = ep ? 0 : tile;
    for (int64_t r = 0; ep && r < group_rows; ++r)
      for (int64_t c = 0; c < group_cols; ++c) n_eligible += ep[(r0 + r) * cols + c0 + c];
    check_grouped_k(0, gk, n_eligible, kp[gk]);
  }
  check_grouped_no_nan(bad_nan.load() != none);
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CPU, m) {
  m.impl("select_smallest_grouped", &select_smallest_grouped_cpu);
}

}  // namespace sparsedistill
