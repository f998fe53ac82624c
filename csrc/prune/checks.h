// Argument checks of the pruning ops (select_smallest, nm_mask), shared by the C++ CPU kernels
// and the CUDA host wrappers so that every backend accepts and rejects the same calls with the
// same messages (sparsedistill/prune/checks.py mirrors them for the reference kernels).
#pragma once
#include <optional>

#include "common/checks.h"

namespace sparsedistill {

// values: floating point, all on `device`; keep (if given): one bool mask per tensor, of its
// shape, on its device.
inline void check_select_args(at::TensorList values, const std::optional<at::TensorList>& keep,
                              const at::Device& device) {
  SD_CHECK_ARG(!keep.has_value() || keep->size() == values.size(),
               "keep must hold one mask per tensor (", static_cast<int64_t>(values.size()),
               "), got ", static_cast<int64_t>(keep ? keep->size() : 0));
  for (size_t i = 0; i < values.size(); ++i) {
    const auto index = static_cast<int64_t>(i);
    const at::Tensor& v = values[i];
    SD_CHECK_TYPE(is_float_dtype(v.scalar_type()), "values[", index,
                  "] must be floating point (float32, bfloat16, float16, float64), got ", dtype_str(v));
    SD_CHECK_ARG(v.device() == device, "values[", index, "] must be on ", device.str(), ", got ",
                 device_str(v));
    if (keep.has_value()) {
      const at::Tensor& m = (*keep)[i];
      SD_CHECK_ARG(m.scalar_type() == at::kBool && m.sizes() == v.sizes() && m.device() == v.device(),
                   "keep[", index, "] must be a bool tensor of the shape of values[", index, "] ",
                   shape_str(v), " on its device");
    }
  }
}

// zero_smallest(tensors, masks, scores, keep, k): tensors to zero (floating point), masks to
// write (bool, one per tensor, of its shape), scores (if given) of the same shapes and devices.
inline void check_zero_smallest_args(at::TensorList tensors, at::TensorList masks,
                                     const std::optional<at::TensorList>& scores) {
  SD_CHECK_ARG(masks.size() == tensors.size(), "masks must hold one mask per tensor (",
               static_cast<int64_t>(tensors.size()), "), got ", static_cast<int64_t>(masks.size()));
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto index = static_cast<int64_t>(i);
    SD_CHECK_TYPE(is_float_dtype(tensors[i].scalar_type()), "tensors[", index,
                  "] must be floating point (float32, bfloat16, float16, float64), got ",
                  dtype_str(tensors[i]));
    SD_CHECK_ARG(masks[i].scalar_type() == at::kBool && masks[i].sizes() == tensors[i].sizes() &&
                     masks[i].device() == tensors[i].device(),
                 "masks[", index, "] must be a bool tensor of the shape and device of tensors[", index,
                 "] ", shape_str(tensors[i]));
  }
  if (!scores.has_value()) return;
  SD_CHECK_ARG(scores->size() == tensors.size(), "scores must hold one tensor per tensor (",
               static_cast<int64_t>(tensors.size()), "), got ", static_cast<int64_t>(scores->size()));
  for (size_t i = 0; i < tensors.size(); ++i)
    SD_CHECK_ARG((*scores)[i].sizes() == tensors[i].sizes() && (*scores)[i].device() == tensors[i].device(),
                 "scores[", static_cast<int64_t>(i), "] must have the shape and device of tensors[",
                 static_cast<int64_t>(i), "] ", shape_str(tensors[i]));
}

inline void check_select_k(int64_t k, int64_t eligible) {
  SD_CHECK_ARG(k >= 0 && k <= eligible, "k must lie in [0, ", eligible,
               "] (the eligible elements), got ", k);
}

inline void check_select_no_nan(bool has_nan, int64_t tensor) {
  SD_CHECK_ARG(!has_nan, "tensors[", tensor,
               "] (or its scores) holds NaN: magnitudes must be comparable");
}

// nm_mask(values, n, m, magnitude): groups of m consecutive elements along the last dim.
inline void check_nm_mask_args(const at::Tensor& values, int64_t n, int64_t m) {
  SD_CHECK_TYPE(is_float_dtype(values.scalar_type()),
                "values must be floating point (float32, bfloat16, float16, float64), got ",
                dtype_str(values));
  SD_CHECK_ARG(values.dim() >= 1, "values must have at least one dim");
  SD_CHECK_ARG(m >= 1, "m must be >= 1, got ", m);
  SD_CHECK_ARG(n >= 0 && n <= m, "n must lie in [0, m] = [0, ", m, "], got ", n);
  SD_CHECK_ARG(values.size(-1) % m == 0, "the last dim of values (size ", values.size(-1),
               ") must be divisible by m = ", m);
}

