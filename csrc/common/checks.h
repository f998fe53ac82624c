// The check macros, message formatting and dtype facts that every area's checks.h builds on
// (sparsedistill/_common.py formats the Python side's messages the same way). Messages name the
// argument and what was expected.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <string>
#include <type_traits>


// The message is concatenated here from strings and std::to_string'ed numbers and handed to
// TORCH_CHECK as one std::string: with torch 2.11 (+ g++ 13), formatting a number or a c10
// type through TORCH_CHECK's stream inside this library crashed the process.
#define SD_CHECK_ARG(cond, ...) \
  TORCH_CHECK_VALUE(cond, ::sparsedistill::message("sparsedistill: ", __VA_ARGS__))
#define SD_CHECK_TYPE(cond, ...) \
  TORCH_CHECK_TYPE(cond, ::sparsedistill::message("sparsedistill: ", __VA_ARGS__))

// The reduced and single-precision dtypes, computed in float32 inside (float64 goes elsewhere).
#define SD_DISPATCH_FLOATS(TYPE, NAME, ...)                        \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                   \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)     \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace sparsedistill {

inline std::string message_piece(const char* s) { return s; }
inline std::string message_piece(const std::string& s) { return s; }
template <typename Number, typename = std::enable_if_t<std::is_arithmetic_v<Number>>>
std::string message_piece(Number x) { return std::to_string(x); }

template <typename... Pieces>
std::string message(const Pieces&... pieces) {
  return (std::string() + ... + message_piece(pieces));
}

// Tensor facts as strings for those messages: "(4, 10)", "Float", "cuda:0".
inline std::string shape_str(const at::Tensor& t) {
  std::string out = "(";
  for (int64_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + ")";
}
// "torch.float32": the dtype as Python prints it, so messages match the references'.
inline std::string dtype_str(const at::Tensor& t) {
  return "torch." + std::string(c10::getDtypeNames(t.scalar_type()).first);
}
inline std::string device_str(const at::Tensor& t) { return t.device().str(); }

// float32, bfloat16, float16, float64: the dtypes every kernel accepts (_common.FLOAT_DTYPES).
inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

}  // namespace sparsedistill
