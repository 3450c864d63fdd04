// Plain C-style interface between the torch-facing .cpp files and the .cu files. The .cu files include only CUDA
// headers (nvcc compiles them in seconds instead of minutes), so everything crossing this line is a raw pointer,
// an int64 size or one of these codes.
#pragma once
#include <cstdint>

namespace cgns {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// Message of a cudaError_t returned by a launcher (0 = success). Defined in kmeans/kmeans_cuda.cu.
const char* cuda_error_string(int code);

}  // namespace cgns
