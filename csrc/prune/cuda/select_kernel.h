// Launcher of the CUDA select_smallest kernels. No torch headers: the host
// wrapper (select_host.cpp) converts tensors to raw pointers and passes the current stream.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "common/dtype.h"

namespace sparsedistill {

// ---------------------------------------------------------------------------------------------
// select_smallest. The elements of all tensors are cut into chunks of kSelectChunk (the last
// chunk of a tensor may be shorter); chunks are numbered tensor after tensor, so chunk order is
// the tie-break order (tensor index, then flat index).
constexpr int64_t kSelectChunk = 8192;

// One non-empty input tensor, as the kernels see it (an array of these lives on the device).
// The mask pass reads values[i] and keep[i] and writes mask[i] and zero[i] in one thread, so
// values may be zero itself (and keep may be mask); no other overlap between what the kernels
// read and what the mask pass writes is allowed (the host copies such inputs first).
struct SelectTensor {
  const void* values;   // numel elements of dtype, contiguous
  const uint8_t* keep;  // numel bools (eligibility), or nullptr: all eligible
  uint8_t* mask;        // numel bools, the output keep-mask
  void* zero;           // zero_smallest: numel elements of zero_dtype, contiguous, set to +0 by
                        // the mask pass where the mask is False; nullptr: none (select_smallest)
  int64_t numel;
  int64_t first_chunk;  // global number of this tensor's first chunk
  int64_t index;        // position in the op's list (error messages)
  DType dtype;
  DType zero_dtype;
};
// The host (g++) and the kernels (nvcc) must agree on the layout.
static_assert(sizeof(SelectTensor) == 64, "SelectTensor: 7 words and two dtypes, no padding");

// Device-side state of one selection: zero-filled by the caller, then written by the kernels.
// The host reads the first three fields once, after every launch (see select_host.cpp).
struct SelectState {
  unsigned long long nan_code;  // ~index of the first tensor holding NaN; 0: none
  unsigned long long eligible;  // eligible elements (total of the first histogram)
  unsigned long long invalid;   // 1: NaN seen or k > eligible; later kernels do nothing
  unsigned long long prefix;    // high key bits of the k-th smallest key found so far
  unsigned long long rank;      // 1-based rank of the k-th smallest within the prefix
  unsigned long long threshold; // the k-th smallest key K
  unsigned long long need;      // eligible keys == K to prune (the first ones by position)
  unsigned long long ties;      // eligible keys == K in all
};

// 64-bit words of device workspace for num_chunks chunks: a SelectState, the histogram and
// one tie count per chunk. The caller zero-fills the first select_zeroed_words() of them.
int64_t select_workspace_words(int64_t num_chunks);
int64_t select_zeroed_words();

// Runs the whole selection on `stream` without synchronising: tensors (device array of
// num_tensors descriptors, num_chunks chunks in all), k, magnitude (key of |x| or of x).
// workspace: select_workspace_words(num_chunks) words, the first select_zeroed_words() zero.
// On return the SelectState at the start of the workspace tells, once the stream reaches it,
// whether the result is valid; an invalid one (NaN, k < 0 or k > eligible) has written no mask
// and zeroed nothing. Returns the launch status.
cudaError_t launch_select_smallest(const SelectTensor* tensors, int64_t num_tensors,
                                   int64_t num_chunks, int64_t k, bool magnitude,
                                   unsigned long long* workspace, cudaStream_t stream);

}  // namespace sparsedistill
