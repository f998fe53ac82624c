// Order-preserving 32-bit keys of floats, shared by the CPU selection kernels: the unsigned order
// of the keys is the float order of x (or of |x| for magnitudes), -0 and +0 equal. Every dtype is
// compared after rounding to float32 (the documented rule for float64 scores).
#pragma once
#include <cstdint>
#include <cstring>

namespace sparsedistill {

// The key of float bits u (sign already cleared for magnitudes). Branch-free, so the passes
// vectorise: negatives flip every bit, the rest set the sign bit; -0 becomes +0.
inline uint32_t order_bits(uint32_t u) {
  u = (u & 0x7fffffffu) == 0 ? 0u : u;
  return u ^ ((0u - (u >> 31)) | 0x80000000u);
}

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

// NaN test on float bits (any sign).
inline bool is_nan_bits(uint32_t u) { return (u & 0x7fffffffu) > 0x7f800000u; }

}  // namespace sparsedistill
