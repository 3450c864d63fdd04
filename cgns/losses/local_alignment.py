"""Loss 2 (local image: SimSiam between patches and their text-to-image features) and the plain form of loss 3
(local text: sentences against their image-to-text features, cross-entropy on the diagonal)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgns.distributed import gather_rows, global_mean


class Predictor(nn.Sequential):
    """SimSiam predictor dim -> dim/2 -> dim (768 -> 384 -> 768 at full size)."""

    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim, dim // 2), nn.ReLU(inplace=True), nn.Linear(dim // 2, dim))


class _CosineToTarget(torch.autograd.Function):
    """cos(x, t) = x.t / (|x| |t|) with no gradient to t; backward in two passes over [..., D]:
    d cos / dx = t / (|x| |t|) - cos x / |x|^2 (the second term is 0 where |x| is clamped at eps)."""

    @staticmethod
    def forward(ctx, x, target, eps):
        x_norm = torch.linalg.vector_norm(x, dim=-1).clamp_min(eps)
        target_norm = torch.linalg.vector_norm(target, dim=-1).clamp_min(eps)
        cosine = torch.linalg.vecdot(x, target) / (x_norm * target_norm)
        ctx.save_for_backward(x, target, x_norm, target_norm, cosine)
        ctx.eps = eps
        return cosine

    @staticmethod
    def backward(ctx, grad):
        x, target, x_norm, target_norm, cosine = ctx.saved_tensors
        along_target = grad / (x_norm * target_norm)
        along_x = -grad * cosine / x_norm.square() * (x_norm > ctx.eps)
        return torch.addcmul(target * along_target[..., None], x, along_x[..., None]), None, None


def cosine_to_target(x: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """cos(x, target) along the last dimension, no gradient to target: [..., D] x [..., D] -> [...].

    F.cosine_similarity's value and gradient (each norm clamped at eps; at least float32, as autocast runs it) at a
    quarter to a third of its cost: it divides both full tensors by their norms, forward and backward.
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, target.dtype), torch.float32)
    return _CosineToTarget.apply(x.to(dtype), target.detach().to(dtype), eps)


def predict_from_factors(predictor: nn.Sequential, attention: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """predictor(attention @ values) with its first Linear applied to the values before the product:
    (A @ V) W^T + b = A @ (V W^T) + b, the same value with L/S times fewer flops in that layer.

    attention [B,L,S], values [B,S,D] -> [B,L,D_out].
    """
    first, *rest = predictor
    if not isinstance(first, nn.Linear):
        raise TypeError(f"text_to_patch_factors needs a predictor that starts with nn.Linear, got {first}")
    projected = F.linear(values, first.weight)                                              # [B,S,D/2]
    hidden = torch.baddbmm(first.bias, attention, projected) if first.bias is not None else attention @ projected
    for module in rest:
        hidden = module(hidden)
    return hidden


def simsiam_loss(patches: torch.Tensor, text_to_patch: torch.Tensor, predictor: nn.Module,
                 text_to_patch_factors: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """patches [B,L,D] and text_to_patch [B,L,D] (one text-to-image vector per patch).

    Negative cosine, both directions through the shared predictor, stop-gradient on the targets, averaged over
    every patch of the (global) batch. Returns {'local_image': loss} in [-1, 1].

    text_to_patch_factors = (patch_attention [B,L,S], text values [B,S,D]) whose product is text_to_patch
    (SigmoidCrossAttention returns them): then the predictor's first layer runs on the S sentences, not the L patches.
    """
    patch_side = cosine_to_target(predictor(patches), text_to_patch)                       # [B,L]
    predicted = (predictor(text_to_patch) if text_to_patch_factors is None
                 else predict_from_factors(predictor, *text_to_patch_factors))              # [B,L,D]
    text_side = cosine_to_target(predicted, patches)                                       # [B,L]
    total = (patch_side.sum() + text_side.sum()) / 2
    return {"local_image": -global_mean(total, patch_side.numel())}


def sentence_logits(sentences: torch.Tensor, image_to_sentence: torch.Tensor, temperature: float = 1.0):
    """z1 = this rank's sentences [n,D], z2 = their image-to-text features [n,D] (gathered from every rank).

    Returns (z1 normalised [n,D], cosine logits [n,N] (rows = this rank's z1, columns = every rank's z2),
    labels long[n] (the column of each row's own z2)).
    """
    z1 = F.normalize(sentences, dim=-1)
    z2_all, offset = gather_rows(F.normalize(image_to_sentence, dim=-1), kind="sentences")   # [N,D]
    logits = z1 @ z2_all.T                                                 # [n,N]
    if temperature != 1.0:                                                 # 1.0 is the default: skip a copy
        logits = logits / temperature
    labels = offset + torch.arange(z1.shape[0], device=z1.device)
    return z1, z2_all, logits, labels


def sentence_contrastive_loss(sentences: torch.Tensor, image_to_sentence: torch.Tensor,
                              temperature: float = 1.0) -> dict:
    """The local text loss without CGNS: cross-entropy of each sentence against all z2, target its own.

    sentences [n,D], image_to_sentence [n,D] -> {'local_text': loss}.
    """
    _, _, logits, labels = sentence_logits(sentences, image_to_sentence, temperature)
    return {"local_text": global_mean(F.cross_entropy(logits, labels, reduction="sum"), labels.shape[0])}
