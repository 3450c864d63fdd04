"""Gathers of picked patches (token space and pixel space) with scatter-add backward."""
import torch
from torch.autograd.function import once_differentiable

from cgns.ops import reference
from cgns.ops.extension import kernels_for


class _MaskedPatchGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tokens, index, ext):
        ctx.ext, ctx.num_tokens = ext, tokens.shape[1]
        ctx.save_for_backward(index)
        return ext.masked_patch_gather_forward(tokens, index)

    @staticmethod
    @once_differentiable  # the scatter-add kernel builds no graph: double backward must raise, not return zeros
    def backward(ctx, grad_out):
        (index,) = ctx.saved_tensors
        return ctx.ext.masked_patch_gather_backward(grad_out, index, ctx.num_tokens), None, None


class _GatherPatches(torch.autograd.Function):
    @staticmethod
    def forward(ctx, images, patch_size, index, ext):
        ctx.ext, ctx.patch_size, ctx.image_size = ext, patch_size, tuple(images.shape[2:])
        ctx.save_for_backward(index)
        return ext.gather_patches_forward(images, patch_size, index)

    @staticmethod
    @once_differentiable  # the scatter-add kernel builds no graph: double backward must raise, not return zeros
    def backward(ctx, grad_out):
        (index,) = ctx.saved_tensors
        height, width = ctx.image_size
        grad = ctx.ext.gather_patches_backward(grad_out, index, ctx.patch_size, height, width)
        return grad, None, None, None


def masked_patch_gather(tokens, index):
    """out[b, m] = tokens[b, index[b, m]]: tokens [B,L,D], index long[B,M] in [0,L) -> [B,M,D].

    Differentiable in tokens; the backward scatter-adds (duplicate indices accumulate).
    """
    reference.check_token_gather_inputs(tokens, index)
    ext = kernels_for(tokens)
    if ext is None:
        return reference.reference_masked_patch_gather(tokens, index)
    return _MaskedPatchGather.apply(tokens, index, ext)


def gather_patches(images, patch_size, index):
    """Pixels of the picked patches: images [B,C,H,W], p, index long[B,M] -> [B,M,C*p*p].

    Patches are numbered row-major over the (H/p) x (W/p) grid and each row is laid out (C, p, p), i.e. rows of
    F.unfold(images, p, stride=p).transpose(1, 2), without building that full tensor. Differentiable in images.
    """
    reference.check_image_gather_inputs(images, patch_size, index)
    ext = kernels_for(images)
    if ext is None:
        return reference.reference_gather_patches(images, patch_size, index)
    return _GatherPatches.apply(images, int(patch_size), index, ext)
