// The undo log of an in-place pruning call (zero_smallest_grouped without a mask): each tile
// logs the original values of the elements it leaves zero (in tile order) before writing, so
// that a NaN found in a later tile can put back the tiles already pruned and the call still
// raises without having changed the caller's tensor. That replaces a separate NaN pass over the
// values before any write (about one pass over their bytes of the ~3 a Wanda layer costs).
//
// Each tile's slot starts on a 64-byte line, so the float32 row path can write whole lines with
// streaming stores; the restore recounts the zeros of each tile to walk its slot.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

namespace sparsedistill {

// Line-aligned buffers kept across calls: their pages are touched only where written (a fresh
// page costs a fault, ~3 ms per 2 MiB on these VMs) and stay warm for the next layer.
class ScratchPool {
 public:
  struct Buffer {
    uint8_t* data = nullptr;
    size_t bytes = 0;
  };

  static Buffer acquire(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex());
      auto& free = buffers();
      auto it = std::find_if(free.begin(), free.end(), [&](const Buffer& b) { return b.bytes >= bytes; });
      if (it != free.end()) {
        const Buffer b = *it;
        free.erase(it);
        return b;
      }
    }
    const size_t rounded = (std::max<size_t>(bytes, 64) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) throw std::bad_alloc();
    return Buffer{static_cast<uint8_t*>(p), rounded};
  }

  // Keeps at most kKeepBytes of address space (only written pages hold memory); the smallest
  // buffers go first.
  static void release(Buffer b) {
    std::lock_guard<std::mutex> lock(mutex());
    auto& free = buffers();
    free.push_back(b);
    std::sort(free.begin(), free.end(), [](const Buffer& a, const Buffer& c) { return a.bytes > c.bytes; });
    size_t kept = 0;
    auto keep_end = free.begin();
    for (; keep_end != free.end() && kept + keep_end->bytes <= kKeepBytes; ++keep_end) kept += keep_end->bytes;
    for (auto it = keep_end; it != free.end(); ++it) std::free(it->data);
    free.erase(keep_end, free.end());
  }

 private:
  static constexpr size_t kKeepBytes = size_t{1} << 30;
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::vector<Buffer>& buffers() {
    static std::vector<Buffer> b;
    return b;
  }
};

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

}  // namespace sparsedistill
