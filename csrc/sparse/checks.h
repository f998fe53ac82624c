// Argument checks of sparse_linear, sparse_linear_grad_input and sparse_linear_grad_values
// (schemas in sparsedistill/sparse/ops.py, layout in sparsedistill/sparse/reference.py), shared
// by the C++ CPU and the CUDA host wrappers; sparsedistill/sparse/checks.py mirrors them message
// for message for the reference kernels. They look at shapes, dtypes and devices only: the
// structure's contents (row_ptr monotone, columns in range) are not read here, since that would
// cost a pass and, on a GPU, a host sync. SparseWeight.validate() checks them once.
#pragma once
#include <climits>
#include <optional>

#include "common/checks.h"

namespace sparsedistill {

// Column indices 0..32767 fit a signed int16 (sparse/checks.py INT16_MAX_COLUMNS: a test
// reads this line and compares).
constexpr int64_t kInt16MaxColumns = 32768;

struct SparseLinearDims {
  int64_t batch;         // B: rows of input / grad_out
  int64_t in_features;
  int64_t out_features;  // row_ptr.size(0) - 1
  int64_t nnz;           // col_idx.size(0)
};

namespace sparse_detail {

// `like` is the dense operand that fixes the dtype and the device (input or grad_out).
inline void check_same_device(const char* op, const at::Tensor& t, const char* name,
                              const at::Tensor& like, const char* like_name) {
  SD_CHECK_ARG(t.device() == like.device(), op, ": ", name, " must be on the device of ",
               like_name, " (", device_str(like), "), got ", device_str(t));
}

inline void check_dense(const char* op, const at::Tensor& t, const char* name) {
  SD_CHECK_ARG(t.dim() == 2, op, ": ", name, " must be 2-D, got shape ", shape_str(t));
  SD_CHECK_TYPE(is_float_dtype(t.scalar_type()), op, ": ", name,
                " must be float32, bfloat16, float16 or float64, got ", dtype_str(t));
}

// row_ptr, col_idx and row_order; returns out_features. nnz is col_idx's length.
inline int64_t check_structure(const char* op, const at::Tensor& row_ptr,
                               const at::Tensor& col_idx, const at::Tensor& row_order,
                               int64_t in_features,
                               const at::Tensor& like, const char* like_name) {
  SD_CHECK_TYPE(row_ptr.scalar_type() == at::kLong, op, ": row_ptr must be int64, got ",
                dtype_str(row_ptr));
  SD_CHECK_ARG(row_ptr.dim() == 1 && row_ptr.size(0) >= 1, op,
               ": row_ptr must be 1-D of length out_features + 1 (>= 1), got shape ",
               shape_str(row_ptr));
  const int64_t out = row_ptr.size(0) - 1;
  // Rows are named by int32 entries of row_order.
  SD_CHECK_ARG(out <= INT_MAX, op, ": out_features must be at most ", INT_MAX, ", got ", out);
  SD_CHECK_TYPE(col_idx.scalar_type() == at::kShort || col_idx.scalar_type() == at::kInt, op,
                ": col_idx must be int16 or int32, got ", dtype_str(col_idx));
  SD_CHECK_ARG(col_idx.dim() == 1, op, ": col_idx must be 1-D, got shape ", shape_str(col_idx));
  SD_CHECK_TYPE(col_idx.scalar_type() == at::kInt || in_features <= kInt16MaxColumns, op,
                ": col_idx must be int32 when in_features > ", kInt16MaxColumns, " (int16 holds columns < ",
                kInt16MaxColumns, "), got int16 with in_features ", in_features);
  SD_CHECK_TYPE(row_order.scalar_type() == at::kInt, op, ": row_order must be int32, got ",
                dtype_str(row_order));
  SD_CHECK_ARG(row_order.dim() == 1 && row_order.size(0) == out, op,
               ": row_order must have shape (", out, ") (one entry per row), got ",
               shape_str(row_order));
  check_same_device(op, row_ptr, "row_ptr", like, like_name);
  check_same_device(op, col_idx, "col_idx", like, like_name);
  check_same_device(op, row_order, "row_order", like, like_name);
  return out;
}

inline void check_values(const char* op, const at::Tensor& values, const at::Tensor& col_idx,
                         const at::Tensor& like, const char* like_name) {
  SD_CHECK_ARG(values.dim() == 1, op, ": values must be 1-D, got shape ", shape_str(values));
  SD_CHECK_TYPE(values.scalar_type() == like.scalar_type(), op, ": values must have the dtype of ",
                like_name, " (", dtype_str(like), "), got ", dtype_str(values));
  SD_CHECK_ARG(col_idx.size(0) == values.size(0), op, ": col_idx must have the length of values (",
               values.size(0), "), got ", col_idx.size(0));
  check_same_device(op, values, "values", like, like_name);
}

}  // namespace sparse_detail

// sparse_linear(input (B, in), values, row_ptr, col_idx, row_order, in_features, bias?).
inline SparseLinearDims check_sparse_linear_args(const at::Tensor& input, const at::Tensor& values,
                                                 const at::Tensor& row_ptr,
                                                 const at::Tensor& col_idx,
                                                 const at::Tensor& row_order, int64_t in_features,
                                                 const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparse_linear";
  using namespace sparse_detail;
  SD_CHECK_ARG(in_features >= 0, op, ": in_features must be >= 0, got ", in_features);
  check_dense(op, input, "input");
  SD_CHECK_ARG(input.size(1) == in_features, op, ": input must have shape (B, in_features=",
               in_features, "), got ", shape_str(input));
  const int64_t out = check_structure(op, row_ptr, col_idx, row_order, in_features, input, "input");
  check_values(op, values, col_idx, input, "input");
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    SD_CHECK_ARG(b.dim() == 1 && b.size(0) == out, op, ": bias must have shape (", out,
                 ") (out_features), got ", shape_str(b));
    SD_CHECK_TYPE(b.scalar_type() == input.scalar_type(), op, ": bias must have the dtype of input (",
                  dtype_str(input), "), got ", dtype_str(b));
    check_same_device(op, b, "bias", input, "input");
  }
  return {input.size(0), in_features, out, col_idx.size(0)};
}

