// CUDA host wrappers of sparse_linear, sparse_linear_grad_input and sparse_linear_grad_values:
// checks (sparse/checks.h), the dense operands' layout the kernels want (transposed
// to batch-minor above kSparseRowSplitMaxBatch, see kernel.cu for why), the
// outputs, and launches on the current stream. No host syncs.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_host.h"
#include "sparse/checks.h"
#include "sparse/cuda/kernel.h"

namespace sparsedistill {
namespace {

// The structure, made contiguous; `keep` holds the contiguous tensors the pointers point into.
SparseStructure structure_of(const at::Tensor& row_ptr, const at::Tensor& col_idx,
                             const at::Tensor& row_order, const SparseLinearDims& d,
                             std::vector<at::Tensor>& keep) {
  keep = {row_ptr.contiguous(), col_idx.contiguous(), row_order.contiguous()};
  SparseStructure w;
  w.row_ptr = keep[0].const_data_ptr<int64_t>();
  w.col_idx = keep[1].const_data_ptr();
  w.row_order = keep[2].const_data_ptr<int32_t>();
  w.index = col_idx.scalar_type() == at::kShort ? SparseIndex::kInt16 : SparseIndex::kInt32;
  w.out_features = d.out_features;
  w.in_features = d.in_features;
  w.nnz = d.nnz;
  return w;
}

// (B, n) as the kernels want it: as is for a small batch, else transposed to (n, B).
at::Tensor dense_operand(const at::Tensor& t, int64_t batch) {
  return sparse_batch_minor(batch) ? t.t().contiguous() : t.contiguous();
}

void check_launch(cudaError_t err, const char* op) { SD_CHECK_LAUNCH(err, op); }

at::Tensor sparse_linear_cuda(const at::Tensor& input, const at::Tensor& values,
                              const at::Tensor& row_ptr, const at::Tensor& col_idx,
                              const at::Tensor& row_order, int64_t in_features,
                              const std::optional<at::Tensor>& bias) {
  const SparseLinearDims d =
      check_sparse_linear_args(input, values, row_ptr, col_idx, row_order, in_features, bias);
  SD_CHECK_ARG(input.is_cuda(), "sparse_linear: input must be a CUDA tensor, got ",
               device_str(input));
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor y = at::empty({d.batch, d.out_features}, input.options());
  if (d.batch == 0 || d.out_features == 0) return y;
  std::vector<at::Tensor> keep;
  const SparseStructure w = structure_of(row_ptr, col_idx, row_order, d, keep);
  const at::Tensor x = dense_operand(input, d.batch), v = values.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  check_launch(launch_sparse_linear(x.const_data_ptr(), v.const_data_ptr(), w,
                                    b.defined() ? b.const_data_ptr() : nullptr,
                                    y.mutable_data_ptr(), to_kernel_dtype(input.scalar_type()),
                                    d.batch, c10::cuda::getCurrentCUDAStream()),
               "sparse_linear");
  return y;
}

at::Tensor sparse_linear_grad_input_cuda(const at::Tensor& grad_out, const at::Tensor& values,
                                         const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                         const at::Tensor& row_order, int64_t in_features) {
  const SparseLinearDims d = check_sparse_linear_grad_input_args(grad_out, values, row_ptr,
                                                                 col_idx, row_order, in_features);
  SD_CHECK_ARG(grad_out.is_cuda(), "sparse_linear_grad_input: grad_out must be a CUDA tensor, got ",
               device_str(grad_out));
  const c10::cuda::CUDAGuard guard(grad_out.device());
  if (d.batch == 0 || d.in_features == 0 || d.nnz == 0)
    return at::zeros({d.batch, d.in_features}, grad_out.options());
  // Atomics accumulate in float32 (float64 for float64), in the kernels' layout.
  const at::ScalarType acc_type = grad_out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool minor = sparse_batch_minor(d.batch);
  at::Tensor acc = minor ? at::zeros({d.in_features, d.batch}, grad_out.options().dtype(acc_type))
                         : at::zeros({d.batch, d.in_features}, grad_out.options().dtype(acc_type));
  std::vector<at::Tensor> keep;
  const SparseStructure w = structure_of(row_ptr, col_idx, row_order, d, keep);
  const at::Tensor g = dense_operand(grad_out, d.batch), v = values.contiguous();
  check_launch(launch_sparse_linear_grad_input(g.const_data_ptr(), v.const_data_ptr(), w,
                                               acc.mutable_data_ptr(),
                                               to_kernel_dtype(grad_out.scalar_type()), d.batch,
                                               c10::cuda::getCurrentCUDAStream()),
               "sparse_linear_grad_input");
  if (!minor && acc_type == grad_out.scalar_type()) return acc;
  // One pass: cast and, for the batch-minor buffer, transpose back to (B, in).
  at::Tensor out = at::empty({d.batch, d.in_features}, grad_out.options());
  out.copy_(minor ? acc.t() : acc);
  return out;
}

at::Tensor sparse_linear_grad_values_cuda(const at::Tensor& grad_out, const at::Tensor& input,
                                          const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                          const at::Tensor& row_order) {
  const SparseLinearDims d =
      check_sparse_linear_grad_values_args(grad_out, input, row_ptr, col_idx, row_order);
  SD_CHECK_ARG(input.is_cuda(), "sparse_linear_grad_values: input must be a CUDA tensor, got ",
               device_str(input));
  const c10::cuda::CUDAGuard guard(input.device());
  if (d.batch == 0 || d.out_features == 0) return at::zeros({d.nnz}, input.options());
  at::Tensor grad_values = at::empty({d.nnz}, input.options());
  if (d.nnz == 0) return grad_values;
  std::vector<at::Tensor> keep;
  const SparseStructure w = structure_of(row_ptr, col_idx, row_order, d, keep);
  const at::Tensor g = dense_operand(grad_out, d.batch), x = dense_operand(input, d.batch);
  check_launch(launch_sparse_linear_grad_values(g.const_data_ptr(), x.const_data_ptr(), w,
                                                grad_values.mutable_data_ptr(),
                                                to_kernel_dtype(input.scalar_type()), d.batch,
                                                c10::cuda::getCurrentCUDAStream()),
               "sparse_linear_grad_values");
  return grad_values;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CUDA, m) {
  m.impl("sparse_linear", &sparse_linear_cuda);
  m.impl("sparse_linear_grad_input", &sparse_linear_grad_input_cuda);
  m.impl("sparse_linear_grad_values", &sparse_linear_grad_values_cuda);
}

}  // namespace sparsedistill
