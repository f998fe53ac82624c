// Argument checks of the distillation ops (distill_loss, scale_rows_), shared by the C++ CPU
// kernel and the CUDA host wrapper; sparsedistill/distill/checks.py mirrors them message for
// message for the reference kernels.
#pragma once
#include <cmath>
#include <optional>

#include "common/checks.h"
#include "distill/params.h"

namespace sparsedistill {

// Checks the arguments of sparsedistill::distill_loss and returns the launch description.
inline DistillParams check_distill_args(const at::Tensor& student, const at::Tensor& teacher,
                                        const std::optional<at::Tensor>& labels,
                                        const at::Tensor& grad_scale, double T,
                                        double alpha, double beta, int64_t divergence,
                                        int64_t ignore_index, bool compute_grad) {
  SD_CHECK_ARG(student.dim() == 2, "student must be 2-D (N, V), got shape ", shape_str(student));
  SD_CHECK_ARG(teacher.sizes() == student.sizes(), "teacher must have the shape of student ",
               shape_str(student), ", got ", shape_str(teacher));
  SD_CHECK_TYPE(is_float_dtype(student.scalar_type()),
                "student must be floating point (float32, bfloat16, float16, float64), got ",
                dtype_str(student));
  SD_CHECK_TYPE(teacher.scalar_type() == student.scalar_type(),
                "teacher must have the dtype of student (", dtype_str(student), "), got ",
                dtype_str(teacher));
  SD_CHECK_ARG(teacher.device() == student.device(), "teacher must be on the device of student (",
               device_str(student), "), got ", device_str(teacher));
  SD_CHECK_ARG(student.size(1) > 0 || student.size(0) == 0,
               "student must have at least one class (V > 0)");
  if (labels.has_value()) {
    const auto& y = *labels;
    SD_CHECK_TYPE(y.scalar_type() == at::kLong, "labels must be int64, got ", dtype_str(y));
    SD_CHECK_ARG(y.dim() == 1 && y.size(0) == student.size(0), "labels must have shape (",
                 student.size(0), "), got ", shape_str(y));
    SD_CHECK_ARG(y.device() == student.device(), "labels must be on the device of student (",
                 device_str(student), "), got ", device_str(y));
  }
  SD_CHECK_ARG(grad_scale.dim() == 0 && grad_scale.scalar_type() == at::kFloat &&
                   grad_scale.device() == student.device(),
               "grad_scale must be a 0-dim float32 tensor on the device of student");
  SD_CHECK_ARG(T > 0 && std::isfinite(T), "T must be finite and > 0, got ", T);
  SD_CHECK_ARG(alpha >= 0 && alpha <= 1, "alpha must lie in [0, 1], got ", alpha);
  SD_CHECK_ARG(beta >= 0 && beta <= 1, "beta must lie in [0, 1], got ", beta);
  SD_CHECK_ARG(divergence == kForwardKL || divergence == kReverseKL || divergence == kJSD,
               "divergence must be 0 (kl), 1 (reverse_kl) or 2 (jsd), got ", divergence);

  DistillParams p;
  p.rows = student.size(0);
  p.vocab = student.size(1);
  p.temperature = static_cast<float>(T);
  p.alpha = static_cast<float>(alpha);
  p.beta = static_cast<float>(beta);
  p.divergence = divergence;
  p.ignore_index = ignore_index;
  p.has_labels = labels.has_value();
  p.compute_grad = compute_grad;
  return p;
}

// Per-row outputs of distill_loss, allocated once for every backend.
struct DistillOutputs {
  at::Tensor loss, soft, hard, grad;
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> as_tuple() const {
    return {loss, soft, hard, grad};
  }
};

inline DistillOutputs alloc_distill_outputs(const at::Tensor& student, bool compute_grad) {
  auto rows_opts = student.options().dtype(at::kFloat);
  DistillOutputs out;
  out.loss = at::empty({student.size(0)}, rows_opts);
  out.soft = at::empty({student.size(0)}, rows_opts);
  out.hard = at::empty({student.size(0)}, rows_opts);
  out.grad = compute_grad ? at::empty_like(student, at::MemoryFormat::Contiguous)
                          : at::empty({0}, student.options());
  return out;
}

// float64 logits are computed like every dtype, in float32: run `kernel` on float32 copies and
// return the gradient in float64. Used by every backend so the dtype contract is the same.
template <typename Kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> distill_loss_via_float32(
    Kernel kernel, const at::Tensor& student, const at::Tensor& teacher,
    const std::optional<at::Tensor>& labels, const at::Tensor& grad_scale, double T, double alpha,
    double beta, int64_t divergence, int64_t ignore_index, bool compute_grad) {
  auto [loss, soft, hard, grad] =
      kernel(student.to(at::kFloat), teacher.to(at::kFloat), labels, grad_scale, T, alpha, beta,
             divergence, ignore_index, compute_grad);
  return {loss, soft, hard, grad.to(at::kDouble)};
}

// Checks the arguments of scale_rows_; float64 gradients (no native kernel) are scaled here.
// Returns true when nothing is left for the native kernel to do.
inline bool scale_rows_checked_or_done(at::Tensor& grad, const at::Tensor& row_scale) {
  SD_CHECK_ARG(grad.dim() == 2 && grad.is_contiguous(), "grad must be a contiguous (N, V) tensor");
  SD_CHECK_ARG(row_scale.dim() == 1 && row_scale.size(0) == grad.size(0) &&
                   row_scale.scalar_type() == at::kFloat && row_scale.device() == grad.device(),
               "row_scale must be float32 of shape (", grad.size(0), ") on the device of grad");
  if (grad.scalar_type() != at::kDouble) return false;
  grad.mul_(row_scale.unsqueeze(-1));
  return true;
}

}  // namespace sparsedistill

