// Argument checks of the sparse_linear ops, shared by the C++ CPU and CUDA host wrappers.
// They cost O(1): the structure itself (row_ptr non-decreasing, columns in range and sorted)
// is validated once, when a weight is built (sparsedistill/sparse.py, validate_structure).
#pragma once
#include "common.h"

namespace sparsedistill {

struct SparseLinearShape {
  int64_t batch = 0, in = 0, out = 0, nnz = 0;
};

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

// row_ptr int64 (out + 1), col_idx int16/int32 (nnz), row_order int32 (out), all on `device`.
inline SparseLinearShape check_sparse_structure(const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                                const at::Tensor& row_order, int64_t in_features,
                                                const c10::Device& device) {
  SD_CHECK_ARG(in_features >= 0, "in_features must be >= 0, got ", in_features);
  SD_CHECK_TYPE(row_ptr.dim() == 1 && row_ptr.size(0) >= 1 && row_ptr.scalar_type() == at::kLong,
                "row_ptr must be a 1-D int64 tensor of length out_features + 1, got ",
                dtype_str(row_ptr), " of shape ", shape_str(row_ptr));
  SparseLinearShape s;
  s.in = in_features;
  s.out = row_ptr.size(0) - 1;
  SD_CHECK_TYPE(col_idx.dim() == 1 && (col_idx.scalar_type() == at::kShort || col_idx.scalar_type() == at::kInt),
                "col_idx must be a 1-D int16 or int32 tensor, got ", dtype_str(col_idx), " of shape ",
                shape_str(col_idx));
  SD_CHECK_ARG(col_idx.scalar_type() == at::kInt || in_features <= 32768,
               "col_idx must be int32 when in_features > 32768, got int16 with in_features ", in_features);
  s.nnz = col_idx.size(0);
  SD_CHECK_TYPE(row_order.dim() == 1 && row_order.size(0) == s.out && row_order.scalar_type() == at::kInt,
                "row_order must be int32 of shape (", s.out, "), got ", dtype_str(row_order),
                " of shape ", shape_str(row_order));
  for (const auto* t : {&row_ptr, &col_idx, &row_order})
    SD_CHECK_ARG(t->device() == device, "row_ptr, col_idx and row_order must be on ", device.str(),
                 ", got ", device_str(*t));
  return s;
}

// A dense (B, cols) operand with the dtype and device of `like`.
inline int64_t check_dense_operand(const at::Tensor& t, const char* name, int64_t cols,
                                   const at::Tensor& like, const char* like_name) {
  SD_CHECK_ARG(t.dim() == 2 && t.size(1) == cols, name, " must be 2-D (batch, ", cols, "), got shape ",
               shape_str(t));
  SD_CHECK_TYPE(t.scalar_type() == like.scalar_type(), name, " must have the dtype of ", like_name,
                " (", dtype_str(like), "), got ", dtype_str(t));
  SD_CHECK_ARG(t.device() == like.device(), name, " must be on the device of ", like_name, " (",
               device_str(like), "), got ", device_str(t));
  return t.size(0);
}

inline void check_values(const at::Tensor& values, const SparseLinearShape& s) {
  SD_CHECK_TYPE(is_float_dtype(values.scalar_type()),
                "values must be floating point (float32, bfloat16, float16, float64), got ",
                dtype_str(values));
  SD_CHECK_ARG(values.dim() == 1 && values.size(0) == s.nnz, "values must have shape (", s.nnz,
               ") like col_idx, got ", shape_str(values));
}

// sparse_linear(input, values, row_ptr, col_idx, row_order, in_features, bias)
inline SparseLinearShape check_sparse_linear_args(const at::Tensor& input, const at::Tensor& values,
                                                  const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                                  const at::Tensor& row_order, int64_t in_features,
                                                  const std::optional<at::Tensor>& bias) {
  SparseLinearShape s = check_sparse_structure(row_ptr, col_idx, row_order, in_features, values.device());
  check_values(values, s);
  s.batch = check_dense_operand(input, "input", in_features, values, "the weight values");
  if (bias.has_value()) {
    SD_CHECK_ARG(bias->dim() == 1 && bias->size(0) == s.out, "bias must have shape (", s.out,
                 "), got ", shape_str(*bias));
    SD_CHECK_TYPE(bias->scalar_type() == values.scalar_type() && bias->device() == values.device(),
                  "bias must have the dtype and device of the weight (", dtype_str(values), ", ",
                  device_str(values), "), got ", dtype_str(*bias), ", ", device_str(*bias));
  }
  return s;
}

// sparse_linear_grad_input(grad_out, values, row_ptr, col_idx, row_order, in_features)
inline SparseLinearShape check_sparse_linear_grad_input_args(
    const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& row_ptr,
    const at::Tensor& col_idx, const at::Tensor& row_order, int64_t in_features) {
  SparseLinearShape s = check_sparse_structure(row_ptr, col_idx, row_order, in_features, values.device());
  check_values(values, s);
  s.batch = check_dense_operand(grad_out, "grad_out", s.out, values, "the weight values");
  return s;
}

// sparse_linear_grad_values(grad_out, input, row_ptr, col_idx, row_order)
inline SparseLinearShape check_sparse_linear_grad_values_args(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& row_ptr,
    const at::Tensor& col_idx, const at::Tensor& row_order) {
  SD_CHECK_TYPE(is_float_dtype(input.scalar_type()),
                "input must be floating point (float32, bfloat16, float16, float64), got ", dtype_str(input));
  SD_CHECK_ARG(input.dim() == 2, "input must be 2-D (batch, in_features), got shape ", shape_str(input));
  SparseLinearShape s = check_sparse_structure(row_ptr, col_idx, row_order, input.size(1), input.device());
  s.batch = input.size(0);
  SD_CHECK_ARG(check_dense_operand(grad_out, "grad_out", s.out, input, "input") == s.batch,
               "grad_out must have the batch size of input (", s.batch, "), got ", grad_out.size(0));
  return s;
}

}  // namespace sparsedistill
