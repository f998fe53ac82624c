// C++ CPU kernel of sparsedistill::select_smallest (schema in sparsedistill/prune/ops.py): exact
// selection of the k smallest keys across a list of tensors, without sorting or copying them.
//
// Every element maps to a 32-bit key whose unsigned order is the float order of |x| (or x).
// Pass 1 histograms the high 16 bits of the keys of the eligible elements (one histogram per
// thread), which finds the bucket holding the k-th smallest key; pass 2 histograms the low 16
// bits inside that bucket, which gives the k-th smallest key K exactly. The mask pass prunes
// every key < K (zeroing it in place for zero_smallest) and, when every key == K goes too, those
// as well. Otherwise the ties are ranked by position (tensor index, then flat index): the mask
// pass counts them per chunk, and only the chunks holding ties are read again to decide them.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "prune/checks.h"
#include "prune/order_keys.h"

namespace sparsedistill {
namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per work unit
constexpr int kBins = 1 << 16;
constexpr int64_t kBlock = 1024;     // keys computed at a time (4 KiB, stays in L1)
constexpr int64_t kPrefetchBlocks = 4;  // how far ahead the passes prefetch, in blocks



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
        // Prefetch the block after next: the passes alternate a load loop with a compute loop
        // (counting, masking), and the hardware prefetcher alone leaves the loads stalled.
        const int64_t ahead = std::min(c.end, b + (1 + kPrefetchBlocks) * kBlock);
        for (const char* p = reinterpret_cast<const char*>(x + std::min(c.end, b + kPrefetchBlocks * kBlock));
             p < reinterpret_cast<const char*>(x + ahead); p += 64)
          __builtin_prefetch(p);
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
  // Each task counts into kCopies uint32 counters per bin (one cache line holds all copies of a
  // bin): runs of equal keys (common in weights) would otherwise serialise on one counter's
  // load-increment-store.
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
          for (int b = 0; b < kBins; ++b)
            for (int copy = 0; copy < kCopies; ++copy) sums[b] += h[b * kCopies + copy];
          std::fill(h.begin(), h.end(), 0u);
          pending = 0;
        };
        uint32_t* counts = h.data();
        for (size_t c = t; c < chunks_.size(); c += tasks) {
          bool nan = false;
          for_each_block(chunks_[c], [&](const uint32_t* keys, const bool* eligible, int64_t n, int64_t) {
            const int sh = shift;  // a local: the counter stores could alias the captured one
            if (prefix < 0) {
              if (eligible == nullptr) {  // the hot loop: unrolled over the copies
                static_assert(kCopies == 4, "the unrolled loop below counts into 4 copies");
                int64_t i = 0;
                for (; i + 4 <= n; i += 4) {
                  ++counts[(keys[i] >> sh & 0xffffu) * kCopies];
                  ++counts[(keys[i + 1] >> sh & 0xffffu) * kCopies + 1];
                  ++counts[(keys[i + 2] >> sh & 0xffffu) * kCopies + 2];
                  ++counts[(keys[i + 3] >> sh & 0xffffu) * kCopies + 3];
                }
                for (; i < n; ++i) ++counts[(keys[i] >> sh & 0xffffu) * kCopies];
              } else {
                for (int64_t i = 0; i < n; ++i)
                  if (eligible[i]) ++counts[(keys[i] >> sh & 0xffffu) * kCopies + (i & (kCopies - 1))];
              }
              return;
            }
            // Pass 2: few keys match. Test 16 at a time (vectorised), count only in groups with a hit.
            const uint32_t p = static_cast<uint32_t>(prefix);
            for (int64_t g = 0; g < n; g += 16) {
              const int64_t e = std::min(n, g + 16);
              uint32_t hit = 0;
              for (int64_t i = g; i < e; ++i) hit |= static_cast<uint32_t>((keys[i] >> 16) == p);
              if (hit == 0) continue;
              for (int64_t i = g; i < e; ++i)
                if ((keys[i] >> 16) == p && (eligible == nullptr || eligible[i]))
                  ++counts[(keys[i] >> sh & 0xffffu) * kCopies + (i & (kCopies - 1))];
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
    if (k == 0) {  // keys >= 0 always: keeping every key >= 0 keeps every eligible element
      write_masks(out, 0, Ties::kKeepAll);
      return out;
    }
    const auto [hb, below_high] = find_bin(high, k);
    const auto low = histogram(0, hb, /*check_nan=*/false);
    const auto [lb, below_low] = find_bin(low, k - below_high);
    const uint32_t threshold = static_cast<uint32_t>(hb << 16 | lb);
    const int64_t need = k - below_high - below_low;  // ties (key == threshold) to prune, >= 1
    if (need == low[lb]) {  // all ties go: no ranking needed
      write_masks(out, threshold, Ties::kPruneAll);
      return out;
    }
    // Some ties survive. The mask pass leaves every tie pruned but untouched and counts the
    // ties of each chunk; ranks by position (a prefix sum) then decide each tie, revisiting
    // only the chunks that hold ties (few, unless many weights share one value).
    const auto ties = write_masks(out, threshold, Ties::kRank);
    std::vector<int64_t> ties_before(chunks_.size() + 1, 0);
    std::vector<int64_t> with_ties;
    for (size_t c = 0; c < chunks_.size(); ++c) {
      ties_before[c + 1] = ties_before[c] + ties[c];
      if (ties[c] > 0) with_ties.push_back(c);
    }
    at::parallel_for(0, with_ties.size(), 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) rank_ties(out, with_ties[i], threshold, ties_before[with_ties[i]], need);
    });
    return out;
  }

  // Per tensor: the eligible elements whose key equals `threshold` (distributed selection:
  // how many ties each rank's tensors hold).
  std::vector<int64_t> tie_counts(uint32_t threshold) const {
    std::vector<int64_t> per_chunk(chunks_.size(), 0);
    at::parallel_for(0, chunks_.size(), 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        int64_t total = 0;
        for_each_block(chunks_[c], [&](const uint32_t* keys, const bool* eligible, int64_t n, int64_t) {
          const uint32_t thr = threshold;
          int64_t t = 0;
          if (eligible == nullptr) {
            for (int64_t i = 0; i < n; ++i) t += keys[i] == thr;
          } else {
            for (int64_t i = 0; i < n; ++i) t += eligible[i] & (keys[i] == thr);
          }
          total += t;
        });
        per_chunk[c] = total;
      }
    });
    std::vector<int64_t> out(values_.size(), 0);
    for (size_t c = 0; c < chunks_.size(); ++c) out[chunks_[c].tensor] += per_chunk[c];
    return out;
  }

  // The keep-masks at a threshold found elsewhere (distributed selection): keys above it are
  // kept, keys below pruned, and of the ties of tensor i the first prune_ties[i] by position
  // are pruned, the rest kept.
  std::vector<at::Tensor> masks_at(uint32_t threshold, const std::vector<int64_t>& prune_ties) const {
    std::vector<at::Tensor> out;
    for (const auto& v : values_) out.push_back(at::empty(v.sizes(), v.options().dtype(at::kBool)));
    const auto ties = write_masks(out, threshold, Ties::kRank);
    std::vector<int64_t> before(chunks_.size(), 0), with_ties;
    int64_t run = 0;
    for (size_t c = 0; c < chunks_.size(); ++c) {
      if (c == 0 || chunks_[c].tensor != chunks_[c - 1].tensor) run = 0;
      before[c] = run;
      run += ties[c];
      if (ties[c] > 0) with_ties.push_back(c);
    }
    at::parallel_for(0, with_ties.size(), 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t c = with_ties[i];
        rank_ties(out, c, threshold, before[c], prune_ties[chunks_[c].tensor]);
      }
    });
    return out;
  }

 private:
  enum class Ties { kKeepAll, kPruneAll, kRank };

  // The mask pass: keep = eligible && (key > threshold, or key == threshold under kKeepAll),
  // and zero the pruned elements of the target in the same pass, except the ties under kRank,
  // which rank_ties decides. Returns the eligible ties of each chunk under kRank.
  std::vector<int64_t> write_masks(std::vector<at::Tensor>& out, uint32_t threshold, Ties ties) const {
    std::vector<int64_t> tie_counts(ties == Ties::kRank ? chunks_.size() : 0, 0);
    const bool keep_ties = ties == Ties::kKeepAll, spare_ties = ties == Ties::kRank;
    at::parallel_for(0, chunks_.size(), 1, [&](int64_t c0, int64_t c1) {
      alignas(64) bool spare[kBlock];  // elements the target keeps: kept ones and ranked ties
      for (int64_t c = c0; c < c1; ++c) {
        bool* m = out[chunks_[c].tensor].mutable_data_ptr<bool>();
        const at::Tensor* target = target_of(c);
        int64_t chunk_ties = 0;
        for_each_block(chunks_[c], [&](const uint32_t* keys, const bool* eligible, int64_t n, int64_t off) {
          // Branch-free byte arithmetic (vectorises): a random keep pattern would mispredict.
          bool* __restrict mo = m + off;
          bool* __restrict so = spare;
          // Locals, not the captured references: the bool stores could alias those, which
          // kept the loop scalar.
          const uint32_t thr = threshold;
          const bool kt = keep_ties, st = spare_ties;
          int64_t t = 0;
          if (eligible == nullptr) {
            for (int64_t i = 0; i < n; ++i) {
              const uint32_t key = keys[i];
              const bool tie = key == thr;
              const bool keep = (key > thr) | (tie & kt);
              mo[i] = keep;
              so[i] = keep | (tie & st);
              t += tie;
            }
          } else {
            for (int64_t i = 0; i < n; ++i) {
              const uint32_t key = keys[i];
              const bool tie = eligible[i] & (key == thr);
              const bool keep = eligible[i] & ((key > thr) | (tie & kt));
              mo[i] = keep;
              so[i] = keep | (tie & st);
              t += tie;
            }
          }
          chunk_ties += t;
          if (target != nullptr) zero_unless(*target, spare, off, n);
        });
        if (ties == Ties::kRank) tie_counts[c] = chunk_ties;
      }
    });
    return tie_counts;
  }

  // Decides the ties of chunk c in position order: the first `need` of all ties (ranks from
  // `before`, the ties in earlier chunks) stay pruned and are zeroed, the rest are kept.
  void rank_ties(std::vector<at::Tensor>& out, int64_t c, uint32_t threshold, int64_t before, int64_t need) const {
    bool* m = out[chunks_[c].tensor].mutable_data_ptr<bool>();
    const at::Tensor* target = target_of(c);
    int64_t rank = before;
    for_each_block(chunks_[c], [&](const uint32_t* keys, const bool* eligible, int64_t n, int64_t off) {
      alignas(64) bool spare[kBlock];
      for (int64_t i = 0; i < n; ++i) {
        spare[i] = true;
        if ((eligible && !eligible[i]) || keys[i] != threshold) continue;
        if (rank >= need) m[off + i] = true;
        else spare[i] = false;
        ++rank;
      }
      if (target != nullptr) zero_unless(*target, spare, off, n);
    });
  }

  // The tensor whose pruned elements chunk c zeroes, or nullptr (select_smallest, or a
  // non-contiguous tensor that zero_smallest_cpu zeroes afterwards).
  const at::Tensor* target_of(int64_t c) const {
    const int64_t i = chunks_[c].tensor;
    return targets_.empty() || !targets_[i].defined() ? nullptr : &targets_[i];
  }

  // target[off + i] = 0 where !spare[i], for i < n (target: contiguous, any floating dtype).
  static void zero_unless(const at::Tensor& target, const bool* spare, int64_t off, int64_t n) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, target.scalar_type(), "zero_smallest", [&] {
      // On the bits: AND with all-ones or zero vectorises; a select on floats did not.
      using bits_t = std::conditional_t<sizeof(scalar_t) == 8, uint64_t,
                                        std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint16_t>>;
      bits_t* x = reinterpret_cast<bits_t*>(target.mutable_data_ptr<scalar_t>()) + off;
      for (int64_t i = 0; i < n; ++i) x[i] &= static_cast<bits_t>(bits_t{0} - static_cast<bits_t>(spare[i]));
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
  // The mask pass writes masks and zeroes targets before the ties are ranked, so every input
  // that pass could change under the ranking is read from a copy: scores that share memory with
  // any of the tensors, tensors that share memory with another of the tensors, and keep masks
  // that share memory with a mask or a tensor (direct op calls; the public functions refuse
  // overlapping tensors).
  std::unordered_map<const c10::StorageImpl*, int> zeroed;
  for (const auto& t : tensors) ++zeroed[t.storage().unsafeGetStorageImpl()];
  for (auto& v : vs) {
    const auto it = zeroed.find(v.storage().unsafeGetStorageImpl());
    if (it != zeroed.end() && (scores.has_value() || it->second > 1)) v = v.clone();
  }
  std::unordered_set<const c10::StorageImpl*> mask_storages;
  for (const auto& m : masks) mask_storages.insert(m.storage().unsafeGetStorageImpl());
  for (auto& kp : ks) {
    const auto* storage = kp.storage().unsafeGetStorageImpl();
    if (mask_storages.count(storage) || zeroed.count(storage)) kp = kp.clone();
  }
  for (const auto& t : tensors) targets.push_back(t.is_contiguous() ? t : at::Tensor());
  for (const auto& m : masks) outs.push_back(m.is_contiguous() ? m : at::empty_like(m, at::MemoryFormat::Contiguous));
  const auto written = Selection(std::move(vs), std::move(ks), !scores.has_value(), targets).masks(k, outs);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!masks[i].is_contiguous()) masks[i].copy_(written[i]);
    if (!targets[i].defined()) tensors[i].masked_fill_(written[i].logical_not(), 0);
  }
}

