// C++ CPU kernel of sparsedistill::select_smallest (schema in sparsedistill/_ops.py): exact
// selection of the k smallest keys across a list of tensors, without sorting or copying them.
//
// Every element maps to a 32-bit key whose unsigned order is the float order of |x| (or x).
// Pass 1 histograms the high 16 bits of the keys of the eligible elements (one histogram per
// thread), which finds the bucket holding the k-th smallest key; pass 2 histograms the low 16
// bits inside that bucket, which gives the k-th smallest key K exactly. The mask pass prunes
// every key < K and, of the keys == K, the first ones by position (tensor index, then flat
// index); when not all of those are pruned, one more counting pass gives each chunk its rank.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "prune_checks.h"

namespace sparsedistill {
namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per work unit
constexpr int kBins = 1 << 16;
constexpr int64_t kBlock = 1024;     // keys computed at a time (4 KiB, stays in L1)

// Order-preserving 32-bit key of a float (of |x| when magnitude); -0 and +0 are equal.
// The key of float bits u (sign already cleared for magnitudes). Branch-free, so the passes
// vectorise: negatives flip every bit, the rest set the sign bit; -0 becomes +0.
inline uint32_t order_bits(uint32_t u) {
  u = (u & 0x7fffffffu) == 0 ? 0u : u;
  return u ^ ((0u - (u >> 31)) | 0x80000000u);
}

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}


// One contiguous range of one tensor.
struct Chunk {
  int64_t tensor, begin, end;
};

class Selection {
 public:
  Selection(std::vector<at::Tensor> values, std::vector<at::Tensor> keep, bool magnitude,
            std::vector<at::Tensor> targets = {})
      : values_(std::move(values)), keep_(std::move(keep)), targets_(std::move(targets)),
        magnitude_(magnitude) {
    for (int64_t i = 0; i < static_cast<int64_t>(values_.size()); ++i)
      for (int64_t b = 0; b < values_[i].numel(); b += kChunk)
        chunks_.push_back({i, b, std::min(values_[i].numel(), b + kChunk)});
  }

