// C++ CPU kernel of sparsedistill::distill_loss (schema in sparsedistill/_ops.py).
//
// Per row: pass 1 reads student and teacher once and keeps online log-sum-exps of s/T, t/T and
// s (tile by tile: one max per tile, then one exp per element and sum); pass 2 re-reads the row
// while it is still in cache and accumulates the divergence and writes the gradient. Reverse KL
// and JSD need the row's divergence inside the gradient, so they write it in a third pass.
// Rows are spread over threads with at::parallel_for; the math runs on at::vec::Vectorized.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "common.h"

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

// exp_u20 is fast but clamps its input, which would turn NaN into a finite number: keep NaN.
inline Vec exp_keep_nan(const Vec& x) { return Vec::blendv(x.exp_u20(), x, x.isnan()); }

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

inline float tile_max(const float* x, int64_t n_padded) {
  Vec m(-kInf);
  for (int64_t i = 0; i < n_padded; i += Vec::size()) m = at::vec::maximum(m, Vec::loadu(x + i));
  return m.reduce_max();
}

// Online log-sum-exp of scale * x over tiles: running max of x and sum of exp(scale*(x - max)).
struct OnlineLse {
  float max = -kInf;
  float sum = 0.f;

  // Rescales the sum to a new running max; returns false when the tile adds nothing (all -inf).
  bool rebase(float tile_max_value, float scale) {
    if (tile_max_value == -kInf) return false;
    const float new_max = (std::isnan(tile_max_value) || tile_max_value > max) ? tile_max_value : max;
    if (new_max != max) sum *= std::exp((max - new_max) * scale);
    max = new_max;
    return true;
  }
  float value(float scale) const { return max * scale + std::log(sum); }
};

// Adds sum over the tile of exp(scale * (x - lse.max)) into lse.sum.
inline void accumulate_exp(const float* x, int64_t n_padded, float scale, OnlineLse& lse) {
  const Vec vmax(lse.max), vscale(scale);
  Vec acc(0.f);
  for (int64_t i = 0; i < n_padded; i += Vec::size())
    acc += exp_keep_nan((Vec::loadu(x + i) - vmax) * vscale);
  lse.sum += acc.reduce_add();
}

// What a row needs after pass 1.
struct RowLse {
  float sT, tT, s;  // logsumexp(s/T), logsumexp(t/T), logsumexp(s)
};

class DistillRow {
 public:
  DistillRow(const DistillParams& p)
      : p_(p), inv_t_(1.f / p.temperature),
        soft_weight_(p.has_labels ? p.alpha : 1.f), hard_weight_(p.has_labels ? 1.f - p.alpha : 0.f) {}

  template <typename scalar_t>
  void run(const scalar_t* s, const scalar_t* t, int64_t label, scalar_t* g, float* loss,
           float* soft, float* hard) {
    const int64_t V = p_.vocab;
    if (p_.has_labels && label == p_.ignore_index) {
      *loss = *soft = *hard = 0.f;
      if (g) std::memset(static_cast<void*>(g), 0, V * sizeof(scalar_t));
      return;
    }
    const RowLse lse = row_lse(s, t);
    const float d = row_divergence(s, t, lse, p_.divergence == kForwardKL ? g : nullptr, label);
    if (g && p_.divergence != kForwardKL) write_grad(s, t, lse, d, g, label);
    *soft = p_.temperature * p_.temperature * d;
    *hard = p_.has_labels ? lse.s - static_cast<float>(s[label]) : 0.f;
    *loss = soft_weight_ * *soft + hard_weight_ * *hard;
  }

