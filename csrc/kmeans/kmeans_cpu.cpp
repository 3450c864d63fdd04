// CPU kmeans_assign (kmeans_update is in kmeans_update_cpu.cpp).
//
// Points are never normalised in memory: the ranking of p . c_k over k does not depend on |p|, so
// only the two winners are divided by |p|. Two tile paths, both fusing the top-2 scan and the point norms while
// the tile is hot, OpenMP over tiles of points:
//   - float32 on a CPU with AVX-512: the register-blocked kernel of kmeans_cpu_avx512.cpp;
//   - otherwise (float64, older CPUs, CGNS_NO_AVX512=1): one BLAS GEMM per tile (at::mm_out, single-threaded
//     inside the parallel region) against the normalised centroids.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kmeans.h"
#include "kmeans_cpu_avx512.h"

namespace cgns {
namespace {

// Rows per tile: a [rows,K] float tile of dots plus the [rows,D] points stay in a 1-2 MB L2 for K=128, D=768.
constexpr int64_t kTileRows = 256;

template <typename scalar_t>
scalar_t row_norm(const scalar_t* row, int64_t dim) {
  scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t d = 0; d < dim; ++d) sum += row[d] * row[d];
  return std::sqrt(sum);
}

// Top-2 of one row of dots; strict '>' keeps the lower index on ties.
template <typename scalar_t>
void top2(const scalar_t* dots, int64_t num_clusters, int64_t& first, int64_t& second, scalar_t& first_v,
          scalar_t& second_v) {
  first = 0, first_v = dots[0];
  second = -1, second_v = -std::numeric_limits<scalar_t>::infinity();
  for (int64_t k = 1; k < num_clusters; ++k) {
    scalar_t v = dots[k];
    if (v > first_v) {
      second = first, second_v = first_v;
      first = k, first_v = v;
    } else if (second < 0 || v > second_v) {
      second = k, second_v = v;
    }
  }
}

template <typename scalar_t>
void assign_tiles(const at::Tensor& points, const at::Tensor& centroids_t, at::Tensor& index,
                  at::Tensor& similarity) {
  const int64_t num_points = points.size(0), dim = points.size(1), num_clusters = centroids_t.size(1);
  const scalar_t* point_data = points.data_ptr<scalar_t>();
  int64_t* index_data = index.data_ptr<int64_t>();
  scalar_t* sim_data = similarity.data_ptr<scalar_t>();
  const int64_t num_tiles = (num_points + kTileRows - 1) / kTileRows;
  at::parallel_for(0, num_tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    at::Tensor dots = at::empty({kTileRows, num_clusters}, points.options());  // one per thread, reused
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t row0 = tile * kTileRows, rows = std::min(kTileRows, num_points - row0);
      at::Tensor tile_dots = dots.narrow(0, 0, rows);
      at::mm_out(tile_dots, points.narrow(0, row0, rows), centroids_t);  // [rows,K]
      const scalar_t* dot_data = tile_dots.data_ptr<scalar_t>();
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t n = row0 + r;
        int64_t first, second;
        scalar_t first_v, second_v;
        top2(dot_data + r * num_clusters, num_clusters, first, second, first_v, second_v);
        const scalar_t norm = std::max(row_norm(point_data + n * dim, dim), static_cast<scalar_t>(kNormEps));
        index_data[2 * n] = first, index_data[2 * n + 1] = second;
        sim_data[2 * n] = first_v / norm, sim_data[2 * n + 1] = second_v / norm;
      }
    }
  });
}

// Rows per parallel task of the AVX-512 path (a multiple of its 6-row micro-kernel).
constexpr int64_t kAvx512TaskRows = 96;

void assign_avx512(const at::Tensor& points, const at::Tensor& unit_centroids, at::Tensor& index,
                   at::Tensor& similarity) {
  const int64_t num_points = points.size(0), dim = points.size(1), num_clusters = unit_centroids.size(0);
  std::vector<float> packed(avx512_packed_floats(num_clusters, dim));
  avx512_pack_centroids(unit_centroids.data_ptr<float>(), num_clusters, dim, packed.data());
  const float* point_data = points.data_ptr<float>();
  int64_t* index_data = index.data_ptr<int64_t>();
  float* sim_data = similarity.data_ptr<float>();
  const int64_t num_tasks = (num_points + kAvx512TaskRows - 1) / kAvx512TaskRows;
  const int threads = at::get_num_threads();
  // Dynamic scheduling (not at::parallel_for's equal static chunks): on a shared machine a thread whose core is
  // busy takes fewer tiles instead of making the others wait for it. No ATen calls inside the region.
#pragma omp parallel num_threads(threads) if (threads > 1 && num_tasks > 1 && !at::in_parallel_region())
  {
    std::vector<float> scratch(avx512_scratch_floats(num_clusters));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < num_tasks; ++task) {
      const int64_t row0 = task * kAvx512TaskRows, rows = std::min(kAvx512TaskRows, num_points - row0);
      avx512_assign_rows(point_data + row0 * dim, rows, dim, packed.data(), num_clusters, kNormEps,
                         index_data + 2 * row0, sim_data + 2 * row0, scratch.data());
    }
  }
}

}  // namespace

void kmeans_assign_cpu(const at::Tensor& points, const at::Tensor& unit_centroids, at::Tensor& index,
                       at::Tensor& similarity) {
  if (points.scalar_type() == at::kFloat && avx512_enabled()) {
    assign_avx512(points, unit_centroids, index, similarity);
    return;
  }
  at::Tensor centroids_t = unit_centroids.t();  // [D,K] view; BLAS reads it transposed
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "kmeans_assign_cpu", [&] {
    assign_tiles<scalar_t>(points, centroids_t, index, similarity);
  });
}

}  // namespace cgns
