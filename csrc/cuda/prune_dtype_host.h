// Host side of prune_dtype.h: the PruneDType of a tensor dtype the checks admitted.
#pragma once
#include <c10/core/ScalarType.h>

#include "prune_dtype.h"

namespace sparsedistill {

inline PruneDType to_prune_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return PruneDType::kFloat32;
    case at::kBFloat16: return PruneDType::kBFloat16;
    case at::kHalf: return PruneDType::kFloat16;
    default: return PruneDType::kFloat64;  // is_prune_dtype (prune_checks.h) admits nothing else
  }
}

}  // namespace sparsedistill
