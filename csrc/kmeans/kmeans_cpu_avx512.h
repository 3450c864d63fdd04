// Plain-C interface of the AVX-512 float32 assign kernel (kmeans_cpu_avx512.cpp); used by kmeans_cpu.cpp when
// avx512_enabled() (cpu_features.h) says the running CPU has AVX-512F and it is not switched off.
#pragma once
#include <cstdint>

#include "cpu_features.h"

namespace cgns {

// Sizes (in floats) of the packed centroids and of one thread's scratch rows.
int64_t avx512_packed_floats(int64_t num_clusters, int64_t dim);
int64_t avx512_scratch_floats(int64_t num_clusters);
// unit_centroids [K,D] row-major -> packed panels of 64 centroids (zero padded to a multiple of 16).
void avx512_pack_centroids(const float* unit_centroids, int64_t num_clusters, int64_t dim, float* packed);
// Top-2 of points [rows,D] (row-major) against the packed centroids: index [rows,2], similarity [rows,2].
void avx512_assign_rows(const float* points, int64_t rows, int64_t dim, const float* packed, int64_t num_clusters,
                        double norm_eps, int64_t* index, float* similarity, float* scratch);

}  // namespace cgns
