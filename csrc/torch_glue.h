// Helpers shared by the torch-facing dispatch files (never included by .cu files).
#pragma once
#include <ATen/ATen.h>

#include "launch.h"

namespace cgns {

inline DType dtype_code(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "cgns: unsupported dtype ", type, " (float32, float64, float16, bfloat16 only)");
  }
}

// Accumulation type of the CUDA scatter-adds: half types accumulate in float32.
inline at::ScalarType accumulate_type(at::ScalarType type) {
  return type == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_cuda_launch(int code, const char* op) {
  TORCH_CHECK(code == 0, op, ": CUDA kernel launch failed: ", cuda_error_string(code));
}

// Index values must lie in [0, bound): one reduction, so it costs a device sync on CUDA.
inline void check_index_range(const at::Tensor& index, int64_t bound, const char* op, const char* what) {
  if (index.numel() == 0) return;
  auto [lo, hi] = at::aminmax(index);
  int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
  TORCH_CHECK(lo_v >= 0 && hi_v < bound, op, ": index values must lie in [0, ", bound, ") (", what,
              "), got [", lo_v, ", ", hi_v, "]");
}

}  // namespace cgns
