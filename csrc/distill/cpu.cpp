// C++ CPU kernel of sparsedistill::distill_loss (schema in sparsedistill/distill/ops.py).
//
// Per row, pass 1 reads student s and teacher t once, tile by tile (one max per tile, then one
// exp per element and tensor), and keeps online log-sum-exps of s/T, t/T and s together with
// the weighted sums that give forward and reverse KL without a second read:
//   KL(p||q) = sum_j p_j (t_j - s_j)/T + lse(s/T) - lse(t/T)   (likewise reverse KL with q).
// When a gradient is wanted, pass 1 also caches the exps it computed in per-thread row buffers
// (3 x V floats, in L2), and pass 2 turns them into the gradient without another exp and
// without re-reading the logits. Reverse KL and JSD re-read the row for their log-ratios (and
// JSD takes one more pass for its divergence). Rows are spread over threads with
// at::parallel_for; the math runs on at::vec::Vectorized.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <algorithm>
#include <limits>
#include <vector>

#include "common/cpu_memory.h"
#include "distill/checks.h"
#include "distill/rows_cpu.h"

// The build asked for a vector ISA: fail to compile rather than silently build scalar code.
#if defined(SPARSEDISTILL_EXPECT_AVX512) && !defined(CPU_CAPABILITY_AVX512)
#error "SPARSEDISTILL_EXPECT_AVX512 is set but at::vec was not compiled for AVX512"
#endif
#if defined(SPARSEDISTILL_EXPECT_AVX2) && !defined(CPU_CAPABILITY_AVX2)
#error "SPARSEDISTILL_EXPECT_AVX2 is set but at::vec was not compiled for AVX2"
#endif

namespace sparsedistill {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kTile = 1024;  // elements per tile: 4 KiB per float buffer, stays in L1
constexpr float kInf = std::numeric_limits<float>::infinity();
static_assert(kTile % (2 * Vec::size()) == 0, "tile must hold whole vectors");

inline int64_t round_up_to_vec(int64_t n) { return (n + Vec::size() - 1) / Vec::size() * Vec::size(); }

// Terms like p * log(p / q) are 0 where p == 0 (as F.kl_div's xlogy); NaN stays NaN.
inline Vec zero_where_zero(const Vec& weight, const Vec& term) {
  return Vec::blendv(term, Vec(0.f), weight == Vec(0.f));
}

// Copies n <= kTile logits to a float buffer, padding to whole vectors with -inf (probability 0).
template <typename scalar_t>
inline void load_tile(const scalar_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::memcpy(dst, src, n * sizeof(float));
    i = n;
  } else {
    using RVec = at::vec::Vectorized<scalar_t>;
    for (; i + RVec::size() <= n; i += RVec::size()) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(RVec::loadu(src + i));
      lo.store(dst + i);
      hi.store(dst + i + Vec::size());
    }
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
  for (int64_t j = n; j < round_up_to_vec(n); ++j) dst[j] = -kInf;
}

