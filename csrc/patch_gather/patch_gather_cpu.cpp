// CPU gathers: token rows are copied with memcpy (the forward runs near copy bandwidth); the pixel-space forward
// has its own file (patch_gather_cpu_image.cpp).
// The backward scatter-adds with one thread per (sample, column block) or (sample, channel): every output
// element is added to in index order by a single thread, so the result is deterministic. That thread also zeroes
// its region right before adding into it (an L2-sized slab), which saves the separate zero-fill pass over the
// whole gradient that torch's gather backward makes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "patch_gather.h"

namespace cgns {
namespace {

// Rows per parallel task: enough work per task to amortise scheduling, small enough to balance.
constexpr int64_t kRowGrain = 64;
// Columns per backward task of the token gather.
constexpr int64_t kColumnBlock = 256;

template <typename scalar_t>
void gather_tokens(const at::Tensor& tokens, const at::Tensor& index, at::Tensor& out) {
  const int64_t batch = index.size(0), picked = index.size(1), dim = tokens.size(2);
  const int64_t sb = tokens.stride(0), sl = tokens.stride(1), sd = tokens.stride(2);
  const scalar_t* src = tokens.data_ptr<scalar_t>();
  const int64_t* idx = index.data_ptr<int64_t>();
  scalar_t* dst = out.data_ptr<scalar_t>();
  at::parallel_for(0, batch * picked, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* from = src + (row / picked) * sb + idx[row] * sl;
      scalar_t* to = dst + row * dim;
      if (sd == 1) {
        std::memcpy(to, from, dim * sizeof(scalar_t));
      } else {
        for (int64_t d = 0; d < dim; ++d) to[d] = from[d * sd];
      }
    }
  });
}

template <typename scalar_t>
void scatter_tokens(const at::Tensor& grad_out, const at::Tensor& index, at::Tensor& grad_tokens) {
  const int64_t batch = index.size(0), picked = index.size(1), dim = grad_out.size(2);
  const int64_t num_tokens = grad_tokens.size(1), blocks = (dim + kColumnBlock - 1) / kColumnBlock;
  const scalar_t* src = grad_out.data_ptr<scalar_t>();
  const int64_t* idx = index.data_ptr<int64_t>();
  scalar_t* dst = grad_tokens.data_ptr<scalar_t>();
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, d0 = (task % blocks) * kColumnBlock;
      const int64_t d1 = std::min(dim, d0 + kColumnBlock);
      for (int64_t l = 0; l < num_tokens; ++l)
        std::memset(dst + (b * num_tokens + l) * dim + d0, 0, (d1 - d0) * sizeof(scalar_t));
      for (int64_t m = 0; m < picked; ++m) {
        const scalar_t* from = src + (b * picked + m) * dim;
        scalar_t* to = dst + (b * num_tokens + idx[b * picked + m]) * dim;
#pragma omp simd
        for (int64_t d = d0; d < d1; ++d) to[d] += from[d];
      }
    }
  });
}

template <typename scalar_t>
void scatter_image_patches(const at::Tensor& grad_out, const at::Tensor& index, int64_t patch,
                           at::Tensor& grad_images) {
  const int64_t batch = index.size(0), picked = index.size(1), channels = grad_images.size(1);
  const int64_t height = grad_images.size(2), width = grad_images.size(3), grid_w = width / patch;
  const int64_t row_len = channels * patch * patch;
  const scalar_t* src = grad_out.data_ptr<scalar_t>();
  const int64_t* idx = index.data_ptr<int64_t>();
  scalar_t* dst = grad_images.data_ptr<scalar_t>();
  at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / channels, c = task % channels;
      std::memset(dst + (b * channels + c) * height * width, 0, height * width * sizeof(scalar_t));
      for (int64_t m = 0; m < picked; ++m) {
        const int64_t py = idx[b * picked + m] / grid_w, px = idx[b * picked + m] % grid_w;
        const scalar_t* from = src + (b * picked + m) * row_len + c * patch * patch;
        scalar_t* plane = dst + ((b * channels + c) * height + py * patch) * width + px * patch;
        for (int64_t i = 0; i < patch; ++i, from += patch) {
          scalar_t* to = plane + i * width;
#pragma omp simd
          for (int64_t j = 0; j < patch; ++j) to[j] += from[j];
        }
      }
    }
  });
}

}  // namespace

void token_gather_cpu(const at::Tensor& tokens, const at::Tensor& index, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "masked_patch_gather_cpu",
                                  [&] { gather_tokens<scalar_t>(tokens, index, out); });
}

void token_scatter_add_cpu(const at::Tensor& grad_out, const at::Tensor& index, at::Tensor& grad_tokens) {
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "masked_patch_gather_backward_cpu",
                             [&] { scatter_tokens<scalar_t>(grad_out, index, grad_tokens); });
}

void image_patch_scatter_add_cpu(const at::Tensor& grad_out, const at::Tensor& index, int64_t patch,
                                 at::Tensor& grad_images) {
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "gather_patches_backward_cpu",
                             [&] { scatter_image_patches<scalar_t>(grad_out, index, patch, grad_images); });
}

}  // namespace cgns