  // Calls fn(keys, eligible, n, offset) for blocks of chunk c in order: keys[0, n) are the
  // order keys of elements [offset, offset + n) of the tensor, eligible their keep flags (or
  // nullptr: all eligible). Keys are computed a block at a time in a branch-free loop that the
  // compiler vectorises. Sets *saw_nan if a NaN was read.
  template <typename Fn>
  void for_each_block(const Chunk& c, Fn&& fn, bool* saw_nan = nullptr) const {
    const at::Tensor& v = values_[c.tensor];
    const bool* keep = keep_.empty() ? nullptr : keep_[c.tensor].const_data_ptr<bool>();
    const bool magnitude = magnitude_;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, v.scalar_type(), "select_smallest", [&] {
      const scalar_t* x = v.const_data_ptr<scalar_t>();
      alignas(64) uint32_t keys[kBlock];
      for (int64_t b = c.begin; b < c.end; b += kBlock) {
        const int64_t n = std::min(kBlock, c.end - b);
        const uint32_t sign_mask = magnitude ? 0x7fffffffu : 0xffffffffu;
        uint32_t nan = 0;  // integer OR, which vectorises (a bool |= of float compares did not)
        for (int64_t i = 0; i < n; ++i) {
          const uint32_t u = float_bits(static_cast<float>(x[b + i]));
          nan |= static_cast<uint32_t>((u & 0x7fffffffu) > 0x7f800000u);
          keys[i] = order_bits(u & sign_mask);
        }
        if (nan && saw_nan) *saw_nan = true;
        fn(keys, keep ? keep + b : nullptr, n, b);
      }
    });
  }

  // Histogram of 16 key bits over the eligible elements whose high bits equal `prefix` (pass 2)
  // or of all eligible elements (pass 1, prefix < 0). Returns the merged histogram.
  // Each task counts into kCopies interleaved uint32 histograms: runs of equal keys (common in
  // weights) would otherwise serialise on one counter's load-increment-store.
  std::vector<int64_t> histogram(int shift, int64_t prefix, bool check_nan) const {
    constexpr int kCopies = 4;
    const int tasks = std::max(1, std::min<int>(at::get_num_threads(), chunks_.size()));
    std::vector<std::vector<int64_t>> merged(tasks);
    std::vector<int64_t> nan_at(tasks, -1);
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<uint32_t> h(kCopies * kBins);
      for (int64_t t = t0; t < t1; ++t) {
        std::fill(h.begin(), h.end(), 0u);
        auto& sums = merged[t];
        sums.assign(kBins, 0);
        int64_t pending = 0;  // counts since the last flush: keep every uint32 below 2^32
        auto flush = [&] {
          for (int copy = 0; copy < kCopies; ++copy)
            for (int b = 0; b < kBins; ++b) sums[b] += h[copy * kBins + b];
          std::fill(h.begin(), h.end(), 0u);
          pending = 0;
        };
        for (size_t c = t; c < chunks_.size(); c += tasks) {
          bool nan = false;
          for_each_block(chunks_[c], [&](const uint32_t* keys, const bool* eligible, int64_t n, int64_t) {
            for (int64_t i = 0; i < n; ++i) {
              if ((eligible && !eligible[i]) || (prefix >= 0 && (keys[i] >> 16) != prefix)) continue;
              ++h[(i & (kCopies - 1)) * kBins + ((keys[i] >> shift) & 0xffffu)];
            }
          }, check_nan ? &nan : nullptr);
          if (nan && nan_at[t] < 0) nan_at[t] = chunks_[c].tensor;  // chunks ascend: the first
          if ((pending += kChunk) > (int64_t{1} << 31)) flush();
        }
        flush();
      }
    });
    // Name the first tensor holding NaN, as the reference and the CUDA kernel do.
    int64_t first_nan = -1;
    for (int64_t t = 0; t < tasks; ++t)
      if (nan_at[t] >= 0 && (first_nan < 0 || nan_at[t] < first_nan)) first_nan = nan_at[t];
    check_select_no_nan(first_nan >= 0, first_nan);
    std::vector<int64_t> total(kBins, 0);
    for (const auto& sums : merged)
      for (int b = 0; b < kBins; ++b) total[b] += sums[b];
    return total;
  }

  // The bin holding the r-th smallest (1-based) counted element, and the count below it.
  static std::pair<int64_t, int64_t> find_bin(const std::vector<int64_t>& hist, int64_t r) {
    int64_t below = 0;
    for (int64_t b = 0; b < kBins; ++b) {
      if (below + hist[b] >= r) return {b, below};
      below += hist[b];
    }
    return {kBins - 1, below};  // unreachable for r <= total
  }

  // The keep-masks, written into `out` (contiguous bool tensors of the values' shapes) or into
  // fresh tensors when `out` is empty.
  std::vector<at::Tensor> masks(int64_t k, std::vector<at::Tensor> out = {}) const {
    if (out.empty())
      for (const auto& v : values_) out.push_back(at::empty(v.sizes(), v.options().dtype(at::kBool)));
    const auto high = histogram(16, -1, /*check_nan=*/true);
    if (k == 0) {  // key >= 0 always: every eligible element is kept
      write_masks(out, 0, 0, nullptr);
      return out;
    }
    const auto [hb, below_high] = find_bin(high, k);
    const auto low = histogram(0, hb, /*check_nan=*/false);
    const auto [lb, below_low] = find_bin(low, k - below_high);
    const uint32_t threshold = static_cast<uint32_t>(hb << 16 | lb);
    const int64_t need = k - below_high - below_low;  // ties (key == threshold) to prune
    if (need == low[lb]) {  // all ties go: no ranking needed
      write_masks(out, threshold, std::numeric_limits<int64_t>::max(), nullptr);
      return out;
    }
    // Some ties survive: rank them by position. Count the ties of each chunk, prefix-sum.
    std::vector<int64_t> ties_before(chunks_.size() + 1, 0);
    at::parallel_for(0, chunks_.size(), 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        int64_t ties = 0;
        for_each_block(chunks_[c], [&](const uint32_t* keys, const bool* eligible, int64_t n, int64_t) {
          if (eligible == nullptr) {
            for (int64_t i = 0; i < n; ++i) ties += keys[i] == threshold;
          } else {
            for (int64_t i = 0; i < n; ++i) ties += eligible[i] & (keys[i] == threshold);
          }
        });
        ties_before[c + 1] = ties;
      }
    });
    for (size_t c = 0; c < chunks_.size(); ++c) ties_before[c + 1] += ties_before[c];
    write_masks(out, threshold, need, &ties_before);
    return out;
  }

 private:
  // keep = eligible && (key > threshold || (key == threshold && rank >= need)), where rank is
  // the position of a tie among all eligible ties (ties_before[c] gives those before chunk c).
  void write_masks(std::vector<at::Tensor>& out, uint32_t threshold, int64_t need,
                   const std::vector<int64_t>* ties_before) const {
    at::parallel_for(0, chunks_.size(), 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        bool* m = out[chunks_[c].tensor].mutable_data_ptr<bool>();
        int64_t rank = ties_before ? (*ties_before)[c] : 0;
        for_each_block(chunks_[c], [&](const uint32_t* keys, const bool* eligible, int64_t n, int64_t off) {
          if (ties_before == nullptr && eligible == nullptr) {  // plain, vectorised comparisons
            for (int64_t i = 0; i < n; ++i) m[off + i] = keys[i] > threshold;
            return;
          }
          if (ties_before == nullptr) {
            for (int64_t i = 0; i < n; ++i) m[off + i] = eligible[i] & (keys[i] > threshold);
            return;
          }
          for (int64_t i = 0; i < n; ++i) {
            const bool ok = !eligible || eligible[i];
            const bool tie = ok && keys[i] == threshold;
            m[off + i] = ok && (keys[i] > threshold || (tie && rank >= need));
            rank += tie;
          }
        });
        // The chunk was just read, so zeroing it here costs no extra pass over memory.
        if (!targets_.empty() && targets_[chunks_[c].tensor].defined())
          zero_pruned_in(targets_[chunks_[c].tensor], m, chunks_[c].begin, chunks_[c].end);
      }
    });
  }

  // Zeroes, in the same pass, the elements of targets[i] whose mask is false (a contiguous
  // tensor of values[i]'s shape; undefined: leave that tensor alone).
  void zero_pruned_in(const at::Tensor& target, bool* m, int64_t begin, int64_t end) const {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, target.scalar_type(), "zero_smallest", [&] {
      scalar_t* x = target.mutable_data_ptr<scalar_t>();
      for (int64_t i = begin; i < end; ++i) x[i] = m[i] ? x[i] : scalar_t(0);  // branch-free
    });
  }

  std::vector<at::Tensor> values_, keep_;
  std::vector<at::Tensor> targets_;  // zero_smallest: tensors zeroed where pruned
  std::vector<Chunk> chunks_;
  bool magnitude_;
};