template <typename scalar_t>
inline void store_tile(const float* src, int64_t n, scalar_t* dst) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    using RVec = at::vec::Vectorized<scalar_t>;
    int64_t i = 0;
    for (; i + RVec::size() <= n; i += RVec::size()) {
      at::vec::convert_from_float<scalar_t>(Vec::loadu(src + i), Vec::loadu(src + i + Vec::size()))
          .store(dst + i);
    }
    for (; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

inline float nan_max(float a, float b) { return (std::isnan(a) || a > b) ? a : b; }

// Horizontal sum (Vectorized::reduce_add does not compile for the generic, non-SIMD build).
inline float lane_sum(const Vec& v) {
  alignas(64) float lanes[Vec::size()];
  v.store(lanes);
  float r = 0.f;
  for (int64_t i = 0; i < Vec::size(); ++i) r += lanes[i];
  return r;
}

// Max of a padded tile; NaN if the tile holds a NaN (Vectorized::reduce_max may drop it).
inline float tile_max(const float* x, int64_t n_padded) {
  Vec m(-kInf);
  for (int64_t i = 0; i < n_padded; i += Vec::size()) m = at::vec::maximum(m, Vec::loadu(x + i));
  alignas(64) float lanes[Vec::size()];
  m.store(lanes);
  float r = -kInf;
  for (int64_t i = 0; i < Vec::size(); ++i) r = nan_max(r, lanes[i]);
  return r;
}

// Online softmax statistics of scale * x over tiles: the running max of x, the sum of
// e_j = exp(scale * (x_j - max)) and the sum of e_j * w_j for a per-element weight w.
struct OnlineSoftmax {
  float scale = 1.f;
  float max = -kInf;
  float sum = 0.f;
  float weighted = 0.f;

  // Moves the sums to the new running max (max of the old one and the tile's).
  void rebase(float tile_max_value) {
    const float new_max = nan_max(tile_max_value, max);
    if (new_max != max && max != -kInf) {
      const float f = std::exp((max - new_max) * scale);
      sum *= f;
      weighted *= f;
    }
    max = new_max;
  }
  // log-softmax_j = (x_j - max) * scale - log_sum(): relative to the row max, so that a large
  // common offset of the logits does not cost precision (max * scale + log(sum), the lse
  // itself, would be ~offset/T and cancel against the other row's lse).
  float log_sum() const { return std::log(sum); }
  float mean_weight() const { return weighted / sum; }  // sum_j softmax_j * w_j
};

class DistillRow {
 public:
  // grad_scale multiplies the gradient (not the loss): the caller's weight of every row.
  DistillRow(const DistillParams& p, float grad_scale)
      : p_(p), inv_t_(1.f / p.temperature), grad_scale_(grad_scale),
        soft_weight_(p.has_labels ? p.alpha : 1.f), hard_weight_(p.has_labels ? 1.f - p.alpha : 0.f),
        integer_temperature_(p.temperature == std::round(p.temperature) && p.temperature >= 1.f &&
                                     p.temperature <= 16.f
                                 ? static_cast<int>(p.temperature)
                                 : 0),
        n_tiles_((p.vocab + kTile - 1) / kTile),
        cache_stride_(n_tiles_ * kTile),
        cache_((p.compute_grad || p.divergence == kJSD) ? 3 * cache_stride_ : 0),
        tile_max_(3 * n_tiles_) {}

  template <typename scalar_t>
  void run(const scalar_t* s, const scalar_t* t, int64_t label, scalar_t* g, float* loss,
           float* soft, float* hard) {
    const int64_t V = p_.vocab;
    if (p_.has_labels && label == p_.ignore_index) {
      *loss = *soft = *hard = 0.f;
      if (g) std::memset(static_cast<void*>(g), 0, V * sizeof(scalar_t));
      return;
    }
    first_pass(s, t);
    // NaN or +-inf as a row max (a NaN anywhere, +inf anywhere, or an all -inf row): the
    // softmax is undefined, so is everything else. Say so with NaN rather than a number.
    if (!std::isfinite(st_.max) || !std::isfinite(tt_.max)) {
      *loss = *soft = *hard = std::numeric_limits<float>::quiet_NaN();
      if (g) std::fill(g, g + V, static_cast<scalar_t>(std::numeric_limits<float>::quiet_NaN()));
      return;
    }
    // log p_j - log q_j = (t_j - s_j)/T + c, c = lse(s/T) - lse(t/T) formed from the maxima
    // and the sums (see OnlineSoftmax::log_sum).
    c_ = (st_.max - tt_.max) * inv_t_ + (st_.log_sum() - tt_.log_sum());
    float d;
    if (p_.divergence == kForwardKL) {
      d = tt_.mean_weight() * inv_t_ + c_;
    } else if (p_.divergence == kReverseKL) {
      d = st_.mean_weight() * inv_t_ - c_;
    } else {
      d = jsd_pass(s, t);
    }
    d_ = d;
    if (g) grad_pass(s, t, label, g);
    *soft = p_.temperature * p_.temperature * d;
    *hard = p_.has_labels ? (s1_.max - static_cast<float>(s[label])) + s1_.log_sum() : 0.f;
    *loss = soft_weight_ * *soft + hard_weight_ * *hard;
  }

 private:
  float* cached_exp(int which) { return cache_.data() + which * cache_stride_; }  // 0: s/T, 1: t/T, 2: s

  // Adds exp(scale * (x - stats.max)) of a padded tile into stats.sum, stats.weighted (with
  // weight w, forced to 0 where the exp is 0) and, if cache != nullptr, stores the exps there.
  // Adds exp(scale * (x - stats.max)) of a padded tile into stats.sum, stats.weighted (with
  // weight w_plus - w_minus, forced to 0 where the exp is 0) and, if cache != nullptr, stores
  // the exps there. With power > 0 it also accumulates e^power into `powered` (and its cache):
  // for x/T with an integer T, e^T = exp(x - max) is the hard term's exp, for the price of a
  // few multiplications instead of another exp.
  static void accumulate(const float* x, const float* w_plus, const float* w_minus, int64_t np,
                         OnlineSoftmax& stats, float* cache, int power, OnlineSoftmax* powered,
                         float* powered_cache) {
    const Vec vmax(stats.max), vscale(stats.scale);
    Vec acc(0.f), acc_w(0.f), acc_pow(0.f);
    for (int64_t i = 0; i < np; i += Vec::size()) {
      const Vec e = ((Vec::loadu(x + i) - vmax) * vscale).exp_u20();
      acc += e;
      if (w_plus) acc_w += zero_where_zero(e, e * (Vec::loadu(w_plus + i) - Vec::loadu(w_minus + i)));
      if (cache) e.store(cache + i);
      if (powered) {
        Vec result(1.f), base = e;
        for (int n = power; n > 0; n >>= 1, base = base * base)
          if (n & 1) result = result * base;
        acc_pow += result;
        if (powered_cache) result.store(powered_cache + i);
      }
    }
    stats.sum += lane_sum(acc);
    stats.weighted += lane_sum(acc_w);
    if (powered) powered->sum += lane_sum(acc_pow);
  }

  // Pass 1: maxima, sums and KL weighted sums in one read of the row; caches the exps.
  template <typename scalar_t>
  void first_pass(const scalar_t* s, const scalar_t* t) {
    st_ = OnlineSoftmax{inv_t_};
    tt_ = OnlineSoftmax{inv_t_};
    s1_ = OnlineSoftmax{1.f};
    for (int64_t k = 0, off = 0; off < p_.vocab; ++k, off += kTile) {
      const int64_t n = std::min(kTile, p_.vocab - off), np = round_up_to_vec(n);
      load_tile(s + off, n, sb_);
      load_tile(t + off, n, tb_);
      const float ms = tile_max(sb_, np), mt = tile_max(tb_, np);
      st_.rebase(ms);
      s1_.rebase(ms);
      tt_.rebase(mt);
      // Only the weighted sum the chosen divergence needs: forward KL weighs (t - s) by p,
      // reverse KL weighs (s - t) by q.
      const bool fwd = p_.divergence == kForwardKL, rev = p_.divergence == kReverseKL;
      const int power = p_.has_labels ? integer_temperature_ : 0;
      accumulate_tile(k, 0, sb_, rev ? sb_ : nullptr, tb_, np, st_, power);
      accumulate_tile(k, 1, tb_, fwd ? tb_ : nullptr, sb_, np, tt_, 0);
      if (p_.has_labels && power == 0) accumulate_tile(k, 2, sb_, nullptr, nullptr, np, s1_, 0);
    }
  }

  // One tensor's share of a tile in pass 1; `which` picks its cache and tile-max slot. With
  // power > 0 (student, integer T) the hard term's statistics s1_ (slot 2) come along.
  void accumulate_tile(int64_t k, int which, const float* x, const float* w_plus,
                       const float* w_minus, int64_t np, OnlineSoftmax& stats, int power) {
    float* cache = cache_.empty() ? nullptr : cached_exp(which) + k * kTile;
    float* powered_cache = (cache_.empty() || power == 0) ? nullptr : cached_exp(2) + k * kTile;
    if (!std::isfinite(stats.max)) {
      // All -inf so far (probability 0: cache zeros), or NaN/+inf (the row becomes NaN).
      if (cache) std::fill_n(cache, np, 0.f);
      if (powered_cache) std::fill_n(powered_cache, np, 0.f);
      tile_max_[3 * k + which] = -kInf;
      if (power) tile_max_[3 * k + 2] = -kInf;
      return;
    }
    accumulate(x, w_plus, w_minus, np, stats, cache, power, power ? &s1_ : nullptr, powered_cache);
    tile_max_[3 * k + which] = stats.max;
    if (power) tile_max_[3 * k + 2] = stats.max;
  }

  // Factor that turns a cached exp of tile k into a probability: exp(scale*(m_k - max)) / sum.
  float to_prob(const OnlineSoftmax& stats, int64_t k, int which) const {
    const float mk = tile_max_[3 * k + which];
    return mk == -kInf ? 0.f : std::exp((mk - stats.max) * stats.scale) / stats.sum;
  }

  // JSD pass: D = beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q; keeps K = KL(q||m).
  template <typename scalar_t>
  float jsd_pass(const scalar_t* s, const scalar_t* t) {
    const Vec beta(p_.beta), one_minus_beta(1.f - p_.beta);
    Vec acc_p(0.f), acc_q(0.f);
    for (int64_t k = 0, off = 0; off < p_.vocab; ++k, off += kTile) {
      const int64_t n = std::min(kTile, p_.vocab - off), np = round_up_to_vec(n);
      const Vec fq(to_prob(st_, k, 0)), fp(to_prob(tt_, k, 1));
      load_tile(s + off, n, sb_);
      load_tile(t + off, n, tb_);
      for (int64_t i = 0; i < np; i += Vec::size()) {
        const Vec q = Vec::loadu(cached_exp(0) + off + i) * fq;
        const Vec p = Vec::loadu(cached_exp(1) + off + i) * fp;
        const Vec log_q = (Vec::loadu(sb_ + i) - Vec(st_.max)) * Vec(inv_t_) - Vec(st_.log_sum());
        const Vec log_p = (Vec::loadu(tb_ + i) - Vec(tt_.max)) * Vec(inv_t_) - Vec(tt_.log_sum());
        const Vec log_m = (beta * p + one_minus_beta * q).log();
        acc_p += zero_where_zero(p, p * (log_p - log_m));
        acc_q += zero_where_zero(q, q * (log_q - log_m));
      }
    }
    k_ = lane_sum(acc_q);
    return p_.beta * lane_sum(acc_p) + (1.f - p_.beta) * k_;
  }

  // Gradient pass: g = a*T*gz + (1-a)*(softmax(s) - onehot(label)), where gz = dD/d(s/T):
  // forward KL q - p; reverse KL q (log q - log p - D); JSD (1-b) q (log q - log m - K).
  template <typename scalar_t>
  void grad_pass(const scalar_t* s, const scalar_t* t, int64_t label, scalar_t* g) {
    const Vec soft_scale(soft_weight_ * p_.temperature * grad_scale_);
    const Vec hard_weight(hard_weight_ * grad_scale_);
    const Vec inv_t(inv_t_), c(c_), d(d_), k_term(k_), beta(p_.beta), one_minus_beta(1.f - p_.beta);
    const bool needs_logits = p_.divergence != kForwardKL;
    for (int64_t k = 0, off = 0; off < p_.vocab; ++k, off += kTile) {
      const int64_t n = std::min(kTile, p_.vocab - off), np = round_up_to_vec(n);
      const Vec fq(to_prob(st_, k, 0)), fp(to_prob(tt_, k, 1));
      const Vec fs(p_.has_labels ? to_prob(s1_, k, 2) : 0.f);
      if (needs_logits) {
        load_tile(s + off, n, sb_);
        load_tile(t + off, n, tb_);
      }
      for (int64_t i = 0; i < np; i += Vec::size()) {
        const Vec q = Vec::loadu(cached_exp(0) + off + i) * fq;
        const Vec p = Vec::loadu(cached_exp(1) + off + i) * fp;
        Vec gz;
        if (p_.divergence == kForwardKL) {
          gz = q - p;
        } else if (p_.divergence == kReverseKL) {
          const Vec log_q_minus_log_p = (Vec::loadu(sb_ + i) - Vec::loadu(tb_ + i)) * inv_t - c;
          gz = zero_where_zero(q, q * (log_q_minus_log_p - d));
        } else {
          const Vec log_q = (Vec::loadu(sb_ + i) - Vec(st_.max)) * inv_t - Vec(st_.log_sum());
          const Vec log_m = (beta * p + one_minus_beta * q).log();
          gz = zero_where_zero(q, one_minus_beta * q * (log_q - log_m - k_term));
        }
        Vec grad = soft_scale * gz;
        if (p_.has_labels) grad = at::vec::fmadd(hard_weight, Vec::loadu(cached_exp(2) + off + i) * fs, grad);
        grad.store(gb_ + i);
      }
      if (p_.has_labels && label >= off && label < off + n) gb_[label - off] -= hard_weight_ * grad_scale_;
      store_tile(gb_, n, g + off);
    }
  }

  const DistillParams& p_;
  const float inv_t_, grad_scale_, soft_weight_, hard_weight_;
  const int integer_temperature_;  // T if it is an integer in [1, 16], else 0
  const int64_t n_tiles_, cache_stride_;
  std::vector<float> cache_;     // exps of s/T, t/T and s for the row (pass 1 -> later passes)
  std::vector<float> tile_max_;  // per tile, the running max its cached exps are relative to
  OnlineSoftmax st_, tt_, s1_;   // statistics of s/T, t/T and s
  float c_ = 0.f, d_ = 0.f, k_ = 0.f;
  alignas(64) float sb_[kTile];
  alignas(64) float tb_[kTile];
  alignas(64) float gb_[kTile];
};

// The gradient is a fresh logits-sized buffer that the kernel fills once. Faulting it in 4 KiB
// pages costs about as much as the arithmetic of a large batch: ask for 2 MiB pages.
void advise_huge_pages(const at::Tensor& buffer) {
  if (buffer.nbytes() >= 2 * kHugePage) sparsedistill::advise_huge_pages(buffer.const_data_ptr(), buffer.nbytes());
}

// The row loop on raw pointers: rows x vocab contiguous logits, g == nullptr without gradient.
template <typename scalar_t>
void distill_rows_ptr(const scalar_t* s, const scalar_t* t, const int64_t* labels, float grad_scale,
                      const DistillParams& p, scalar_t* g, float* loss, float* soft, float* hard) {
  const int64_t V = p.vocab;
  // Enough rows per task that a task is worth scheduling even for small V.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1));
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    DistillRow row(p, grad_scale);  // per-thread tile and row buffers
    for (int64_t r = begin; r < end; ++r) {
      row.run(s + r * V, t + r * V, labels ? labels[r] : 0, g ? g + r * V : nullptr, loss + r,
              soft + r, hard + r);
    }
  });
}

