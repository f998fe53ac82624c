// C++ CPU kernel of sparsedistill::nm_mask (schema in sparsedistill/prune/ops.py): in every group of
// m consecutive elements along the last dim, keep the n largest keys (|x| or x).
//
// The order is the reference's (a stable ascending sort): key ascending, NaN above every number
// and NaNs equal, ties by index. An element is pruned iff fewer than m - n elements precede it
// in that order. Keys are compared in the value's precision (float64 stays float64; the 16-bit
// types widen exactly to float), so every backend ranks identically.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "prune/checks.h"

namespace sparsedistill {
namespace {

// a comes before b (ties aside): smaller, or a number where b is NaN.
template <typename T>
inline bool key_less(T a, T b) {
  return a < b || (std::isnan(b) && !std::isnan(a));
}

constexpr int64_t kSmallGroup = 32;  // up to here count ranks (O(m^2)); above, sort

template <typename scalar_t>
void nm_mask_groups(const scalar_t* x, bool* keep, int64_t g0, int64_t g1, int64_t m, int64_t prune,
                    bool magnitude) {
  using acc_t = at::opmath_type<scalar_t>;  // float for the 16-bit types, double for float64
  std::vector<acc_t> key(m);
  std::vector<int64_t> order;
  for (int64_t g = g0; g < g1; ++g) {
    const scalar_t* xg = x + g * m;
    bool* kg = keep + g * m;
    for (int64_t i = 0; i < m; ++i) {
      const acc_t v = static_cast<acc_t>(xg[i]);
      key[i] = magnitude ? std::abs(v) : v;
    }
    if (m <= kSmallGroup) {
      for (int64_t i = 0; i < m; ++i) {
        int64_t rank = 0;  // elements before i: smaller keys, and equal keys at lower indices
        for (int64_t j = 0; j < m; ++j)
          rank += key_less(key[j], key[i]) || (j < i && !key_less(key[i], key[j]));
        kg[i] = rank >= prune;
      }
    } else {
      order.resize(m);
      std::iota(order.begin(), order.end(), int64_t{0});
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return key_less(key[a], key[b]); });
      for (int64_t r = 0; r < m; ++r) kg[order[r]] = r >= prune;
    }
  }
}

at::Tensor nm_mask_cpu(const at::Tensor& values, int64_t n, int64_t m, bool magnitude) {
  check_nm_mask_args(values, n, m);
  SD_CHECK_ARG(values.device().is_cpu(), "values must be on the CPU, got ", device_str(values));
  const at::Tensor x = values.contiguous();
  at::Tensor keep = at::empty(x.sizes(), x.options().dtype(at::kBool));
  const int64_t groups = x.numel() / m;
  if (groups == 0) return keep;
  bool* out = keep.mutable_data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "nm_mask", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / m);
    at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
      nm_mask_groups(in, out, g0, g1, m, m - n, magnitude);
    });
  });
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CPU, m) { m.impl("nm_mask", &nm_mask_cpu); }

}  // namespace sparsedistill