// The contiguous values and keep masks of a checked call, and the number of eligible elements.
int64_t gather_inputs(at::TensorList values, const std::optional<at::TensorList>& keep,
                      std::vector<at::Tensor>& vs, std::vector<at::Tensor>& ks) {
  int64_t eligible = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    vs.push_back(values[i].contiguous());
    if (keep.has_value()) {
      ks.push_back((*keep)[i].contiguous());
      eligible += ks.back().sum().item<int64_t>();
    } else {
      eligible += values[i].numel();
    }
  }
  return eligible;
}

std::vector<at::Tensor> select_smallest_cpu(at::TensorList values,
                                            const std::optional<at::TensorList>& keep, int64_t k,
                                            bool magnitude) {
  check_select_args(values, keep, at::Device(at::kCPU));
  std::vector<at::Tensor> vs, ks;
  check_select_k(k, gather_inputs(values, keep, vs, ks));
  return Selection(std::move(vs), std::move(ks), magnitude).masks(k);
}

// zero_smallest: select_smallest on |tensors| (or on scores), writing the keep-masks into
// masks and zeroing the pruned elements of tensors (contiguous ones in the mask pass itself).
void zero_smallest_cpu(at::TensorList tensors, at::TensorList masks,
                       const std::optional<at::TensorList>& scores,
                       const std::optional<at::TensorList>& keep, int64_t k) {
  check_zero_smallest_args(tensors, masks, scores);
  const at::TensorList values = scores.has_value() ? *scores : tensors;
  check_select_args(values, keep, at::Device(at::kCPU));
  std::vector<at::Tensor> vs, ks, targets, outs;
  check_select_k(k, gather_inputs(values, keep, vs, ks));
  for (const auto& t : tensors) targets.push_back(t.is_contiguous() ? t : at::Tensor());
  for (const auto& m : masks) outs.push_back(m.is_contiguous() ? m : at::empty_like(m, at::MemoryFormat::Contiguous));
  const auto written = Selection(std::move(vs), std::move(ks), !scores.has_value(), targets).masks(k, outs);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!masks[i].is_contiguous()) masks[i].copy_(written[i]);
    if (!targets[i].defined()) tensors[i].masked_fill_(written[i].logical_not(), 0);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CPU, m) {
  m.impl("select_smallest", &select_smallest_cpu);
  m.impl("zero_smallest", &zero_smallest_cpu);
}

}  // namespace sparsedistill