template <typename scalar_t>
void distill_rows(const at::Tensor& student, const at::Tensor& teacher, const int64_t* labels,
                  float grad_scale, const DistillParams& p, DistillOutputs& out) {
  distill_rows_ptr<scalar_t>(student.const_data_ptr<scalar_t>(), teacher.const_data_ptr<scalar_t>(),
                             labels, grad_scale, p,
                             p.compute_grad ? out.grad.mutable_data_ptr<scalar_t>() : nullptr,
                             out.loss.mutable_data_ptr<float>(), out.soft.mutable_data_ptr<float>(),
                             out.hard.mutable_data_ptr<float>());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> distill_loss_cpu(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& labels,
    const at::Tensor& grad_scale, double T, double alpha, double beta, int64_t divergence,
    int64_t ignore_index, bool compute_grad) {
  const DistillParams p = check_distill_args(student, teacher, labels, grad_scale, T, alpha, beta,
                                             divergence, ignore_index, compute_grad);
  if (student.scalar_type() == at::kDouble) {
    return distill_loss_via_float32(distill_loss_cpu, student, teacher, labels, grad_scale, T,
                                    alpha, beta, divergence, ignore_index, compute_grad);
  }
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  at::Tensor y;
  if (labels.has_value()) {
    y = labels->contiguous();
    const int64_t* yp = y.const_data_ptr<int64_t>();
    for (int64_t r = 0; r < p.rows; ++r) {
      check_label_value(yp[r], r, p.vocab, ignore_index);
    }
  }
  DistillOutputs out = alloc_distill_outputs(s, compute_grad);
  if (compute_grad) advise_huge_pages(out.grad);
  SD_DISPATCH_FLOATS(s.scalar_type(), "distill_loss_cpu", [&] {
    distill_rows<scalar_t>(s, t, y.defined() ? y.const_data_ptr<int64_t>() : nullptr,
                           grad_scale.item<float>(), p, out);
  });
  return out.as_tuple();
}

// grad[r, :] *= row_scale[r], skipping rows whose scale is exactly 1.
void scale_rows_cpu(at::Tensor& grad, const at::Tensor& row_scale) {
  if (scale_rows_checked_or_done(grad, row_scale)) return;
  const at::Tensor scale = row_scale.contiguous();
  const float* sp = scale.const_data_ptr<float>();
  const int64_t V = grad.size(1);
  SD_DISPATCH_FLOATS(grad.scalar_type(), "scale_rows_cpu", [&] {
    scalar_t* g = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, grad.size(0), std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1)),
                     [&](int64_t begin, int64_t end) {
      alignas(64) float buf[kTile];
      for (int64_t r = begin; r < end; ++r) {
        if (sp[r] == 1.f) continue;
        const Vec factor(sp[r]);
        for (int64_t off = 0; off < V; off += kTile) {
          const int64_t n = std::min(kTile, V - off);
          load_tile(g + r * V + off, n, buf);
          for (int64_t i = 0; i < round_up_to_vec(n); i += Vec::size())
            (Vec::loadu(buf + i) * factor).store(buf + i);
          store_tile(buf, n, g + r * V + off);
        }
      }
    });
  });
}

}  // namespace

void distill_rows_float32_cpu(const float* student, const float* teacher, const int64_t* labels,
                              float grad_scale, const DistillParams& p, float* grad, float* loss,
                              float* soft, float* hard) {
  distill_rows_ptr<float>(student, teacher, labels, grad_scale, p, grad, loss, soft, hard);
}

TORCH_LIBRARY_IMPL(sparsedistill, CPU, m) {
  m.impl("distill_loss", &distill_loss_cpu);
  m.impl("scale_rows_", &scale_rows_cpu);
}

}  // namespace sparsedistill
