// CUDA patch gathers: one thread per output element (coalesced writes); the backward scatter-adds with atomics
// into a float32/float64 buffer (so the order of duplicate adds, and the last bits, may vary between runs).
#include "../cuda_common.cuh"
#include "patch_gather.h"

namespace cgns {
namespace {

constexpr int kThreads = 256;

#define CGNS_GRID_STRIDE(e, total)                                                        \
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < (total); \
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename scalar_t>
__global__ void token_gather_kernel(const scalar_t* __restrict__ tokens, int64_t sb, int64_t sl, int64_t sd,
                                    const int64_t* __restrict__ index, int64_t picked, int64_t dim, int64_t total,
                                    scalar_t* __restrict__ out) {
  CGNS_GRID_STRIDE(e, total) {
    const int64_t row = e / dim, d = e - row * dim;
    out[e] = tokens[(row / picked) * sb + index[row] * sl + d * sd];
  }
}

template <typename scalar_t, typename acc_t>
__global__ void token_scatter_kernel(const scalar_t* __restrict__ grad_out, const int64_t* __restrict__ index,
                                     int64_t picked, int64_t num_tokens, int64_t dim, int64_t total,
                                     acc_t* __restrict__ grad_tokens) {
  CGNS_GRID_STRIDE(e, total) {
    const int64_t row = e / dim, d = e - row * dim;
    atomicAdd(grad_tokens + ((row / picked) * num_tokens + index[row]) * dim + d, to_acc(grad_out[e]));
  }
}

// Offset in the [B,C,H,W] image of element e of the [B,M,C*p*p] patch rows.
__device__ __forceinline__ int64_t pixel_offset(int64_t e, const int64_t* index, int64_t picked, int64_t channels,
                                                int64_t height, int64_t width, int64_t patch) {
  const int64_t area = patch * patch, row_len = channels * area;
  const int64_t row = e / row_len, j = e - row * row_len;
  const int64_t c = j / area, i = (j - c * area) / patch, x = j - c * area - i * patch;
  const int64_t grid_w = width / patch, py = index[row] / grid_w, px = index[row] - py * grid_w;
  return (((row / picked) * channels + c) * height + py * patch + i) * width + px * patch + x;
}

template <typename scalar_t>
__global__ void image_gather_kernel(const scalar_t* __restrict__ images, const int64_t* __restrict__ index,
                                    int64_t picked, int64_t channels, int64_t height, int64_t width, int64_t patch,
                                    int64_t total, scalar_t* __restrict__ out) {
  CGNS_GRID_STRIDE(e, total) { out[e] = images[pixel_offset(e, index, picked, channels, height, width, patch)]; }
}

template <typename scalar_t, typename acc_t>
__global__ void image_scatter_kernel(const scalar_t* __restrict__ grad_out, const int64_t* __restrict__ index,
                                     int64_t picked, int64_t channels, int64_t height, int64_t width,
                                     int64_t patch, int64_t total, acc_t* __restrict__ grad_images) {
  CGNS_GRID_STRIDE(e, total) {
    atomicAdd(grad_images + pixel_offset(e, index, picked, channels, height, width, patch), to_acc(grad_out[e]));
  }
}

}  // namespace

int token_gather_cuda(DType dtype, const void* tokens, int64_t stride_b, int64_t stride_l, int64_t stride_d,
                      const int64_t* index, int64_t batch, int64_t picked, int64_t dim, void* out, void* stream) {
  const int64_t total = batch * picked * dim;
  if (total == 0) return 0;
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    token_gather_kernel<scalar_t><<<blocks_for(total, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const scalar_t*>(tokens), stride_b, stride_l, stride_d, index, picked, dim, total,
        static_cast<scalar_t*>(out));
  });
  return static_cast<int>(cudaGetLastError());
}

int token_scatter_add_cuda(DType dtype, const void* grad_out, const int64_t* index, int64_t batch, int64_t picked,
                           int64_t num_tokens, int64_t dim, void* grad_tokens, void* stream) {
  const int64_t total = batch * picked * dim;
  if (total == 0) return 0;
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = typename Acc<scalar_t>::type;
    token_scatter_kernel<scalar_t, acc_t>
        <<<blocks_for(total, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
            static_cast<const scalar_t*>(grad_out), index, picked, num_tokens, dim, total,
            static_cast<acc_t*>(grad_tokens));
  });
  return static_cast<int>(cudaGetLastError());
}

int image_patch_gather_cuda(DType dtype, const void* images, const int64_t* index, int64_t batch, int64_t picked,
                            int64_t channels, int64_t height, int64_t width, int64_t patch, void* out,
                            void* stream) {
  const int64_t total = batch * picked * channels * patch * patch;
  if (total == 0) return 0;
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    image_gather_kernel<scalar_t><<<blocks_for(total, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const scalar_t*>(images), index, picked, channels, height, width, patch, total,
        static_cast<scalar_t*>(out));
  });
  return static_cast<int>(cudaGetLastError());
}

int image_patch_scatter_add_cuda(DType dtype, const void* grad_out, const int64_t* index, int64_t batch,
                                 int64_t picked, int64_t channels, int64_t height, int64_t width, int64_t patch,
                                 void* grad_images, void* stream) {
  const int64_t total = batch * picked * channels * patch * patch;
  if (total == 0) return 0;
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = typename Acc<scalar_t>::type;
    image_scatter_kernel<scalar_t, acc_t>
        <<<blocks_for(total, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
            static_cast<const scalar_t*>(grad_out), index, picked, channels, height, width, patch, total,
            static_cast<acc_t*>(grad_images));
  });
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cgns
