// The fused row kernel of distill_loss's C++ CPU kernel (cpu.cpp), on raw float32 buffers, for
// other CPU ops that produce logits themselves (fused_linear_cpu.cpp: one chunk of rows at a
// time). Labels are not range-checked here: the caller checks them.
#pragma once
#include <cstdint>

#include "distill/params.h"

namespace sparsedistill {

// student, teacher: p.rows x p.vocab contiguous float32 (-inf entries mean probability 0).
// labels: p.rows int64, or nullptr when !p.has_labels. grad: p.rows x p.vocab float32, written
// with grad_scale * d(loss_row)/d(student_row) when p.compute_grad (else nullptr).
// loss, soft, hard: p.rows float32 each. Rows run in parallel (at::parallel_for).
void distill_rows_float32_cpu(const float* student, const float* teacher, const int64_t* labels,
                              float grad_scale, const DistillParams& p, float* grad, float* loss,
                              float* soft, float* hard);

}  // namespace sparsedistill