// select_smallest_grouped(values, keep, group_rows, group_cols, k, magnitude): metadata only.
inline void check_grouped_args(const at::Tensor& values, const std::optional<at::Tensor>& keep,
                               int64_t group_rows, int64_t group_cols, const at::Tensor& k) {
  SD_CHECK_TYPE(is_float_dtype(values.scalar_type()),
                "values must be floating point (float32, bfloat16, float16, float64), got ",
                dtype_str(values));
  SD_CHECK_ARG(values.dim() == 2, "values must be 2-D (rows, columns), got shape ", shape_str(values));
  SD_CHECK_ARG(group_rows >= 1 && group_cols >= 1, "group_rows and group_cols must be >= 1, got ",
               group_rows, " and ", group_cols);
  SD_CHECK_ARG(values.size(0) % group_rows == 0 && values.size(1) % group_cols == 0, "groups of ",
               group_rows, " x ", group_cols, " must tile values ", shape_str(values),
               " exactly (rows divisible by group_rows, columns by group_cols)");
  if (keep.has_value())
    SD_CHECK_ARG(keep->scalar_type() == at::kBool && keep->sizes() == values.sizes() &&
                     keep->device() == values.device(),
                 "keep must be a bool tensor of the shape of values ", shape_str(values), " on its device");
  const int64_t gr = values.size(0) / group_rows, gc = values.size(1) / group_cols;
  SD_CHECK_ARG(k.scalar_type() == at::kLong && k.dim() == 2 && k.size(0) == gr && k.size(1) == gc &&
                   k.device() == values.device(),
               "k must be an int64 tensor of shape (", gr, ", ", gc,
               ") (one count per group) on the device of values");
}

inline void check_grouped_k(int64_t group, int64_t eligible, int64_t k) {
  SD_CHECK_ARG(k >= 0 && k <= eligible, "k[", group, "] (flat group index) must lie in [0, ", eligible,
               "] (the eligible elements of the group), got ", k);
}

// zero_smallest_grouped(values, mask, keep, group_rows, group_cols, k, col_scale): the grouped
// arguments, a bool mask of values' shape and device to write (or none), and col_scale (if
// given) a float32 vector of one factor per column.
inline void check_zero_grouped_args(const at::Tensor& values, const std::optional<at::Tensor>& mask,
                                    const std::optional<at::Tensor>& keep, int64_t group_rows,
                                    int64_t group_cols, const at::Tensor& k,
                                    const std::optional<at::Tensor>& col_scale) {
  check_grouped_args(values, keep, group_rows, group_cols, k);
  SD_CHECK_ARG(!mask.has_value() || (mask->scalar_type() == at::kBool && mask->sizes() == values.sizes() &&
                                      mask->device() == values.device()),
               "mask must be None or a bool tensor of the shape of values ", shape_str(values), " on its device");
  if (col_scale.has_value())
    SD_CHECK_ARG(col_scale->scalar_type() == at::kFloat && col_scale->dim() == 1 &&
                     col_scale->size(0) == values.size(1) && col_scale->device() == values.device(),
                 "col_scale must be a float32 vector of ", values.size(1),
                 " factors (one per column of values) on its device");
}

inline void check_grouped_no_nan(bool has_nan) {
  SD_CHECK_ARG(!has_nan, "values holds NaN: magnitudes (or scores) must be comparable");
}

// The distributed-selection steps (select_histogram, select_tie_counts, select_at_threshold).
inline void check_histogram_args(int64_t shift, int64_t prefix) {
  SD_CHECK_ARG(shift == 0 || shift == 16, "shift must be 0 or 16, got ", shift);
  SD_CHECK_ARG(prefix < 65536, "prefix must be < 65536 (16 key bits) or negative (all elements), got ", prefix);
}

inline void check_threshold_arg(int64_t threshold) {
  SD_CHECK_ARG(threshold >= 0 && threshold <= 0xffffffffLL,
               "threshold must be a 32-bit order key in [0, 4294967295], got ", threshold);
}

inline void check_prune_ties_arg(const at::Tensor& prune_ties, int64_t n) {
  SD_CHECK_ARG(prune_ties.scalar_type() == at::kLong && prune_ties.dim() == 1 && prune_ties.size(0) == n &&
                   prune_ties.device().is_cpu(),
               "prune_ties must be a CPU int64 vector of one count per tensor (", n, ")");
}

}  // namespace sparsedistill
