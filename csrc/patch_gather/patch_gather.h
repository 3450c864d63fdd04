// Gathers of picked patches and their scatter-add backward.
//   masked_patch_gather(tokens [B,L,D], index int64[B,M]) -> [B,M,D]          out[b,m] = tokens[b, index[b,m]]
//   gather_patches(images [B,C,H,W], p, index int64[B,M]) -> [B,M,C*p*p]     rows laid out (C, p, p), patches
//     numbered row-major over the (H/p) x (W/p) grid (= rows of F.unfold(images, p, stride=p).transpose(1, 2)).
#pragma once
#include <cstdint>

#include "../launch.h"

namespace cgns {

// ---- CUDA launchers (patch_gather_cuda.cu). Return a cudaError_t code, 0 on success. ----
// tokens strided (stride_b, stride_l, stride_d in elements); out [B,M,D] contiguous.
int token_gather_cuda(DType dtype, const void* tokens, int64_t stride_b, int64_t stride_l, int64_t stride_d,
                      const int64_t* index, int64_t batch, int64_t picked, int64_t dim, void* out, void* stream);
// grad_out [B,M,D] contiguous (dtype) added into grad_tokens [B,L,D] (float32, float64 for float64).
int token_scatter_add_cuda(DType dtype, const void* grad_out, const int64_t* index, int64_t batch, int64_t picked,
                           int64_t num_tokens, int64_t dim, void* grad_tokens, void* stream);
// images [B,C,H,W] contiguous; out [B,M,C*p*p] contiguous.
int image_patch_gather_cuda(DType dtype, const void* images, const int64_t* index, int64_t batch, int64_t picked,
                            int64_t channels, int64_t height, int64_t width, int64_t patch, void* out,
                            void* stream);
// grad_out [B,M,C*p*p] contiguous added into grad_images [B,C,H,W] (float32, float64 for float64).
int image_patch_scatter_add_cuda(DType dtype, const void* grad_out, const int64_t* index, int64_t batch,
                                 int64_t picked, int64_t channels, int64_t height, int64_t width, int64_t patch,
                                 void* grad_images, void* stream);

}  // namespace cgns

#ifndef __CUDACC__
#include <ATen/core/Tensor.h>

#include <optional>

namespace cgns {

// CPU kernels (patch_gather_cpu.cpp; image_patch_gather_cpu in patch_gather_cpu_image.cpp); index checked and
// contiguous. The scatter-adds overwrite their whole output (it may be uninitialised).
void token_gather_cpu(const at::Tensor& tokens, const at::Tensor& index, at::Tensor& out);
void token_scatter_add_cpu(const at::Tensor& grad_out, const at::Tensor& index, at::Tensor& grad_tokens);
void image_patch_gather_cpu(const at::Tensor& images, const at::Tensor& index, int64_t patch, at::Tensor& out);
void image_patch_scatter_add_cpu(const at::Tensor& grad_out, const at::Tensor& index, int64_t patch,
                                 at::Tensor& grad_images);

// Device dispatch with input checks (patch_gather.cpp). `out`, when given, is a preallocated contiguous result
// (the benchmark uses it to time the gather without the allocator's page faults).
at::Tensor masked_patch_gather_forward(const at::Tensor& tokens, const at::Tensor& index,
                                       const std::optional<at::Tensor>& out);
at::Tensor masked_patch_gather_backward(const at::Tensor& grad_out, const at::Tensor& index, int64_t num_tokens);
at::Tensor gather_patches_forward(const at::Tensor& images, int64_t patch, const at::Tensor& index,
                                  const std::optional<at::Tensor>& out);
at::Tensor gather_patches_backward(const at::Tensor& grad_out, const at::Tensor& index, int64_t patch,
                                   int64_t height, int64_t width);

}  // namespace cgns
#endif
