// C++ CPU kernel of sparsedistill::fused_linear_distill (schema and design in
// sparsedistill/distill/fused_linear_ops.py): the distillation loss of two linear heads from
// their hidden states, never holding more than one chunk of rows of logits.
//
// Per chunk of `chunk_rows` rows, into buffers allocated once (chunk x V float32 each, for the
// student and the teacher logits and the gradient):
//   1. logits = softcap(logit_scale * (h @ W.T + b)) for both models, in float32, never
//      rounded to 16 bits (CPU ATen has no mm(..., out_dtype)). A model whose hidden states,
//      weight and bias are bf16, on a CPU with AMX-BF16 or AVX512_BF16, runs the bf16 x bf16 ->
//      float32 GEMM of bf16_gemm_cpu.h on its weight packed once per call. Any other widens its weight
//      to float32 once and runs ATen's GEMM (MKL / oneDNN), in oneDNN's bf16 mode for an
//      all-bf16 model with an odd hidden size on a CPU with native bf16 (Bf16Matmuls). With pad_vocab the
//      classes one model lacks keep -inf logits (probability 0).
//   2. the fused row kernel of distill_loss (cpu.cpp, distill_rows_float32_cpu) on the chunk,
//      with the gradient G written in the same pass, already weighted by row_weight;
//   3. G through softcap and logit_scale, then grad_hidden[chunk] = G @ W_s,
//      grad_W_s += G.T @ h_s[chunk] and grad_b_s += G.sum(0), into float32 accumulators that
//      are cast to the inputs' dtypes at the end (student_grads). For a bf16 student these two
//      GEMMs round G to bf16 (float32 accumulation), as autograd's bf16 matmuls do.
// Labels are range-checked once, against the student's classes, before the loop.
#include <ATen/Context.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string>

#include "common/huge_tensor.h"
#include "distill/bf16_gemm_cpu.h"
#include "distill/checks.h"
#include "distill/fused_linear.h"
#include "distill/rows_cpu.h"

namespace sparsedistill {
namespace {

// Whether the CPU has native bfloat16 dot products (AVX512_BF16 or AMX-BF16): without them
// oneDNN emulates bf16, slower than the float32 GEMM.
bool native_bf16_cpu() { return bf16_gemm_available() || amx_bf16_available(); }

// How a bf16 head's GEMMs run: "brgemm" (ATen's cpublas::brgemm on AMX tiles) or "ours" (our
// AVX512_BF16 register tiles), both on the weight packed once; "onednn": float32 copies in
// oneDNN's bf16 mode. Default: brgemm where the CPU has AMX, else ours.
// SPARSEDISTILL_CPU_BF16_GEMM chooses (the tests run each); one the CPU lacks falls back.
std::string bf16_gemm_choice() {
  const char* env = std::getenv("SPARSEDISTILL_CPU_BF16_GEMM");
  if (env == nullptr || *env == '\0') return amx_bf16_available() ? "brgemm" : "ours";
  const std::string choice(env);
  TORCH_CHECK(choice == "ours" || choice == "brgemm" || choice == "onednn",
              "SPARSEDISTILL_CPU_BF16_GEMM must be 'brgemm', 'ours' or 'onednn' (or unset), got '", choice, "'");
  return choice;
}

// While alive (and on), ATen's float32 CPU matmuls run in oneDNN's bf16 mode: the inputs
// rounded to bf16 (exact for float32 copies of bf16 tensors), float32 accumulation and output.
// The mode is ATen's global setting (torch.backends.mkldnn.matmul.fp32_precision); it is
// restored on exit, so only float32 matmuls of other threads during the call would see it.
class Bf16Matmuls {
 public:
  explicit Bf16Matmuls(bool on) : on_(on) {
    if (!on_) return;
    auto& ctx = at::globalContext();
    prev_ = ctx.float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL);
    ctx.setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL, at::Float32Precision::BF16);
  }
  ~Bf16Matmuls() {
    if (on_) at::globalContext().setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL, prev_);
  }
  Bf16Matmuls(const Bf16Matmuls&) = delete;
  Bf16Matmuls& operator=(const Bf16Matmuls&) = delete;

 private:
  bool on_;
  at::Float32Precision prev_ = at::Float32Precision::NONE;
};

// One model's output projection for the chunks' logits. A bf16 model (hidden states, weight and
// bias) with an even hidden size, on a CPU with AMX-BF16 or AVX512_BF16, uses bf16_gemm (bf16 x
// bf16 -> float32) on its weight packed once (no float32 copy). Any other uses ATen's GEMM on
// a float32 copy of the weight (none for float32), in oneDNN's bf16 mode for a bf16 model on a
// CPU with native bf16 (Bf16Matmuls).
struct Head {
  Head(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias)
      : vocab(weight.size(0)) {
    const bool all_bf16 = hidden.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16 &&
                          (!bias.has_value() || bias->scalar_type() == at::kBFloat16);
    const std::string how = all_bf16 ? bf16_gemm_choice() : "";
    amx = how == "brgemm" && amx_bf16_available();
    packed = all_bf16 && hidden.size(1) % 2 == 0 && (amx || (how != "onednn" && bf16_gemm_available()));
    bf16 = all_bf16 && !packed && at::globalContext().userEnabledMkldnn() && native_bf16_cpu();
    h = packed ? hidden.contiguous() : hidden;
    w = packed ? pack_bf16_transposed(weight.contiguous()) : weight.to(at::kFloat).contiguous();
    if (bias.has_value()) b = bias->to(at::kFloat).contiguous();
  }