// sparse_linear_grad_input(grad_out (B, out), values, row_ptr, col_idx, row_order, in_features).
inline SparseLinearDims check_sparse_linear_grad_input_args(
    const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& row_ptr,
    const at::Tensor& col_idx, const at::Tensor& row_order, int64_t in_features) {
  constexpr const char* op = "sparse_linear_grad_input";
  using namespace sparse_detail;
  SD_CHECK_ARG(in_features >= 0, op, ": in_features must be >= 0, got ", in_features);
  check_dense(op, grad_out, "grad_out");
  const int64_t out = check_structure(op, row_ptr, col_idx, row_order, in_features, grad_out, "grad_out");
  SD_CHECK_ARG(grad_out.size(1) == out, op, ": grad_out must have shape (B, out_features=", out,
               "), got ", shape_str(grad_out));
  check_values(op, values, col_idx, grad_out, "grad_out");
  return {grad_out.size(0), in_features, out, col_idx.size(0)};
}

// sparse_linear_grad_values(grad_out (B, out), input (B, in), row_ptr, col_idx, row_order).
inline SparseLinearDims check_sparse_linear_grad_values_args(const at::Tensor& grad_out,
                                                             const at::Tensor& input,
                                                             const at::Tensor& row_ptr,
                                                             const at::Tensor& col_idx,
                                                             const at::Tensor& row_order) {
  constexpr const char* op = "sparse_linear_grad_values";
  using namespace sparse_detail;
  check_dense(op, input, "input");
  check_dense(op, grad_out, "grad_out");
  const int64_t out = check_structure(op, row_ptr, col_idx, row_order, input.size(1), input, "input");
  SD_CHECK_ARG(grad_out.size(0) == input.size(0) && grad_out.size(1) == out, op,
               ": grad_out must have shape (B=", input.size(0), ", out_features=", out,
               "), got ", shape_str(grad_out));
  SD_CHECK_TYPE(grad_out.scalar_type() == input.scalar_type(), op,
                ": grad_out must have the dtype of input (", dtype_str(input), "), got ",
                dtype_str(grad_out));
  check_same_device(op, grad_out, "grad_out", input, "input");
  return {input.size(0), input.size(1), out, col_idx.size(0)};
}

}  // namespace sparsedistill
