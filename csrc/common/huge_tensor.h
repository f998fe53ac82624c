// A large scratch tensor of the C++ CPU kernels on transparent huge pages.
#pragma once
#include <ATen/ATen.h>

#include "common/cpu_memory.h"

namespace sparsedistill {

// at::empty, advised onto huge pages before its first touch: here a fresh 4 KiB page costs a
// fault each, and the ~3 GB of buffers of one bf16 fused linear call at a 128k vocabulary took
// ~1.3 s of its 4.4 s in them.
inline at::Tensor empty_huge(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t.data_ptr(), t.nbytes());
  return t;
}

}  // namespace sparsedistill