  // Rows [start, start + c) of the hidden states as this head's GEMMs take them: bf16 rows
  // (packed) or float32.
  at::Tensor rows(int64_t start, int64_t c) const {
    const at::Tensor x = h.narrow(0, start, c);
    return packed ? x : x.to(at::kFloat);
  }

  // The float32 logits of the chunk x = rows(...) into z (c x V, row-major; only the first
  // `vocab` columns are written, the rest hold -inf from the allocation).
  void logits(at::Tensor& z, const at::Tensor& x, double scale, double cap) const {
    at::Tensor out = z.narrow(1, 0, vocab);
    if (packed) {
      bf16_gemm(x.size(0), vocab, x.size(1) / 2, reinterpret_cast<const uint32_t*>(x.const_data_ptr()),
                x.size(1) / 2, reinterpret_cast<const uint32_t*>(w.const_data_ptr()),
                out.mutable_data_ptr<float>(), z.size(1), false, b.has_value() ? b->const_data_ptr<float>() : nullptr,
                amx);
    } else {
      Bf16Matmuls mode(bf16);
      if (b.has_value()) {
        at::addmm_out(out, *b, x, w.t());
      } else {
        at::mm_out(out, x, w.t());
      }
    }
    transform_logits_(out, scale, cap);
  }

  int64_t vocab;
  bool packed = false, amx = false, bf16 = false;  // bf16_gemm (on AMX); else ATen's float32 GEMM, in bf16 mode
  at::Tensor h, w;  // the hidden states (contiguous when packed); packed or float32 weight
  std::optional<at::Tensor> b;  // float32 bias
};

// The student's weight gradients of one chunk x = head.rows(...): grad_h[rows] = G @ W,
// grad_w += G.T @ x. With the bf16 kernel G is rounded to bf16 (as autograd's bf16 matmuls
// do); grad_h[rows] is ATen's bf16 mm (float32 accumulation, rounded once, as the final cast
// would) and grad_w our GEMM into the float32 accumulator. The bf16 buffers are allocated once
// per call (fresh pages cost a page fault each here).
class StudentGrads {
 public:
  StudentGrads(const Head& head, const at::Tensor& weight, int64_t chunk)
      : head_(head), weight_(weight) {
    if (!head.packed) return;
    const int64_t hidden = head.h.size(1), pairs = (chunk + 1) / 2;
    const auto opts = head.h.options();
    g16_ = empty_huge({chunk, head.vocab}, opts);
    gh16_ = empty_huge({chunk, hidden}, opts);
    a_ = empty_huge({head.vocab * pairs}, opts.dtype(at::kInt));
    b_ = empty_huge({row_pairs_words(chunk, hidden)}, opts.dtype(at::kInt));
  }

  void operator()(const at::Tensor& gc, const at::Tensor& x, at::Tensor& gh, at::Tensor& grad_w) {
    if (!head_.packed) {
      Bf16Matmuls mode(head_.bf16);
      at::mm_out(gh, gc, head_.w);
      grad_w.addmm_(gc.t(), x);
      return;
    }
    const int64_t c = x.size(0), pairs = (c + 1) / 2;
    at::Tensor g16 = g16_.narrow(0, 0, c), gh16 = gh16_.narrow(0, 0, c);
    g16.copy_(gc);
    at::mm_out(gh16, g16, weight_);
    gh.copy_(gh16);
    pack_bf16_transposed_pairs(g16, a_);
    pack_bf16_row_pairs(x, b_);
    bf16_gemm(head_.vocab, grad_w.size(1), pairs, reinterpret_cast<const uint32_t*>(a_.const_data_ptr()),
              pairs, reinterpret_cast<const uint32_t*>(b_.const_data_ptr()), grad_w.mutable_data_ptr<float>(),
              grad_w.size(1), true, nullptr, head_.amx);
  }

 private:
  const Head& head_;
  const at::Tensor& weight_;
  at::Tensor g16_, gh16_, a_, b_;  // G and G @ W in bf16, the packed G.T and x of a chunk
};

// x in `dtype` (x itself when it is already), a large result on huge pages (empty_huge).
at::Tensor cast_huge(const at::Tensor& x, at::ScalarType dtype) {
  if (x.scalar_type() == dtype) return x;
  return empty_huge(x.sizes(), x.options().dtype(dtype)).copy_(x);
}

