// CUDA host wrapper of sparsedistill::select_smallest: checks (csrc/prune_checks.h), allocates
// the masks, describes the tensors to the kernels of select_kernel.cu in one device array and
// launches them on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "common/cuda_host.h"
#include "prune/checks.h"
#include "prune/cuda/select_kernel.h"

namespace sparsedistill {
namespace {

std::vector<at::Tensor> select_smallest_cuda(at::TensorList values,
                                             const std::optional<at::TensorList>& keep, int64_t k,
                                             bool magnitude) {
  SD_CHECK_ARG(!values.empty() && values[0].is_cuda(), "values must be CUDA tensors");
  const at::Device device = values[0].device();
  check_select_args(values, keep, device);
  const c10::cuda::CUDAGuard guard(device);

  std::vector<at::Tensor> vs, ks, out;
  std::vector<SelectTensor> descs;
  int64_t num_chunks = 0, numel = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    vs.push_back(values[i].contiguous());
    ks.push_back(keep.has_value() ? (*keep)[i].contiguous() : at::Tensor());
    out.push_back(at::empty(vs[i].sizes(), vs[i].options().dtype(at::kBool)));
    numel += vs[i].numel();
    if (vs[i].numel() == 0) continue;  // the kernels' chunk lookup assumes non-empty tensors
    SelectTensor d{};
    d.values = vs[i].const_data_ptr();
    d.keep = ks[i].defined() ? reinterpret_cast<const uint8_t*>(ks[i].const_data_ptr<bool>()) : nullptr;
    d.mask = reinterpret_cast<uint8_t*>(out[i].mutable_data_ptr<bool>());
    d.numel = vs[i].numel();
    d.first_chunk = num_chunks;
    d.index = static_cast<int64_t>(i);
    d.dtype = to_kernel_dtype(vs[i].scalar_type());
    descs.push_back(d);
    num_chunks += (d.numel + kSelectChunk - 1) / kSelectChunk;
  }
  // Without keep masks the eligible count is known here: reject a bad k before any work.
  if (!keep.has_value() || num_chunks == 0) check_select_k(k, keep.has_value() ? 0 : numel);
  if (num_chunks == 0) return out;

  // Descriptors: pinned staging and an asynchronous copy on the current stream (the caching
  // host allocator keeps the staging buffer alive until the copy has run).
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto bytes = static_cast<int64_t>(descs.size() * sizeof(SelectTensor));
  at::Tensor staging = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(staging.mutable_data_ptr(), descs.data(), bytes);
  at::Tensor dev_descs = at::empty({bytes}, vs[0].options().dtype(at::kByte));
  dev_descs.copy_(staging, /*non_blocking=*/true);

  at::Tensor workspace = at::empty({select_workspace_words(num_chunks)}, vs[0].options().dtype(at::kLong));
  workspace.narrow(0, 0, select_zeroed_words()).zero_();
  const cudaError_t err = launch_select_smallest(
      static_cast<const SelectTensor*>(dev_descs.const_data_ptr()), static_cast<int64_t>(descs.size()),
      num_chunks, std::max<int64_t>(k, 0), magnitude,
      reinterpret_cast<unsigned long long*>(workspace.mutable_data_ptr<int64_t>()), stream);
  SD_CHECK_LAUNCH(err, "select_smallest");

  // The one host synchronisation: whether a value is NaN and, with keep masks, how many
  // elements are eligible are known only on the device, and the errors must be raised here.
  // (Three words of SelectState: nan_code, eligible, invalid.)
  const at::Tensor state = workspace.narrow(0, 0, 3).cpu();
  const int64_t* s = state.const_data_ptr<int64_t>();
  check_select_k(k, s[1]);  // same order as the CPU kernel: k first, then NaN
  const auto nan_code = static_cast<unsigned long long>(s[0]);
  check_select_no_nan(nan_code != 0, static_cast<int64_t>(~nan_code));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CUDA, m) { m.impl("select_smallest", &select_smallest_cuda); }

}  // namespace sparsedistill
