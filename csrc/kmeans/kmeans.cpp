// Input checks and device dispatch of the k-means ops (the CUDA half launches the kernels of kmeans_cuda.cu
// on the current stream, under a device guard).
#include <ATen/ATen.h>

#include "../torch_glue.h"
#include "kmeans.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that pulls in cuSPARSE/cuBLAS headers
#include <c10/cuda/CUDAGuard.h>
#endif

namespace cgns {
namespace {

#ifdef WITH_CUDA
// Rows per GEMM chunk on the GPU: a [65536,128] float chunk of dots (32 MB) stays in an H100/H200's L2.
constexpr int64_t kCudaChunkRows = 65536;

void kmeans_assign_cuda(const at::Tensor& points, const at::Tensor& unit_centroids, at::Tensor& index,
                        at::Tensor& similarity) {
  const c10::cuda::CUDAGuard guard(points.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t num_points = points.size(0), dim = points.size(1), num_clusters = unit_centroids.size(0);
  at::Tensor centroids_t = unit_centroids.t();
  at::Tensor dots = at::empty({std::min(kCudaChunkRows, num_points), num_clusters}, points.options());
  const int64_t elem = points.element_size();
  for (int64_t row0 = 0; row0 < num_points; row0 += kCudaChunkRows) {
    const int64_t rows = std::min(kCudaChunkRows, num_points - row0);
    at::Tensor chunk_dots = dots.narrow(0, 0, rows);
    at::mm_out(chunk_dots, points.narrow(0, row0, rows), centroids_t);  // cuBLAS on the current stream
    check_cuda_launch(
        kmeans_top2_cuda(dtype_code(points.scalar_type()), chunk_dots.data_ptr(),
                         static_cast<const char*>(points.data_ptr()) + row0 * dim * elem, rows, num_clusters, dim,
                         index.data_ptr<int64_t>() + 2 * row0,
                         static_cast<char*>(similarity.data_ptr()) + 2 * row0 * elem, stream),
        "kmeans_assign");
  }
}

void kmeans_update_cuda_tensors(const at::Tensor& points, const at::Tensor& index, at::Tensor& sums,
                                at::Tensor& counts) {
  const c10::cuda::CUDAGuard guard(points.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  check_index_range(index, counts.size(0), "kmeans_update", "the cluster of each point");
  at::Tensor acc = sums.scalar_type() == accumulate_type(sums.scalar_type())
                       ? sums
                       : at::zeros(sums.sizes(), sums.options().dtype(accumulate_type(sums.scalar_type())));
  check_cuda_launch(kmeans_update_cuda(dtype_code(points.scalar_type()), points.data_ptr(),
                                       index.data_ptr<int64_t>(), points.size(0), points.size(1), acc.data_ptr(),
                                       counts.data_ptr<int64_t>(), stream),
                    "kmeans_update");
  if (!acc.is_same(sums)) sums.copy_(acc);
}
#endif

void check_device(const at::Tensor& tensor, const char* op) {
#ifdef WITH_CUDA
  TORCH_CHECK(tensor.is_cpu() || tensor.is_cuda(), op, ": tensors must be on CPU or CUDA, got ", tensor.device());
#else
  TORCH_CHECK(tensor.is_cpu(), op, ": this build has no CUDA kernels, got a tensor on ", tensor.device());
#endif
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> kmeans_assign(const at::Tensor& points, const at::Tensor& centroids) {
  TORCH_CHECK(points.dim() == 2 && centroids.dim() == 2, "kmeans_assign: points must be [N,D] and centroids [K,D]",
              ", got ", points.sizes(), " and ", centroids.sizes());
  TORCH_CHECK(points.size(1) == centroids.size(1), "kmeans_assign: points have D=", points.size(1),
              " but centroids D=", centroids.size(1));
  TORCH_CHECK(centroids.size(0) >= 2, "kmeans_assign: needs K >= 2 centroids, got ", centroids.size(0));
  TORCH_CHECK(points.scalar_type() == centroids.scalar_type(), "kmeans_assign: points are ", points.scalar_type(),
              " but centroids ", centroids.scalar_type());
  TORCH_CHECK(points.device() == centroids.device(), "kmeans_assign: points are on ", points.device(),
              " but centroids on ", centroids.device());
  check_device(points, "kmeans_assign");
  const int64_t num_points = points.size(0);
  at::Tensor index = at::empty({num_points, 2}, points.options().dtype(at::kLong));
  at::Tensor similarity = at::empty({num_points, 2}, points.options());
  if (num_points == 0) return {index, similarity};
  at::Tensor contiguous_points = points.contiguous();
  // K x D is tiny: normalising the centroids up front costs nothing. Half types are normalised in float32.
  at::Tensor unit_centroids = at::div(centroids.to(accumulate_type(centroids.scalar_type())),
                                      at::clamp_min(at::linalg_vector_norm(centroids.to(accumulate_type(
                                                        centroids.scalar_type())), 2, {1}, true), kNormEps))
                                  .to(points.scalar_type())
                                  .contiguous();
  if (points.is_cuda()) {
#ifdef WITH_CUDA
    kmeans_assign_cuda(contiguous_points, unit_centroids, index, similarity);
#endif
  } else {
    TORCH_CHECK(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
                "kmeans_assign: the CPU kernel takes float32 or float64, got ", points.scalar_type());
    kmeans_assign_cpu(contiguous_points, unit_centroids, index, similarity);
  }
  return {index, similarity};
}

std::tuple<at::Tensor, at::Tensor> kmeans_update(const at::Tensor& points, const at::Tensor& index,
                                                 int64_t num_clusters) {
  TORCH_CHECK(points.dim() == 2, "kmeans_update: points must be [N,D], got ", points.sizes());
  TORCH_CHECK(index.dim() == 1 && index.size(0) == points.size(0), "kmeans_update: index must be [N] with N=",
              points.size(0), ", got ", index.sizes());
  TORCH_CHECK(index.scalar_type() == at::kLong, "kmeans_update: index must be int64, got ", index.scalar_type());
  TORCH_CHECK(index.device() == points.device(), "kmeans_update: index is on ", index.device(), " but points on ",
              points.device());
  TORCH_CHECK(num_clusters >= 1, "kmeans_update: num_clusters must be >= 1, got ", num_clusters);
  check_device(points, "kmeans_update");
  // The CPU kernel writes every sum; the CUDA one adds into zeros, as does nothing for N=0.
  const bool fills_sums = points.is_cpu() && points.size(0) > 0;
  at::Tensor sums = fills_sums ? at::empty({num_clusters, points.size(1)}, points.options())
                               : at::zeros({num_clusters, points.size(1)}, points.options());
  at::Tensor counts = at::zeros({num_clusters}, points.options().dtype(at::kLong));
  if (points.size(0) == 0) return {sums, counts};
  at::Tensor contiguous_points = points.contiguous(), contiguous_index = index.contiguous();
  if (points.is_cuda()) {
#ifdef WITH_CUDA
    kmeans_update_cuda_tensors(contiguous_points, contiguous_index, sums, counts);
#endif
  } else {
    TORCH_CHECK(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
                "kmeans_update: the CPU kernel takes float32 or float64, got ", points.scalar_type());
    kmeans_update_cpu(contiguous_points, contiguous_index, sums, counts);
  }
  return {sums, counts};
}

}  // namespace cgns
