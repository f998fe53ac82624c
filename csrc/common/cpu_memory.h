// Memory helpers of the C++ CPU kernels.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sparsedistill {

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;

// Asks Linux to back the whole 2 MiB pages inside [p, p + bytes) with transparent huge pages
// (where THP is enabled in "madvise" or "always" mode). Advisory only. Worth it for a large
// fresh buffer (faulting it in 4 KiB pages is slow) and for one read at random addresses
// (beyond 64 small pages, every access misses the first-level TLB).
inline void advise_huge_pages(const void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + bytes) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

// An uninitialised array of n trivially copyable T, 2 MiB aligned and advised onto huge pages
// when it spans one or more.
template <typename T>
class HugePageArray {
 public:
  explicit HugePageArray(size_t n) : n_(n) {
    const size_t bytes = std::max<size_t>(sizeof(T), n * sizeof(T));
    const size_t align = bytes >= kHugePage ? kHugePage : 64;
    void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);
    if (p == nullptr) throw std::bad_alloc();
    advise_huge_pages(p, bytes);
    data_.reset(static_cast<T*>(p));
  }
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  size_t size() const { return n_; }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
  size_t n_;
};

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

}  // namespace sparsedistill
