// k-means pieces of the CGNS loss.
//   kmeans_assign(points [N,D], centroids [K,D]) -> (index int64[N,2], similarity [N,2]): top-2 cosine, ties to the
//     lower index, normalisation fused, the N x K similarity never held for the whole N.
//   kmeans_update(points [N,D], index int64[N], K) -> (sums [K,D], counts int64[K]).
#pragma once
#include <cstdint>

#include "../launch.h"

namespace cgns {

// ---- CUDA launchers (kmeans_cuda.cu). Return a cudaError_t code, 0 on success. ----
// Top-2 of one chunk of rows: dots [rows,K] = points . unit centroids (from a GEMM), points [rows,D] contiguous;
// writes index [rows,2] and similarity [rows,2] = dots / max(|point|, eps) in the dtype of points.
int kmeans_top2_cuda(DType dtype, const void* dots, const void* points, int64_t rows, int64_t num_clusters,
                     int64_t dim, int64_t* index, void* similarity, void* stream);
// Scatter-adds points [N,D] into sums [K,D] (float32, or float64 for float64 points) and counts [K].
int kmeans_update_cuda(DType dtype, const void* points, const int64_t* index, int64_t num_points, int64_t dim,
                       void* sums, int64_t* counts, void* stream);

}  // namespace cgns

#ifndef __CUDACC__
#include <ATen/core/Tensor.h>
#include <tuple>

namespace cgns {

constexpr double kNormEps = 1e-12;  // as F.normalize: a zero vector stays zero

// CPU kernels; inputs already checked and contiguous. kmeans_assign_cpu (kmeans_cpu.cpp): unit_centroids
// normalised. kmeans_update_cpu (kmeans_update_cpu.cpp): range-checks index, writes every element of sums (it may
// be uninitialised) and adds into counts (zeros).
void kmeans_assign_cpu(const at::Tensor& points, const at::Tensor& unit_centroids, at::Tensor& index,
                       at::Tensor& similarity);
void kmeans_update_cpu(const at::Tensor& points, const at::Tensor& index, at::Tensor& sums, at::Tensor& counts);

// Device dispatch with input checks (kmeans.cpp).
std::tuple<at::Tensor, at::Tensor> kmeans_assign(const at::Tensor& points, const at::Tensor& centroids);
std::tuple<at::Tensor, at::Tensor> kmeans_update(const at::Tensor& points, const at::Tensor& index,
                                                 int64_t num_clusters);

}  // namespace cgns
#endif
