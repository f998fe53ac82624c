// CUDA host wrappers of sparsedistill::select_smallest and sparsedistill::zero_smallest: checks
// (csrc/prune/checks.h), describe the tensors to the kernels of select_kernel.cu in one device
// array and launch them on the current stream. zero_smallest is the same selection with a
// tensor to zero per descriptor: the mask pass writes the mask and zeroes the pruned elements.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/cuda_host.h"
#include "prune/checks.h"
#include "prune/cuda/select_kernel.h"

namespace sparsedistill {
namespace {

// The tensors of one selection, index by index, all contiguous and on one device: the values
// ranked, their keep masks (undefined: all eligible), the bool tensors the masks are written
// into and, for zero_smallest, the tensors whose pruned elements the mask pass zeroes
// (undefined: none).
struct SelectionTensors {
  std::vector<at::Tensor> values, keep, masks, zero;
};

// Runs the selection on the current stream, then the one host synchronisation and the checks
// (k, then NaN, as the CPU kernel orders them). has_keep: keep masks were given; op: the op's
// name for a launch failure. When it raises, the kernels have written no mask and zeroed nothing.
void run_selection(const SelectionTensors& s, bool has_keep, int64_t k, bool magnitude, const char* op) {
  std::vector<SelectTensor> descs;
  int64_t num_chunks = 0, numel = 0;
  for (size_t i = 0; i < s.values.size(); ++i) {
    const at::Tensor& v = s.values[i];
    numel += v.numel();
    if (v.numel() == 0) continue;  // the kernels' chunk lookup assumes non-empty tensors
    SelectTensor d{};
    d.values = v.const_data_ptr();
    d.keep = s.keep[i].defined() ? reinterpret_cast<const uint8_t*>(s.keep[i].const_data_ptr<bool>()) : nullptr;
    d.mask = reinterpret_cast<uint8_t*>(s.masks[i].mutable_data_ptr<bool>());
    const bool zero = !s.zero.empty() && s.zero[i].defined();
    d.zero = zero ? s.zero[i].mutable_data_ptr() : nullptr;
    d.numel = v.numel();
    d.first_chunk = num_chunks;
    d.index = static_cast<int64_t>(i);
    d.dtype = to_kernel_dtype(v.scalar_type());
    d.zero_dtype = zero ? to_kernel_dtype(s.zero[i].scalar_type()) : DType::kFloat32;
    descs.push_back(d);
    num_chunks += (d.numel + kSelectChunk - 1) / kSelectChunk;
  }
  // Without keep masks the eligible count is known here: reject a bad k before any work.
  if (!has_keep || num_chunks == 0) check_select_k(k, has_keep ? 0 : numel);
  if (num_chunks == 0) return;

  // Descriptors: pinned staging and an asynchronous copy on the current stream (the caching
  // host allocator keeps the staging buffer alive until the copy has run).
  const at::TensorOptions device = s.values[0].options();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto bytes = static_cast<int64_t>(descs.size() * sizeof(SelectTensor));
  at::Tensor staging = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(staging.mutable_data_ptr(), descs.data(), bytes);
  at::Tensor dev_descs = at::empty({bytes}, device.dtype(at::kByte));
  dev_descs.copy_(staging, /*non_blocking=*/true);

  at::Tensor workspace = at::empty({select_workspace_words(num_chunks)}, device.dtype(at::kLong));
  workspace.narrow(0, 0, select_zeroed_words()).zero_();
  // k goes unclamped: with keep masks it is checked only after the launch, and a negative k
  // must not run the mask pass (it marks the selection invalid, like k > eligible).
  const cudaError_t err = launch_select_smallest(
      static_cast<const SelectTensor*>(dev_descs.const_data_ptr()), static_cast<int64_t>(descs.size()),
      num_chunks, k, magnitude,
      reinterpret_cast<unsigned long long*>(workspace.mutable_data_ptr<int64_t>()), stream);
  SD_CHECK_LAUNCH(err, op);

  // The one host synchronisation: whether a value is NaN and, with keep masks, how many
  // elements are eligible are known only on the device, and the errors must be raised here.
  // (Three words of SelectState: nan_code, eligible, invalid.)
  const at::Tensor state = workspace.narrow(0, 0, 3).cpu();
  const int64_t* st = state.const_data_ptr<int64_t>();
  check_select_k(k, st[1]);  // same order as the CPU kernel: k first, then NaN
  const auto nan_code = static_cast<unsigned long long>(st[0]);
  check_select_no_nan(nan_code != 0, static_cast<int64_t>(~nan_code));
}

std::vector<at::Tensor> select_smallest_cuda(at::TensorList values,
                                             const std::optional<at::TensorList>& keep, int64_t k,
                                             bool magnitude) {
  SD_CHECK_ARG(!values.empty() && values[0].is_cuda(), "values must be CUDA tensors");
  const at::Device device = values[0].device();
  check_select_args(values, keep, device);
  const c10::cuda::CUDAGuard guard(device);

  SelectionTensors s;
  for (size_t i = 0; i < values.size(); ++i) {
    s.values.push_back(values[i].contiguous());
    s.keep.push_back(keep.has_value() ? (*keep)[i].contiguous() : at::Tensor());
    s.masks.push_back(at::empty(s.values[i].sizes(), s.values[i].options().dtype(at::kBool)));
  }
  run_selection(s, keep.has_value(), k, magnitude, "select_smallest");
  return s.masks;
}

// ------------------------------------------------------------------------------- aliasing
// The byte range of a contiguous tensor.
struct Bytes {
  uintptr_t begin, end;
};
Bytes bytes_of(const at::Tensor& t) {
  const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  return {begin, begin + static_cast<uintptr_t>(t.numel()) * t.element_size()};
}

// The byte ranges the mask pass writes (masks and tensors to zero), sorted by begin and by end
// separately, which counts the ranges overlapping a given one in O(log n): those that begin
// before its end, less those that end before (or at) its begin.
class WrittenRanges {
 public:
  explicit WrittenRanges(const SelectionTensors& s) {
    auto add = [&](const at::Tensor& t) {
      if (!t.defined() || t.numel() == 0) return;
      const Bytes b = bytes_of(t);
      begins_.push_back(b.begin);
      ends_.push_back(b.end);
    };
    for (const auto& m : s.masks) add(m);
    for (const auto& z : s.zero) add(z);
    std::sort(begins_.begin(), begins_.end());
    std::sort(ends_.begin(), ends_.end());
  }

