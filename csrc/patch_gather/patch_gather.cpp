// Input checks and device dispatch of the patch gathers. The backward accumulates half types in float32 (on both
// devices) so duplicate indices do not lose precision, then casts back.
#include <ATen/ATen.h>

#include "../torch_glue.h"
#include "patch_gather.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that pulls in cuSPARSE/cuBLAS headers
#include <c10/cuda/CUDAGuard.h>
#endif

namespace cgns {
namespace {

void check_index(const at::Tensor& data, const at::Tensor& index, const char* op) {
  TORCH_CHECK(index.dim() == 2 && index.size(0) == data.size(0), op, ": index must be [B,M] with B=", data.size(0),
              ", got ", index.sizes());
  TORCH_CHECK(index.scalar_type() == at::kLong, op, ": index must be int64, got ", index.scalar_type());
  TORCH_CHECK(index.device() == data.device(), op, ": index is on ", index.device(), " but data on ", data.device());
#ifdef WITH_CUDA
  TORCH_CHECK(data.is_cpu() || data.is_cuda(), op, ": tensors must be on CPU or CUDA, got ", data.device());
#else
  TORCH_CHECK(data.is_cpu(), op, ": this build has no CUDA kernels, got a tensor on ", data.device());
#endif
  dtype_code(data.scalar_type());  // rejects non-floating dtypes with a clear message
}

void check_patch_grid(int64_t height, int64_t width, int64_t patch, const char* op) {
  TORCH_CHECK(patch >= 1 && height % patch == 0 && width % patch == 0, op, ": image size ", height, "x", width,
              " must be a multiple of the patch size ", patch);
}

#ifdef WITH_CUDA
void* stream_of(const at::Tensor& tensor) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(tensor.device().index()).stream());
}
#endif

at::Tensor result_tensor(at::IntArrayRef sizes, const at::Tensor& like, const std::optional<at::Tensor>& out,
                         const char* op) {
  if (!out.has_value()) return at::empty(sizes, like.options());
  TORCH_CHECK(out->sizes() == sizes && out->scalar_type() == like.scalar_type() && out->device() == like.device() &&
                  out->is_contiguous(),
              op, ": out must be a contiguous ", like.scalar_type(), " tensor of shape ", sizes, " on ",
              like.device(), ", got ", out->sizes());
  return *out;
}

// A float32/float64 buffer for the scatter-add, cast back to the gradient dtype by the caller. The CUDA atomics
// need zeros; the CPU kernels zero their own slabs while they are in cache.
at::Tensor accumulator(at::IntArrayRef sizes, const at::Tensor& like) {
  const auto options = like.options().dtype(accumulate_type(like.scalar_type()));
  return like.is_cuda() ? at::zeros(sizes, options) : at::empty(sizes, options);
}

}  // namespace

at::Tensor masked_patch_gather_forward(const at::Tensor& tokens, const at::Tensor& index,
                                       const std::optional<at::Tensor>& out_arg) {
  const char* op = "masked_patch_gather";
  TORCH_CHECK(tokens.dim() == 3, op, ": tokens must be [B,L,D], got ", tokens.sizes());
  check_index(tokens, index, op);
  at::Tensor out = result_tensor({index.size(0), index.size(1), tokens.size(2)}, tokens, out_arg, op);
  if (out.numel() == 0) return out;
  check_index_range(index, tokens.size(1), op, "token positions");
  at::Tensor idx = index.contiguous();
  if (tokens.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(tokens.device());
    check_cuda_launch(token_gather_cuda(dtype_code(tokens.scalar_type()), tokens.data_ptr(), tokens.stride(0),
                                        tokens.stride(1), tokens.stride(2), idx.data_ptr<int64_t>(), idx.size(0),
                                        idx.size(1), tokens.size(2), out.data_ptr(), stream_of(tokens)),
                      op);
#endif
  } else {
    token_gather_cpu(tokens, idx, out);
  }
  return out;
}