// The three steps of a selection whose histograms are summed across processes
// (sparsedistill/prune/distributed.py): select_histogram (pass 1: prefix < 0; pass 2: the
// elements whose high 16 key bits equal prefix), select_tie_counts, select_at_threshold.
at::Tensor select_histogram_cpu(at::TensorList values, const std::optional<at::TensorList>& keep,
                                int64_t shift, int64_t prefix, bool magnitude) {
  check_select_args(values, keep, at::Device(at::kCPU));
  check_histogram_args(shift, prefix);
  std::vector<at::Tensor> vs, ks;
  gather_inputs(values, keep, vs, ks);
  const auto hist = Selection(std::move(vs), std::move(ks), magnitude).histogram(
      static_cast<int>(shift), prefix, /*check_nan=*/prefix < 0);
  return at::tensor(hist, at::TensorOptions().dtype(at::kLong));
}

at::Tensor select_tie_counts_cpu(at::TensorList values, const std::optional<at::TensorList>& keep,
                                 int64_t threshold, bool magnitude) {
  check_select_args(values, keep, at::Device(at::kCPU));
  check_threshold_arg(threshold);
  std::vector<at::Tensor> vs, ks;
  gather_inputs(values, keep, vs, ks);
  const auto counts = Selection(std::move(vs), std::move(ks), magnitude).tie_counts(static_cast<uint32_t>(threshold));
  return at::tensor(counts, at::TensorOptions().dtype(at::kLong));
}

std::vector<at::Tensor> select_at_threshold_cpu(at::TensorList values, const std::optional<at::TensorList>& keep,
                                                int64_t threshold, const at::Tensor& prune_ties, bool magnitude) {
  check_select_args(values, keep, at::Device(at::kCPU));
  check_threshold_arg(threshold);
  check_prune_ties_arg(prune_ties, static_cast<int64_t>(values.size()));
  std::vector<at::Tensor> vs, ks;
  gather_inputs(values, keep, vs, ks);
  const auto p = prune_ties.contiguous();
  const std::vector<int64_t> ties(p.const_data_ptr<int64_t>(), p.const_data_ptr<int64_t>() + p.numel());
  return Selection(std::move(vs), std::move(ks), magnitude).masks_at(static_cast<uint32_t>(threshold), ties);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CPU, m) {
  m.impl("select_smallest", &select_smallest_cpu);
  m.impl("zero_smallest", &zero_smallest_cpu);
  m.impl("select_histogram", &select_histogram_cpu);
  m.impl("select_tie_counts", &select_tie_counts_cpu);
  m.impl("select_at_threshold", &select_at_threshold_cpu);
}

}  // namespace sparsedistill