  // Whether the mask pass writes any byte of t (contiguous) other than through `own`: the
  // buffer that the thread reading element i of t writes element i of (the same byte range),
  // which is safe. Undefined `own`: none.
  bool overlap(const at::Tensor& t, const at::Tensor& own) const {
    if (!t.defined() || t.numel() == 0) return false;
    const Bytes b = bytes_of(t);
    const auto before_end = std::lower_bound(begins_.begin(), begins_.end(), b.end) - begins_.begin();
    const auto ended = std::upper_bound(ends_.begin(), ends_.end(), b.begin) - ends_.begin();
    int64_t n = before_end - ended;
    if (own.defined() && own.numel() == t.numel()) {
      const Bytes o = bytes_of(own);
      if (o.begin == b.begin && o.end == b.end) --n;  // (own is among the written ranges)
    }
    return n > 0;
  }

 private:
  std::vector<uintptr_t> begins_, ends_;
};

// zero_smallest: select_smallest on |tensors| (or on scores), the keep-masks written into
// masks and the pruned elements of tensors zeroed in the mask pass (the contiguous ones; a
// non-contiguous one afterwards, with masked_fill_, as the CPU kernel does).
void zero_smallest_cuda(at::TensorList tensors, at::TensorList masks,
                        const std::optional<at::TensorList>& scores,
                        const std::optional<at::TensorList>& keep, int64_t k) {
  check_zero_smallest_args(tensors, masks, scores);
  const at::TensorList values = scores.has_value() ? *scores : tensors;
  if (values.empty()) {  // (the CPU kernel's checks, on no tensors)
    check_select_args(values, keep, at::Device(at::kCUDA));
    check_select_k(k, 0);
    return;
  }
  const at::Device device = values[0].device();
  check_select_args(values, keep, device);  // (tensors and masks lie where their values do)
  SD_CHECK_ARG(device.is_cuda(), "tensors must be CUDA tensors");
  const c10::cuda::CUDAGuard guard(device);

  SelectionTensors s;
  for (size_t i = 0; i < tensors.size(); ++i) {
    s.values.push_back(values[i].contiguous());
    s.keep.push_back(keep.has_value() ? (*keep)[i].contiguous() : at::Tensor());
    s.masks.push_back(masks[i].is_contiguous() ? masks[i] : at::empty_like(masks[i], at::MemoryFormat::Contiguous));
    s.zero.push_back(tensors[i].is_contiguous() ? tensors[i] : at::Tensor());
  }
  // The mask pass reads values and keep masks while other threads write masks and zero
  // tensors: an input that shares bytes with any of those is read from a copy, unless the
  // only buffer it shares them with is its own (values[i] == tensors[i] exactly, as without
  // scores, or keep[i] == masks[i]), which the one thread owning an element reads first.
  // (All of it is read before anything is written: the earlier passes only read.)
  const WrittenRanges written(s);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (written.overlap(s.values[i], s.zero[i])) s.values[i] = s.values[i].clone();
    if (written.overlap(s.keep[i], s.masks[i])) s.keep[i] = s.keep[i].clone();
  }
  run_selection(s, keep.has_value(), k, /*magnitude=*/!scores.has_value(), "zero_smallest");
  // Checks passed: the rest may write.
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!masks[i].is_contiguous()) masks[i].copy_(s.masks[i]);
    if (!s.zero[i].defined()) tensors[i].masked_fill_(s.masks[i].logical_not(), 0);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsedistill, CUDA, m) {
  m.impl("select_smallest", &select_smallest_cuda);
  m.impl("zero_smallest", &zero_smallest_cuda);
}

}  // namespace sparsedistill
