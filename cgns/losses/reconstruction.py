"""Loss 4 (CM-MIR, stage 2): weighted L1 between the reconstruction and the normalised input image; with input
masking (--mir-masking input) on the masked patches only, gathered by the fused gather_patches."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cgns.distributed import global_mean
from cgns.ops import gather_patches


def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor, weight: float = 10.0) -> dict:
    """reconstruction [B,3,S,S] in [-1,1], images [B,3,S,S] (normalised mean .5 std .5, so also [-1,1]).

    Returns {'reconstruction': weight * mean |reconstruction - images|}.
    """
    if reconstruction.shape != images.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and images {tuple(images.shape)} differ; "
                         f"the decoder must output the input resolution")
    total = F.l1_loss(reconstruction.float(), images.float(), reduction="sum")
    return {"reconstruction": weight * global_mean(total, images.numel())}


def patch_targets(images: torch.Tensor, patch_size: int, index: torch.Tensor, normalise: bool = False):
    """Pixels of the picked patches as reconstruction targets: images [B,3,S,S], index long[B,K] -> [B,K,3*p*p]
    (rows of F.unfold). normalise: each patch to mean 0, variance 1 over its pixels (MAE's norm_pix_loss)."""
    target = gather_patches(images, patch_size, index)
    if normalise:
        mean = target.mean(dim=-1, keepdim=True)
        variance = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (variance + 1e-6).sqrt()
    return target


def masked_patch_loss(prediction: torch.Tensor, images: torch.Tensor, patch_size: int,
                      masked_index: torch.Tensor, weight: float = 10.0, normalise_target: bool = False) -> dict:
    """prediction [B,3,S,S] (the decoder's image), images [B,3,S,S], masked_index long[B,K] (the patches the
    encoder never saw) -> {'reconstruction': weight * mean |predicted - target| over the masked patches' pixels}.

    Both sides are gathered by gather_patches, so its backward (a scatter-add onto the prediction) is on the path.
    """
    if prediction.shape != images.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and images {tuple(images.shape)} differ")
    predicted = gather_patches(prediction, patch_size, masked_index)                        # [B,K,3p^2]
    target = patch_targets(images.detach(), patch_size, masked_index, normalise_target)     # [B,K,3p^2]
    total = F.l1_loss(predicted.float(), target.float(), reduction="sum")
    return {"reconstruction": weight * global_mean(total, predicted.numel())}
