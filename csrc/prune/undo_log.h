// The undo log of an in-place pruning call (zero_smallest_grouped without a mask): each tile
// logs the original values of the elements it leaves zero (in tile order) before writing, so
// that a NaN found in a later tile can put back the tiles already pruned and the call still
// raises without having changed the caller's tensor. That replaces a separate NaN pass over the
// values before any write (about one pass over their bytes of the ~3 a Wanda layer costs).
//
// Each tile's slot starts on a 64-byte line, so the float32 row path can write whole lines with
// streaming stores; the restore recounts the zeros of each tile to walk its slot.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/cpu_memory.h"

namespace sparsedistill {

// The log of one call: tile g's values go to its own slot of `span` bytes (room for the whole
// tile, so tasks need no offsets), and written[g] says the tile was pruned. One buffer,
// acquired before any write, so that running out of memory cannot follow a write.
class UndoLog {
 public:
  UndoLog(int64_t tiles, int64_t tile, size_t element_size)
      : span_((static_cast<size_t>(tile) * element_size + 63) / 64 * 64),
        buffer_(ScratchPool::acquire(static_cast<size_t>(tiles) * span_)),
        written_(static_cast<size_t>(tiles), 0) {}
  UndoLog(const UndoLog&) = delete;
  UndoLog& operator=(const UndoLog&) = delete;
  ~UndoLog() { ScratchPool::release(buffer_); }

  template <typename T>
  T* slot(int64_t g) {
    return reinterpret_cast<T*>(buffer_.data + static_cast<size_t>(g) * span_);
  }
  void mark_written(int64_t g) { written_[static_cast<size_t>(g)] = 1; }
  bool written(int64_t g) const { return written_[static_cast<size_t>(g)] != 0; }

 private:
  size_t span_;
  ScratchPool::Buffer buffer_;
  std::vector<uint8_t> written_;
};

// Logs the originals of the elements of row xr (n long) that are zero after the write: those
// not kept, and kept zeros (ties at K = 0). The restore walks each tile's zeros in the same order.
template <typename T, typename Kept>
inline T* log_zeroed(T* logged, const T* xr, int64_t n, Kept kept) {
  for (int64_t c = 0; c < n; ++c)
    if (!kept(c) || static_cast<float>(xr[c]) == 0.f) *logged++ = xr[c];
  return logged;
}

}  // namespace sparsedistill