 private:
  // Pass 1: the three log-sum-exps in one read of the row.
  template <typename scalar_t>
  RowLse row_lse(const scalar_t* s, const scalar_t* t) {
    OnlineLse s_t, t_t, s_1;
    for (int64_t off = 0; off < p_.vocab; off += kTile) {
      const int64_t n = std::min(kTile, p_.vocab - off), np = round_up_to_vec(n);
      load_tile(s + off, n, sb_);
      load_tile(t + off, n, tb_);
      const float ms = tile_max(sb_, np), mt = tile_max(tb_, np);
      if (s_t.rebase(ms, inv_t_)) accumulate_exp(sb_, np, inv_t_, s_t);
      if (p_.has_labels && s_1.rebase(ms, 1.f)) accumulate_exp(sb_, np, 1.f, s_1);
      if (t_t.rebase(mt, inv_t_)) accumulate_exp(tb_, np, inv_t_, t_t);
    }
    return {s_t.value(inv_t_), t_t.value(inv_t_), p_.has_labels ? s_1.value(1.f) : 0.f};
  }

  // Pass 2: the row's divergence D (for JSD, also K = KL(q || m) kept in k_); for forward KL
  // the gradient does not depend on D, so it is written here when g is given.
  template <typename scalar_t>
  float row_divergence(const scalar_t* s, const scalar_t* t, const RowLse& lse, scalar_t* g,
                       int64_t label) {
    const Vec inv_t(inv_t_), lse_st(lse.sT), lse_tt(lse.tT);
    const Vec beta(p_.beta), one_minus_beta(1.f - p_.beta);
    Vec acc_d(0.f), acc_k(0.f);
    for (int64_t off = 0; off < p_.vocab; off += kTile) {
      const int64_t n = std::min(kTile, p_.vocab - off), np = round_up_to_vec(n);
      load_tile(s + off, n, sb_);
      load_tile(t + off, n, tb_);
      for (int64_t i = 0; i < np; i += Vec::size()) {
        const Vec log_q = Vec::loadu(sb_ + i) * inv_t - lse_st;
        const Vec log_p = Vec::loadu(tb_ + i) * inv_t - lse_tt;
        const Vec q = exp_keep_nan(log_q), p = exp_keep_nan(log_p);
        if (p_.divergence == kForwardKL) {
          acc_d += zero_where_zero(p, p * (log_p - log_q));
          if (g) store_grad_vec(i, q - p, lse);  // same exps serve loss and gradient
        } else if (p_.divergence == kReverseKL) {
          acc_d += zero_where_zero(q, q * (log_q - log_p));
        } else {
          const Vec log_m = (beta * p + one_minus_beta * q).log();
          acc_d += zero_where_zero(p, p * (log_p - log_m));
          acc_k += zero_where_zero(q, q * (log_q - log_m));
        }
      }
      if (g) flush_grad_tile(off, n, label, g);
    }
    if (p_.divergence != kJSD) return acc_d.reduce_add();
    k_ = acc_k.reduce_add();
    return p_.beta * acc_d.reduce_add() + (1.f - p_.beta) * k_;
  }

  // Pass 3 (reverse KL, JSD): the gradient, which needs the row's divergence.
  template <typename scalar_t>
  void write_grad(const scalar_t* s, const scalar_t* t, const RowLse& lse, float d, scalar_t* g,
                  int64_t label) {
    const float row_term = p_.divergence == kJSD ? k_ : d;
    for (int64_t off = 0; off < p_.vocab; off += kTile) {
      const int64_t n = std::min(kTile, p_.vocab - off);
      load_tile(s + off, n, sb_);
      load_tile(t + off, n, tb_);
      tile_grad(off, n, lse, row_term, label, g);
    }
  }

  // Pass-3 gradient of the tile in sb_/tb_, written to g[off, off + n). gz = dD/d(s/T):
  // reverse KL q (log q - log p - D); JSD (1-b) q (log q - log m - K). (Forward KL: q - p, pass 2.)
  template <typename scalar_t>
  void tile_grad(int64_t off, int64_t n, const RowLse& lse, float row_term, int64_t label,
                 scalar_t* g) {
    const int64_t np = round_up_to_vec(n);
    const Vec inv_t(inv_t_), lse_st(lse.sT), lse_tt(lse.tT), term(row_term);
    const Vec beta(p_.beta), one_minus_beta(1.f - p_.beta);
    for (int64_t i = 0; i < np; i += Vec::size()) {
      const Vec log_q = Vec::loadu(sb_ + i) * inv_t - lse_st;
      const Vec log_p = Vec::loadu(tb_ + i) * inv_t - lse_tt;
      const Vec q = exp_keep_nan(log_q), p = exp_keep_nan(log_p);
      if (p_.divergence == kReverseKL) {
        store_grad_vec(i, zero_where_zero(q, q * (log_q - log_p - term)), lse);
      } else {
        const Vec log_m = (beta * p + one_minus_beta * q).log();
        store_grad_vec(i, zero_where_zero(q, one_minus_beta * q * (log_q - log_m - term)), lse);
      }
    }
    flush_grad_tile(off, n, label, g);
  }