at::Tensor masked_patch_gather_backward(const at::Tensor& grad_out, const at::Tensor& index, int64_t num_tokens) {
  const char* op = "masked_patch_gather_backward";
  TORCH_CHECK(grad_out.dim() == 3, op, ": grad_out must be [B,M,D], got ", grad_out.sizes());
  check_index(grad_out, index, op);
  TORCH_CHECK(grad_out.size(1) == index.size(1), op, ": grad_out has M=", grad_out.size(1), " but index M=",
              index.size(1));
  const std::vector<int64_t> sizes{grad_out.size(0), num_tokens, grad_out.size(2)};
  if (grad_out.numel() == 0) return at::zeros(sizes, grad_out.options());
  check_index_range(index, num_tokens, op, "token positions");
  at::Tensor grad = grad_out.contiguous(), idx = index.contiguous();
  at::Tensor acc = accumulator(sizes, grad);
  if (grad.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(grad.device());
    check_cuda_launch(token_scatter_add_cuda(dtype_code(grad.scalar_type()), grad.data_ptr(),
                                             idx.data_ptr<int64_t>(), idx.size(0), idx.size(1), num_tokens,
                                             grad.size(2), acc.data_ptr(), stream_of(grad)),
                      op);
#endif
  } else {
    token_scatter_add_cpu(grad.to(acc.scalar_type()), idx, acc);
  }
  return acc.to(grad_out.scalar_type());
}

at::Tensor gather_patches_forward(const at::Tensor& images, int64_t patch, const at::Tensor& index,
                                  const std::optional<at::Tensor>& out_arg) {
  const char* op = "gather_patches";
  TORCH_CHECK(images.dim() == 4, op, ": images must be [B,C,H,W], got ", images.sizes());
  check_index(images, index, op);
  check_patch_grid(images.size(2), images.size(3), patch, op);
  const int64_t channels = images.size(1);
  at::Tensor out = result_tensor({index.size(0), index.size(1), channels * patch * patch}, images, out_arg, op);
  if (out.numel() == 0) return out;
  check_index_range(index, (images.size(2) / patch) * (images.size(3) / patch), op, "patches of the grid");
  at::Tensor img = images.contiguous(), idx = index.contiguous();
  if (img.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(img.device());
    check_cuda_launch(image_patch_gather_cuda(dtype_code(img.scalar_type()), img.data_ptr(),
                                              idx.data_ptr<int64_t>(), idx.size(0), idx.size(1), channels,
                                              img.size(2), img.size(3), patch, out.data_ptr(), stream_of(img)),
                      op);
#endif
  } else {
    image_patch_gather_cpu(img, idx, patch, out);
  }
  return out;
}

at::Tensor gather_patches_backward(const at::Tensor& grad_out, const at::Tensor& index, int64_t patch,
                                   int64_t height, int64_t width) {
  const char* op = "gather_patches_backward";
  TORCH_CHECK(grad_out.dim() == 3, op, ": grad_out must be [B,M,C*p*p], got ", grad_out.sizes());
  check_index(grad_out, index, op);
  check_patch_grid(height, width, patch, op);
  TORCH_CHECK(grad_out.size(1) == index.size(1) && grad_out.size(2) % (patch * patch) == 0, op,
              ": grad_out must be [B,M,C*p*p] with M=", index.size(1), " and p=", patch, ", got ", grad_out.sizes());
  const int64_t channels = grad_out.size(2) / (patch * patch);
  const std::vector<int64_t> sizes{grad_out.size(0), channels, height, width};
  if (grad_out.numel() == 0) return at::zeros(sizes, grad_out.options());
  check_index_range(index, (height / patch) * (width / patch), op, "patches of the grid");
  at::Tensor grad = grad_out.contiguous(), idx = index.contiguous();
  at::Tensor acc = accumulator(sizes, grad);
  if (grad.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(grad.device());
    check_cuda_launch(image_patch_scatter_add_cuda(dtype_code(grad.scalar_type()), grad.data_ptr(),
                                                   idx.data_ptr<int64_t>(), idx.size(0), idx.size(1), channels,
                                                   height, width, patch, acc.data_ptr(), stream_of(grad)),
                      op);
#endif
  } else {
    image_patch_scatter_add_cpu(grad.to(acc.scalar_type()), idx, patch, acc);
  }
  return acc.to(grad_out.scalar_type());
}

}  // namespace cgns
