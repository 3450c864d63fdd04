// CUDA k-means kernels. Only CUDA headers here (see launch.h); the GEMM producing the dots is cuBLAS, launched by
// kmeans.cpp on the same stream, chunk by chunk.
#include <cfloat>
#include <climits>

#include "../cuda_common.cuh"
#include "kmeans.h"

namespace cgns {

const char* cuda_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;

// Order of candidates: larger similarity first, lower index on ties. Empty slots are (-inf, INT_MAX).
template <typename acc_t>
__device__ __forceinline__ bool better(acc_t v, int i, acc_t w, int j) {
  return v > w || (v == w && i < j);
}

template <typename acc_t>
struct Top2 {
  acc_t v1, v2;
  int i1, i2;

  __device__ void push(acc_t v, int i) {
    if (better(v, i, v1, i1)) {
      v2 = v1, i2 = i1, v1 = v, i1 = i;
    } else if (better(v, i, v2, i2)) {
      v2 = v, i2 = i;
    }
  }

  // Merge with the lane `offset` away; after the butterfly every lane holds the warp's top-2.
  __device__ void merge_xor(int offset) {
    const acc_t w1 = __shfl_xor_sync(kFullMask, v1, offset), w2 = __shfl_xor_sync(kFullMask, v2, offset);
    const int j1 = __shfl_xor_sync(kFullMask, i1, offset), j2 = __shfl_xor_sync(kFullMask, i2, offset);
    if (better(w1, j1, v1, i1)) {
      const bool keep = better(v1, i1, w2, j2);
      v2 = keep ? v1 : w2, i2 = keep ? i1 : j2;
      v1 = w1, i1 = j1;
    } else if (better(w1, j1, v2, i2)) {
      v2 = w1, i2 = j1;
    }
  }
};

// One warp per row: top-2 of the row's K dots, |point| from the row's D features, similarity = dot / |point|.
template <typename scalar_t>
__global__ void top2_kernel(const scalar_t* __restrict__ dots, const scalar_t* __restrict__ points, int64_t rows,
                            int64_t num_clusters, int64_t dim, int64_t* __restrict__ index,
                            scalar_t* __restrict__ similarity) {
  using acc_t = typename Acc<scalar_t>::type;
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_block = blockDim.x / 32;
  for (int64_t row = blockIdx.x * warps_per_block + threadIdx.x / 32; row < rows;
       row += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    Top2<acc_t> best{-INFINITY, -INFINITY, INT_MAX, INT_MAX};
    const scalar_t* dot_row = dots + row * num_clusters;
    for (int64_t k = lane; k < num_clusters; k += 32) best.push(to_acc(dot_row[k]), static_cast<int>(k));
    acc_t squares = 0;
    const scalar_t* point_row = points + row * dim;
    for (int64_t d = lane; d < dim; d += 32) {
      const acc_t x = to_acc(point_row[d]);
      squares += x * x;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      squares += __shfl_xor_sync(kFullMask, squares, offset);
      best.merge_xor(offset);
    }
    if (lane == 0) {
      const acc_t norm = max(sqrt(squares), static_cast<acc_t>(1e-12));
      index[2 * row] = best.i1, index[2 * row + 1] = best.i2;
      store(similarity + 2 * row, best.v1 / norm);
      store(similarity + 2 * row + 1, best.v2 / norm);
    }
  }
}

// One thread per (point, feature): atomic adds into the float32/float64 sums; feature 0 also counts the point.
template <typename scalar_t>
__global__ void update_kernel(const scalar_t* __restrict__ points, const int64_t* __restrict__ index,
                              int64_t num_points, int64_t dim, typename Acc<scalar_t>::type* __restrict__ sums,
                              unsigned long long* __restrict__ counts) {
  const int64_t total = num_points * dim;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = e / dim, d = e - n * dim, k = index[n];
    atomicAdd(sums + k * dim + d, to_acc(points[e]));
    if (d == 0) atomicAdd(counts + k, 1ull);
  }
}

}  // namespace

int kmeans_top2_cuda(DType dtype, const void* dots, const void* points, int64_t rows, int64_t num_clusters,
                     int64_t dim, int64_t* index, void* similarity, void* stream) {
  if (rows == 0) return 0;
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const int blocks = blocks_for(rows * 32, kThreads);
    top2_kernel<scalar_t><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const scalar_t*>(dots), static_cast<const scalar_t*>(points), rows, num_clusters, dim, index,
        static_cast<scalar_t*>(similarity));
  });
  return static_cast<int>(cudaGetLastError());
}

int kmeans_update_cuda(DType dtype, const void* points, const int64_t* index, int64_t num_points, int64_t dim,
                       void* sums, int64_t* counts, void* stream) {
  if (num_points == 0 || dim == 0) return 0;
  dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = typename Acc<scalar_t>::type;
    update_kernel<scalar_t><<<blocks_for(num_points * dim, kThreads), kThreads, 0,
                              static_cast<cudaStream_t>(stream)>>>(
        static_cast<const scalar_t*>(points), index, num_points, dim, static_cast<acc_t*>(sums),
        reinterpret_cast<unsigned long long*>(counts));
  });
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cgns