FusedLinearOutputs fused_linear_distill_cpu(
    const at::Tensor& student_hidden, const at::Tensor& student_weight,
    const std::optional<at::Tensor>& student_bias, const at::Tensor& teacher_hidden,
    const at::Tensor& teacher_weight, const std::optional<at::Tensor>& teacher_bias,
    const std::optional<at::Tensor>& labels, const at::Tensor& row_weight, double T, double alpha,
    double beta, int64_t divergence, int64_t ignore_index, double logit_scale, double softcap,
    bool pad_vocab, int64_t chunk_rows, bool compute_grad) {
  check_fused_linear_args(student_hidden, student_weight, student_bias, teacher_hidden,
                          teacher_weight, teacher_bias, labels, row_weight, T, alpha, beta,
                          divergence, logit_scale, softcap, pad_vocab, chunk_rows);
  const int64_t rows = student_hidden.size(0), vocab_s = student_weight.size(0);
  const int64_t vocab = std::max(vocab_s, teacher_weight.size(0));
  at::Tensor y;
  if (labels.has_value()) {
    y = labels->contiguous();
    const int64_t* yp = y.const_data_ptr<int64_t>();
    for (int64_t r = 0; r < rows; ++r) check_label_value(yp[r], r, vocab_s, ignore_index);
  }
  const auto f32 = student_hidden.options().dtype(at::kFloat);
  const Head student(student_hidden, student_weight, student_bias);
  const Head teacher(teacher_hidden, teacher_weight, teacher_bias);
  const bool per_row = row_weight.dim() == 1;
  const at::Tensor rw = row_weight.contiguous();
  const float grad_scale = per_row ? 1.f : rw.item<float>();

  at::Tensor loss_rows = at::empty({rows}, f32), soft_rows = at::empty({rows}, f32),
             hard_rows = at::empty({rows}, f32);
  at::Tensor grad_h, grad_w, grad_b;
  if (compute_grad) {
    grad_h = empty_huge({rows, student_hidden.size(1)}, f32);
    grad_w = empty_huge({vocab_s, student_hidden.size(1)}, f32).zero_();
    grad_b = at::zeros({vocab_s}, f32);
  }
  const int64_t chunk = std::min(chunk_rows, rows);
  if (chunk > 0) {
    const float minus_inf = -std::numeric_limits<float>::infinity();
    at::Tensor s = empty_huge({chunk, vocab}, f32).fill_(minus_inf);
    at::Tensor t = empty_huge({chunk, vocab}, f32).fill_(minus_inf);
    at::Tensor g = compute_grad ? empty_huge({chunk, vocab}, f32) : at::Tensor();
    StudentGrads student_grads(student, student_weight, compute_grad ? chunk : 0);
    for (int64_t start = 0; start < rows; start += chunk) {
      const int64_t c = std::min(chunk, rows - start);
      at::Tensor sc = s.narrow(0, 0, c), tc = t.narrow(0, 0, c);
      const at::Tensor xs = student.rows(start, c);
      student.logits(sc, xs, logit_scale, softcap);
      teacher.logits(tc, teacher.rows(start, c), logit_scale, softcap);
      const DistillParams p = fused_linear_chunk_params(c, vocab, T, alpha, beta, divergence,
                                                        ignore_index, y.defined(), compute_grad);
      distill_rows_float32_cpu(sc.const_data_ptr<float>(), tc.const_data_ptr<float>(),
                               y.defined() ? y.const_data_ptr<int64_t>() + start : nullptr,
                               grad_scale, p, compute_grad ? g.mutable_data_ptr<float>() : nullptr,
                               loss_rows.mutable_data_ptr<float>() + start,
                               soft_rows.mutable_data_ptr<float>() + start,
                               hard_rows.mutable_data_ptr<float>() + start);
      if (!compute_grad) continue;
      at::Tensor gc = g.narrow(0, 0, c).narrow(1, 0, vocab_s);
      if (per_row) gc.mul_(rw.narrow(0, start, c).unsqueeze(1));
      chain_rule_(gc, sc.narrow(1, 0, vocab_s), logit_scale, softcap);
      at::Tensor gh = grad_h.narrow(0, start, c);
      student_grads(gc, xs, gh, grad_w);
      if (student_bias.has_value()) grad_b.add_(gc.sum(0));
    }
  }
  at::Tensor loss = (loss_rows * rw).sum();
  if (!compute_grad) {
    auto none = [&] { return at::empty({0}, student_hidden.options()); };
    return {loss, loss_rows, soft_rows, hard_rows, none(), none(), none()};
  }
  return {loss, loss_rows, soft_rows, hard_rows, cast_huge(grad_h, student_hidden.scalar_type()),
          cast_huge(grad_w, student_weight.scalar_type()),
          student_bias.has_value() ? grad_b.to(student_bias->scalar_type())
                                   : at::empty({0}, student_hidden.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CPU, m) {
  m.impl("fused_linear_distill", &fused_linear_distill_cpu);
}

}  // namespace sparsedistill