namespace sparsedistill {

// The label range check, with the message of distill/checks.py check_label_range.
inline void check_label_value(int64_t label, int64_t row, int64_t vocab, int64_t ignore_index) {
  SD_CHECK_ARG(label == ignore_index || (label >= 0 && label < vocab), "true_labels: row ", row,
               " holds ", label, ", which must lie in [0, ", vocab, ") or equal ignore_index=",
               ignore_index);
}

}  // namespace sparsedistill

namespace sparsedistill {

// One model's (hidden, weight, bias) of fused_linear_distill; `hs` is student_hidden, whose
// device every tensor must share.
inline void check_fused_linear_model(const char* name, const char* hname, const at::Tensor& h,
                                     const at::Tensor& w, const std::optional<at::Tensor>& b,
                                     const at::Tensor& hs) {
  const std::string who(name), hn(hname);
  SD_CHECK_TYPE(is_float_dtype(h.scalar_type()), hn,
                " must be floating point (float32, bfloat16, float16, float64), got ", dtype_str(h));
  SD_CHECK_ARG(w.dim() == 2 && w.size(1) == h.size(1), who, "_weight must have shape (V, ",
               h.size(1), ") to match the hidden size of ", hn, ", got ", shape_str(w));
  SD_CHECK_ARG(w.size(0) > 0, who, "_weight must have at least one class (V > 0)");
  SD_CHECK_TYPE(w.scalar_type() == h.scalar_type(), who, "_weight must have the dtype of ", hn,
                " (", dtype_str(h), "), got ", dtype_str(w));
  SD_CHECK_ARG(w.device() == hs.device(), who, "_weight must be on the device of student_hidden (",
               device_str(hs), "), got ", device_str(w));
  SD_CHECK_ARG(h.device() == hs.device(), hn, " must be on the device of student_hidden (",
               device_str(hs), "), got ", device_str(h));
  if (b.has_value()) {
    SD_CHECK_ARG(b->dim() == 1 && b->size(0) == w.size(0), who, "_bias must have shape (",
                 w.size(0), "), got ", shape_str(*b));
    SD_CHECK_TYPE(b->scalar_type() == h.scalar_type(), who, "_bias must have the dtype of ", hn,
                  " (", dtype_str(h), "), got ", dtype_str(*b));
    SD_CHECK_ARG(b->device() == hs.device(), who, "_bias must be on the device of student_hidden (",
                 device_str(hs), "), got ", device_str(*b));
  }
}

// Checks the arguments of sparsedistill::fused_linear_distill (distill/checks.py:
// check_fused_linear_distill_args, the same messages in the same order).
inline void check_fused_linear_args(const at::Tensor& hs, const at::Tensor& ws,
                                    const std::optional<at::Tensor>& bs, const at::Tensor& ht,
                                    const at::Tensor& wt, const std::optional<at::Tensor>& bt,
                                    const std::optional<at::Tensor>& labels,
                                    const at::Tensor& row_weight, double T, double alpha,
                                    double beta, int64_t divergence, double logit_scale,
                                    double softcap, bool pad_vocab, int64_t chunk_rows) {
  SD_CHECK_ARG(hs.dim() == 2, "student_hidden must be 2-D (N, H), got shape ", shape_str(hs));
  SD_CHECK_ARG(ht.dim() == 2 && ht.size(0) == hs.size(0),
               "teacher_hidden must be 2-D with the rows of student_hidden (", hs.size(0),
               ", H), got shape ", shape_str(ht));
  check_fused_linear_model("student", "student_hidden", hs, ws, bs, hs);
  check_fused_linear_model("teacher", "teacher_hidden", ht, wt, bt, hs);
  SD_CHECK_ARG(pad_vocab || wt.size(0) == ws.size(0), "student_weight has ", ws.size(0),
               " classes but teacher_weight has ", wt.size(0),
               " (vocabulary sizes differ; pad_vocab pads the smaller one with -inf logits)");
  if (labels.has_value()) {
    const auto& y = *labels;
    SD_CHECK_TYPE(y.scalar_type() == at::kLong, "labels must be int64, got ", dtype_str(y));
    SD_CHECK_ARG(y.dim() == 1 && y.size(0) == hs.size(0), "labels must have shape (", hs.size(0),
                 "), got ", shape_str(y));
    SD_CHECK_ARG(y.device() == hs.device(), "labels must be on the device of student_hidden (",
                 device_str(hs), "), got ", device_str(y));
  }
  SD_CHECK_ARG(row_weight.scalar_type() == at::kFloat && row_weight.device() == hs.device() &&
                   (row_weight.dim() == 0 || (row_weight.dim() == 1 && row_weight.size(0) == hs.size(0))),
               "row_weight must be a float32 tensor of shape () or (", hs.size(0),
               ") on the device of student_hidden");
  SD_CHECK_ARG(T > 0 && std::isfinite(T), "T must be finite and > 0, got ", T);
  SD_CHECK_ARG(alpha >= 0 && alpha <= 1, "alpha must lie in [0, 1], got ", alpha);
  SD_CHECK_ARG(beta >= 0 && beta <= 1, "beta must lie in [0, 1], got ", beta);
  SD_CHECK_ARG(divergence == kForwardKL || divergence == kReverseKL || divergence == kJSD,
               "divergence must be 0 (kl), 1 (reverse_kl) or 2 (jsd), got ", divergence);
  SD_CHECK_ARG(logit_scale > 0 && std::isfinite(logit_scale),
               "logit_scale must be finite and > 0, got ", logit_scale);
  SD_CHECK_ARG(softcap >= 0 && std::isfinite(softcap),
               "softcap must be finite and >= 0 (0: none), got ", softcap);
  SD_CHECK_ARG(chunk_rows >= 1, "chunk_rows must be >= 1, got ", chunk_rows);
}

// The launch description of one chunk of fused_linear_distill's row kernel (vocab: the padded
// class count max(Vs, Vt)).
inline DistillParams fused_linear_chunk_params(int64_t rows, int64_t vocab, double T, double alpha,
                                               double beta, int64_t divergence,
                                               int64_t ignore_index, bool has_labels,
                                               bool compute_grad) {
  DistillParams p;
  p.rows = rows;
  p.vocab = vocab;
  p.temperature = static_cast<float>(T);
  p.alpha = static_cast<float>(alpha);
  p.beta = static_cast<float>(beta);
  p.divergence = divergence;
  p.ignore_index = ignore_index;
  p.has_labels = has_labels;
  p.compute_grad = compute_grad;
  return p;
}

}  // namespace sparsedistill
