// CUDA host code of sparsedistill::fused_linear_distill: the chunk loop of
// csrc/distill/fused_linear_cpu.cpp on the CUDA key, with cuBLAS GEMMs through ATen and the
// distillation kernel of kernel.cu (launch_distill_loss) per chunk, all on the current stream
// and with no host synchronisation inside the loop (the row weight is read by the kernel from
// device memory; labels are range-checked by the Python layer, a bad one gives a NaN row).
//
// Logits of bfloat16 / float16 inputs are computed by at::mm(..., out_dtype=float32): float32
// accumulation and float32 results, never rounded to 16 bits. The chunk gradient G is float32;
// for 16-bit inputs it is rounded to the input dtype for the two gradient GEMMs, which
// accumulate in float32 (grad_W_s += G.T @ h_s[chunk] into a float32 accumulator).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "common/cuda_host.h"
#include "distill/checks.h"
#include "distill/cuda/kernel.h"
#include "distill/fused_linear.h"

namespace sparsedistill {
namespace {

bool is_16bit(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf;
}

// a @ b in float32: out_dtype GEMM for 16-bit operands, else a float32 GEMM.
at::Tensor mm_f32(const at::Tensor& a, const at::Tensor& b) {
  if (is_16bit(a) && a.scalar_type() == b.scalar_type()) return at::mm(a, b, at::kFloat);
  return at::mm(a.to(at::kFloat), b.to(at::kFloat));
}

// One model's logits of a chunk into z (c x V; columns past W.size(0) keep their -inf).
void chunk_logits(at::Tensor& z, const at::Tensor& h, const at::Tensor& w,
                  const std::optional<at::Tensor>& b, double scale, double cap) {
  at::Tensor out = z.narrow(1, 0, w.size(0));
  out.copy_(mm_f32(h, w.t()));
  if (b.has_value()) out.add_(*b);
  transform_logits_(out, scale, cap);
}

FusedLinearOutputs fused_linear_distill_cuda(
    const at::Tensor& student_hidden, const at::Tensor& student_weight,
    const std::optional<at::Tensor>& student_bias, const at::Tensor& teacher_hidden,
    const at::Tensor& teacher_weight, const std::optional<at::Tensor>& teacher_bias,
    const std::optional<at::Tensor>& labels, const at::Tensor& row_weight, double T, double alpha,
    double beta, int64_t divergence, int64_t ignore_index, double logit_scale, double softcap,
    bool pad_vocab, int64_t chunk_rows, bool compute_grad) {
  check_fused_linear_args(student_hidden, student_weight, student_bias, teacher_hidden,
                          teacher_weight, teacher_bias, labels, row_weight, T, alpha, beta,
                          divergence, logit_scale, softcap, pad_vocab, chunk_rows);
  SD_CHECK_ARG(student_hidden.is_cuda(), "student_hidden must be a CUDA tensor, got ",
               device_str(student_hidden));
  const c10::cuda::CUDAGuard guard(student_hidden.device());
  const int64_t rows = student_hidden.size(0), vocab_s = student_weight.size(0);
  const int64_t hidden_s = student_hidden.size(1);
  const int64_t vocab = std::max(vocab_s, teacher_weight.size(0));
  const auto f32 = student_hidden.options().dtype(at::kFloat);
  const at::Tensor y = labels.has_value() ? labels->contiguous() : at::Tensor();
  const bool per_row = row_weight.dim() == 1;
  const at::Tensor rw = row_weight.contiguous();
  // The kernel's grad_scale: the row weight itself (a device scalar), or 1 with per-row weights
  // (applied to G afterwards).
  const at::Tensor kernel_scale = per_row ? at::ones({}, f32) : rw;
  const std::optional<at::Tensor> bs = student_bias.has_value()
      ? std::optional<at::Tensor>(student_bias->to(at::kFloat)) : std::nullopt;
  const std::optional<at::Tensor> bt = teacher_bias.has_value()
      ? std::optional<at::Tensor>(teacher_bias->to(at::kFloat)) : std::nullopt;

  at::Tensor loss_rows = at::empty({rows}, f32), soft_rows = at::empty({rows}, f32),
             hard_rows = at::empty({rows}, f32);
  at::Tensor grad_h, grad_w, grad_b;
  if (compute_grad) {
    grad_h = at::empty({rows, hidden_s}, f32);
    grad_w = at::zeros({vocab_s, hidden_s}, f32);
    grad_b = at::zeros({vocab_s}, f32);
  }
  const int64_t chunk = std::min(chunk_rows, rows);
  if (chunk > 0) {
    const float minus_inf = -std::numeric_limits<float>::infinity();
    at::Tensor s = at::full({chunk, vocab}, minus_inf, f32);
    at::Tensor t = at::full({chunk, vocab}, minus_inf, f32);
    at::Tensor g = compute_grad ? at::empty({chunk, vocab}, f32) : at::Tensor();
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    for (int64_t start = 0; start < rows; start += chunk) {
      const int64_t c = std::min(chunk, rows - start);
      at::Tensor sc = s.narrow(0, 0, c), tc = t.narrow(0, 0, c);
      const at::Tensor h = student_hidden.narrow(0, start, c);
      chunk_logits(sc, h, student_weight, bs, logit_scale, softcap);
      chunk_logits(tc, teacher_hidden.narrow(0, start, c), teacher_weight, bt, logit_scale, softcap);
      const DistillParams p = fused_linear_chunk_params(c, vocab, T, alpha, beta, divergence,
                                                        ignore_index, y.defined(), compute_grad);
      const cudaError_t err = launch_distill_loss(
          sc.const_data_ptr(), tc.const_data_ptr(),
          y.defined() ? y.const_data_ptr<int64_t>() + start : nullptr,
          kernel_scale.const_data_ptr<float>(), compute_grad ? g.mutable_data_ptr() : nullptr,
          loss_rows.mutable_data_ptr<float>() + start, soft_rows.mutable_data_ptr<float>() + start,
          hard_rows.mutable_data_ptr<float>() + start, DType::kFloat32, p, stream);
      SD_CHECK_LAUNCH(err, "fused_linear_distill");
      if (!compute_grad) continue;
      at::Tensor gc = g.narrow(0, 0, c).narrow(1, 0, vocab_s);
      if (per_row) gc.mul_(rw.narrow(0, start, c).unsqueeze(1));
      chain_rule_(gc, sc.narrow(1, 0, vocab_s), logit_scale, softcap);
      at::Tensor gh = grad_h.narrow(0, start, c);
      if (is_16bit(student_hidden)) {
        const at::Tensor g16 = gc.to(student_hidden.scalar_type());
        gh.copy_(at::mm(g16, student_weight, at::kFloat));
        at::addmm_out(grad_w, grad_w, g16.t(), h, at::kFloat);
      } else {
        const at::Tensor w32 = student_weight.to(at::kFloat);
        at::mm_out(gh, gc, w32);
        grad_w.addmm_(gc.t(), h.to(at::kFloat));
      }
      if (bs.has_value()) grad_b.add_(gc.sum(0));
    }
  }
  at::Tensor loss = (loss_rows * rw).sum();
  if (!compute_grad) {
    auto none = [&] { return at::empty({0}, student_hidden.options()); };
    return {loss, loss_rows, soft_rows, hard_rows, none(), none(), none()};
  }
  return {loss, loss_rows, soft_rows, hard_rows, grad_h.to(student_hidden.scalar_type()),
          grad_w.to(student_weight.scalar_type()),
          student_bias.has_value() ? grad_b.to(student_bias->scalar_type())
                                   : at::empty({0}, student_hidden.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CUDA, m) {
  m.impl("fused_linear_distill", &fused_linear_distill_cuda);
}

}  // namespace sparsedistill
