// AVX-512 register-blocked kernel for the float32 CPU kmeans_assign (no torch headers: compiles in a second).
//
// Why not BLAS: torch's MKL runs its AVX2 code path on AMD CPUs, so the plain GEMM leaves half of an AVX-512
// machine idle; this 6x64 micro-kernel (24 zmm accumulators, centroids packed 64 per panel, points read in
// place) uses the full width and fuses the top-2 scan and the point norms while the rows are in L1.
// Compiled with a target attribute and chosen at run time, so the shipped build still runs on any x86-64.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kmeans_cpu_avx512.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CGNS_AVX512_TARGET __attribute__((target("avx512f,fma")))

namespace cgns {
namespace {

constexpr int kRows = 6;      // points per micro-kernel
constexpr int kLanes = 16;    // floats per zmm
constexpr int kStrips = 4;    // zmm strips of centroids per panel (64 centroids)

// dots[r][0 : NR*16] = sum_d points[r][d] * panel[d][:], for R rows.
template <int R, int NR>
CGNS_AVX512_TARGET inline void micro_kernel(const float* points, int64_t dim, const float* panel, float* dots,
                                             int64_t dots_stride) {
  __m512 acc[R][NR];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t d = 0; d < dim; ++d) {
    __m512 centroid[NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) centroid[j] = _mm512_loadu_ps(panel + d * NR * kLanes + j * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 point = _mm512_set1_ps(points[r * dim + d]);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_fmadd_ps(point, centroid[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) _mm512_storeu_ps(dots + r * dots_stride + j * kLanes, acc[r][j]);
}

template <int R>
CGNS_AVX512_TARGET void rows_times_panel(const float* points, int64_t dim, const float* panel, int strips,
                                          float* dots, int64_t dots_stride) {
  switch (strips) {
    case 4: micro_kernel<R, 4>(points, dim, panel, dots, dots_stride); break;
    case 3: micro_kernel<R, 3>(points, dim, panel, dots, dots_stride); break;
    case 2: micro_kernel<R, 2>(points, dim, panel, dots, dots_stride); break;
    default: micro_kernel<R, 1>(points, dim, panel, dots, dots_stride); break;
  }
}

CGNS_AVX512_TARGET void rows_times_panel_any(int rows, const float* points, int64_t dim, const float* panel,
                                              int strips, float* dots, int64_t dots_stride) {
  switch (rows) {
    case 6: rows_times_panel<6>(points, dim, panel, strips, dots, dots_stride); break;
    case 5: rows_times_panel<5>(points, dim, panel, strips, dots, dots_stride); break;
    case 4: rows_times_panel<4>(points, dim, panel, strips, dots, dots_stride); break;
    case 3: rows_times_panel<3>(points, dim, panel, strips, dots, dots_stride); break;
    case 2: rows_times_panel<2>(points, dim, panel, strips, dots, dots_stride); break;
    default: rows_times_panel<1>(points, dim, panel, strips, dots, dots_stride); break;
  }
}

CGNS_AVX512_TARGET float row_norm(const float* row, int64_t dim) {
  __m512 acc = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + kLanes <= dim; d += kLanes) {
    const __m512 x = _mm512_loadu_ps(row + d);
    acc = _mm512_fmadd_ps(x, x, acc);
  }
  alignas(64) float lanes[kLanes];  // a plain horizontal sum (GCC 12 warns inside _mm512_reduce_add_ps)
  _mm512_store_ps(lanes, acc);
  float sum = 0.0f;
  for (int j = 0; j < kLanes; ++j) sum += lanes[j];
  for (; d < dim; ++d) sum += row[d] * row[d];
  return std::sqrt(sum);
}

int64_t padded_clusters(int64_t num_clusters) { return (num_clusters + kLanes - 1) / kLanes * kLanes; }

}  // namespace

int64_t avx512_packed_floats(int64_t num_clusters, int64_t dim) { return padded_clusters(num_clusters) * dim; }
int64_t avx512_scratch_floats(int64_t num_clusters) { return kRows * padded_clusters(num_clusters); }

void avx512_pack_centroids(const float* unit_centroids, int64_t num_clusters, int64_t dim, float* packed) {
  // Panel g holds centroids [64g, 64g + 16*strips) as [dim][strips*16]; padding centroids are zero.
  const int64_t padded = padded_clusters(num_clusters);
  for (int64_t first = 0; first < padded; first += kStrips * kLanes) {
    const int64_t width = std::min<int64_t>(kStrips * kLanes, padded - first);
    float* panel = packed + first * dim;
    for (int64_t d = 0; d < dim; ++d)
      for (int64_t j = 0; j < width; ++j) {
        const int64_t k = first + j;
        panel[d * width + j] = k < num_clusters ? unit_centroids[k * dim + d] : 0.0f;
      }
  }
}

CGNS_AVX512_TARGET void avx512_assign_rows(const float* points, int64_t rows, int64_t dim, const float* packed,
                                           int64_t num_clusters, double norm_eps, int64_t* index,
                                           float* similarity, float* scratch) {
  const int64_t padded = padded_clusters(num_clusters);
  for (int64_t row0 = 0; row0 < rows; row0 += kRows) {
    const int block = static_cast<int>(std::min<int64_t>(kRows, rows - row0));
    const float* block_points = points + row0 * dim;
    for (int64_t first = 0; first < padded; first += kStrips * kLanes) {
      const int strips = static_cast<int>(std::min<int64_t>(kStrips * kLanes, padded - first) / kLanes);
      rows_times_panel_any(block, block_points, dim, packed + first * dim, strips, scratch + first, padded);
    }
    for (int r = 0; r < block; ++r) {
      // Strict '>' keeps the lower index on ties; padding columns (k >= K) are never read.
      const float* dots = scratch + r * padded;
      int64_t first = 0, second = -1;
      float first_v = dots[0], second_v = -std::numeric_limits<float>::infinity();
      for (int64_t k = 1; k < num_clusters; ++k) {
        const float v = dots[k];
        if (v > first_v) {
          second = first, second_v = first_v, first = k, first_v = v;
        } else if (second < 0 || v > second_v) {
          second = k, second_v = v;
        }
      }
      const float norm = std::max(row_norm(block_points + r * dim, dim), static_cast<float>(norm_eps));
      const int64_t n = row0 + r;
      index[2 * n] = first, index[2 * n + 1] = second;
      similarity[2 * n] = first_v / norm, similarity[2 * n + 1] = second_v / norm;
    }
  }
}

}  // namespace cgns

#else  // not x86-64 GCC/Clang: the BLAS tile path is always used

namespace cgns {
int64_t avx512_packed_floats(int64_t, int64_t) { return 0; }
int64_t avx512_scratch_floats(int64_t) { return 0; }
void avx512_pack_centroids(const float*, int64_t, int64_t, float*) {}
void avx512_assign_rows(const float*, int64_t, int64_t, const float*, int64_t, double, int64_t*, float*, float*) {}
}  // namespace cgns

#endif
