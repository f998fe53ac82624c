// Plain-C++ description of one fused distillation-loss launch, shared by the C++ CPU kernel,
// the CUDA kernel and their host wrappers. Deliberately free of torch headers so that the
// .cu files that include it compile quickly with nvcc.
#pragma once
#include <cstdint>

namespace sparsedistill {

// Divergence codes; sparsedistill/distill/checks.py uses the same numbers (a test reads this
// enum and compares).
enum Divergence : int64_t { kForwardKL = 0, kReverseKL = 1, kJSD = 2 };

struct DistillParams {
  int64_t rows = 0;          // N: number of logit rows
  int64_t vocab = 0;         // V: classes per row (row stride, rows are contiguous)
  float temperature = 1.f;   // T > 0
  float alpha = 0.5f;        // weight of the soft term; (1 - alpha) weighs the hard term
  float beta = 0.5f;         // JSD mixture weight, 0 < beta < 1 when divergence == kJSD
  int64_t divergence = kForwardKL;
  int64_t ignore_index = -100;
  bool has_labels = false;   // labels == nullptr <=> !has_labels
  bool compute_grad = false; // write d(loss_row)/d(student_row) into grad
};

}  // namespace sparsedistill
