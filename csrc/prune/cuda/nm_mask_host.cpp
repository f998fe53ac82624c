// CUDA host wrapper of sparsedistill::nm_mask: checks (csrc/prune_checks.h), allocates the mask
// and launches the kernel of nm_mask_kernel.cu on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_host.h"
#include "prune/checks.h"
#include "prune/cuda/nm_mask_kernel.h"

namespace sparsedistill {
namespace {

constexpr int64_t kNmMaskKernelMaxGroup = 64;  // the kernel's group sizes; larger ones sort

at::Tensor nm_mask_cuda(const at::Tensor& values, int64_t n, int64_t m, bool magnitude) {
  check_nm_mask_args(values, n, m);
  SD_CHECK_ARG(values.is_cuda(), "values must be a CUDA tensor, got ", device_str(values));
  const c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor x = values.contiguous();
  if (m > kNmMaskKernelMaxGroup && x.numel() > 0) {
    // One thread per group ranks by O(m^2) compares: above a few dozen, a stable sort per group
    // (the reference's order exactly: key ascending, ties by index, NaN last) is faster.
    const at::Tensor groups = (magnitude ? x.abs() : x).reshape({-1, m});
    const at::Tensor order = std::get<1>(groups.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/false));
    at::Tensor keep = at::ones(groups.sizes(), x.options().dtype(at::kBool));
    keep.scatter_(-1, order.narrow(-1, 0, m - n), false);
    return keep.reshape(x.sizes());
  }
  at::Tensor keep = at::empty(x.sizes(), x.options().dtype(at::kBool));
  const cudaError_t err = launch_nm_mask(
      x.const_data_ptr(), to_kernel_dtype(x.scalar_type()), x.numel() / m, m, m - n, magnitude,
      reinterpret_cast<uint8_t*>(keep.mutable_data_ptr<bool>()), c10::cuda::getCurrentCUDAStream());
  SD_CHECK_LAUNCH(err, "nm_mask");
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CUDA, m) { m.impl("nm_mask", &nm_mask_cuda); }

}  // namespace sparsedistill
