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

at::Tensor select_smallest_grouped_cuda(const at::Tensor& values, const std::optional<at::Tensor>& keep,
                                        int64_t group_rows, int64_t group_cols, const at::Tensor& k,
                                        bool magnitude) {
  check_grouped_args(values, keep, group_rows, group_cols, k);
  SD_CHECK_ARG(values.is_cuda(), "values must be a CUDA tensor, got ", device_str(values));
  const c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor v = values.contiguous(), kc = k.contiguous();
  const at::Tensor e = keep.has_value() ? keep->contiguous() : at::Tensor();
  at::Tensor mask = at::empty(v.sizes(), v.options().dtype(at::kBool));
  if (v.numel() == 0) return mask;
  at::Tensor status = at::zeros({2}, v.options().dtype(at::kLong));
  const cudaError_t err = launch_select_grouped(
      v.const_data_ptr(), to_kernel_dtype(v.scalar_type()),
      e.defined() ? reinterpret_cast<const uint8_t*>(e.const_data_ptr<bool>()) : nullptr,
      kc.const_data_ptr<int64_t>(), v.size(0), v.size(1), group_rows, group_cols, magnitude,
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
    check_grouped_k(0, bad, eligible, kc.view(-1)[bad].item<int64_t>());
  }
  check_grouped_no_nan(host.const_data_ptr<int64_t>()[1] != 0);
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CUDA, m) {
  m.impl("select_smallest_grouped", &select_smallest_grouped_cuda);
}

}  // namespace sparsedistill
