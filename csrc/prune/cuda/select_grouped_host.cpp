// CUDA host wrapper of sparsedistill::select_smallest_grouped: checks (csrc/prune/checks.h),
// one launch of select_grouped_kernel.cu on the current stream, then one host synchronisation
// to raise the k / NaN errors of the CPU kernel (same messages, same order).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_host.h"
#include "prune/checks.h"
#include "prune/cuda/select_grouped_kernel.h"

namespace sparsedistill {
namespace {

// The mask of the selection (by |x| * col_scale when given), after the one synchronisation that
// raises the k / NaN errors.
at::Tensor grouped_mask_cuda(const at::Tensor& values, const std::optional<at::Tensor>& keep,
                             int64_t group_rows, int64_t group_cols, const at::Tensor& k, bool magnitude,
                             const std::optional<at::Tensor>& col_scale) {
  SD_CHECK_ARG(values.is_cuda(), "values must be a CUDA tensor, got ", device_str(values));
  const c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor v = values.contiguous(), kc = k.contiguous();
  const at::Tensor e = keep.has_value() ? keep->contiguous() : at::Tensor();
  at::Tensor mask = at::empty(v.sizes(), v.options().dtype(at::kBool));
  if (v.numel() == 0) return mask;
  const at::Tensor scale = col_scale.has_value() ? col_scale->contiguous() : at::Tensor();
  at::Tensor status = at::zeros({2}, v.options().dtype(at::kLong));
  const cudaError_t err = launch_select_grouped(
      v.const_data_ptr(), to_kernel_dtype(v.scalar_type()),
      e.defined() ? reinterpret_cast<const uint8_t*>(e.const_data_ptr<bool>()) : nullptr,
      kc.const_data_ptr<int64_t>(), v.size(0), v.size(1), group_rows, group_cols, magnitude,
      scale.defined() ? scale.const_data_ptr<float>() : nullptr,
      reinterpret_cast<uint8_t*>(mask.mutable_data_ptr<bool>()),
      reinterpret_cast<unsigned long long*>(status.mutable_data_ptr<int64_t>()),
      c10::cuda::getCurrentCUDAStream());
  SD_CHECK_LAUNCH(err, "select_smallest_grouped");
  const at::Tensor host = status.cpu();  // the one synchronisation
  const int64_t bad = host.const_data_ptr<int64_t>()[0] - 1;
  if (bad >= 0) {
    const int64_t grid_cols = v.size(1) / group_cols;
    const int64_t r0 = (bad / grid_cols) * group_rows, c0 = (bad % grid_cols) * group_cols;
    const int64_t eligible = e.defined() ? e.narrow(0, r0, group_rows).narrow(1, c0, group_cols).sum().item<int64_t>()
                                         : group_rows * group_cols;
    check_grouped_k(bad, eligible, kc.view(-1)[bad].item<int64_t>());
  }
  check_grouped_no_nan(host.const_data_ptr<int64_t>()[1] != 0);
  return mask;
}

at::Tensor select_smallest_grouped_cuda(const at::Tensor& values, const std::optional<at::Tensor>& keep,
                                        int64_t group_rows, int64_t group_cols, const at::Tensor& k,
                                        bool magnitude) {
  check_grouped_args(values, keep, group_rows, group_cols, k);
  return grouped_mask_cuda(values, keep, group_rows, group_cols, k, magnitude, std::nullopt);
}

// zero_smallest_grouped: the mask first (every error raised before a write), then the pruned
// values zeroed by one masked_fill_ on the stream (a separate pass, unlike the CPU kernel).
void zero_smallest_grouped_cuda(const at::Tensor& values, const std::optional<at::Tensor>& mask,
                                const std::optional<at::Tensor>& keep, int64_t group_rows,
                                int64_t group_cols, const at::Tensor& k,
                                const std::optional<at::Tensor>& col_scale) {
  check_zero_grouped_args(values, mask, keep, group_rows, group_cols, k, col_scale);
  const at::Tensor sel = grouped_mask_cuda(values, keep, group_rows, group_cols, k, true, col_scale);
  const c10::cuda::CUDAGuard guard(values.device());
  if (mask.has_value()) mask->copy_(sel);
  values.masked_fill_(sel.logical_not(), 0);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CUDA, m) {
  m.impl("select_smallest_grouped", &select_smallest_grouped_cuda);
  m.impl("zero_smallest_grouped", &zero_smallest_grouped_cuda);
}

}  // namespace sparsedistill
