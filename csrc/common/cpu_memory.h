// Memory helpers of the C++ CPU kernels.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

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

}  // namespace sparsedistill