  // gb_[i, i + vec) = a*T*gz + (1-a)*softmax(s) (the one-hot part is subtracted at flush).
  void store_grad_vec(int64_t i, const Vec& gz, const RowLse& lse) {
    Vec grad = Vec(soft_weight_ * p_.temperature) * gz;
    if (p_.has_labels)
      grad = at::vec::fmadd(Vec(hard_weight_), exp_keep_nan(Vec::loadu(sb_ + i) - Vec(lse.s)), grad);
    grad.store(gb_ + i);
  }

  template <typename scalar_t>
  void flush_grad_tile(int64_t off, int64_t n, int64_t label, scalar_t* g) {
    if (p_.has_labels && label >= off && label < off + n) gb_[label - off] -= hard_weight_;
    store_tile(gb_, n, g + off);
  }

  const DistillParams& p_;
  const float inv_t_, soft_weight_, hard_weight_;
  float k_ = 0.f;
  alignas(64) float sb_[kTile];
  alignas(64) float tb_[kTile];
  alignas(64) float gb_[kTile];
};

template <typename scalar_t>
void distill_rows(const at::Tensor& student, const at::Tensor& teacher, const int64_t* labels,
                  const DistillParams& p, DistillOutputs& out) {
  const scalar_t* s = student.const_data_ptr<scalar_t>();
  const scalar_t* t = teacher.const_data_ptr<scalar_t>();
  scalar_t* g = p.compute_grad ? out.grad.mutable_data_ptr<scalar_t>() : nullptr;
  float* loss = out.loss.mutable_data_ptr<float>();
  float* soft = out.soft.mutable_data_ptr<float>();
  float* hard = out.hard.mutable_data_ptr<float>();
  const int64_t V = p.vocab;
  // Enough rows per task that a task is worth scheduling even for small V.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1));
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    DistillRow row(p);  // per-thread tile buffers (12 KiB)
    for (int64_t r = begin; r < end; ++r) {
      row.run(s + r * V, t + r * V, labels ? labels[r] : 0, g ? g + r * V : nullptr, loss + r,
              soft + r, hard + r);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> distill_loss_cpu(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& labels,
    double T, double alpha, double beta, int64_t divergence, int64_t ignore_index,
    bool compute_grad) {
  const DistillParams p = check_distill_args(student, teacher, labels, T, alpha, beta, divergence,
                                             ignore_index, compute_grad);
  if (student.scalar_type() == at::kDouble) {
    return distill_loss_via_float32(distill_loss_cpu, student, teacher, labels, T, alpha, beta,
                                    divergence, ignore_index, compute_grad);
  }
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  at::Tensor y;
  if (labels.has_value()) {
    y = labels->contiguous();
    const int64_t* yp = y.const_data_ptr<int64_t>();
    for (int64_t r = 0; r < p.rows; ++r) {
      SD_CHECK_ARG(yp[r] == ignore_index || (yp[r] >= 0 && yp[r] < p.vocab),
                   "labels must lie in [0, ", p.vocab, ") or equal ignore_index=", ignore_index,
                   "; got ", yp[r], " at row ", r);
    }
  }
  DistillOutputs out = alloc_distill_outputs(s, compute_grad);
  SD_DISPATCH_LOGITS(s.scalar_type(), "distill_loss_cpu", [&] {
    distill_rows<scalar_t>(s, t, y.defined() ? y.const_data_ptr<int64_t>() : nullptr, p, out);
  });
  return out.as_tuple();
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CPU, m) { m.impl("distill_loss", &distill_loss_cpu); }

}  // namespace sparsedistill
