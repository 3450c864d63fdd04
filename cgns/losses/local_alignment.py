"""Loss 2 (local image: SimSiam between patches and their text-to-image features) and the plain form of loss 3
(local text: sentences against their image-to-text features, cross-entropy on the diagonal)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgns.losses.distributed import gather_rows, global_mean


class Predictor(nn.Sequential):
    """SimSiam predictor dim -> dim/2 -> dim (768 -> 384 -> 768 at full size)."""

    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim, dim // 2), nn.ReLU(inplace=True), nn.Linear(dim // 2, dim))


def simsiam_loss(patches: torch.Tensor, text_to_patch: torch.Tensor, predictor: nn.Module) -> dict:
    """patches [B,L,D] and text_to_patch [B,L,D] (one text-to-image vector per patch).

    Negative cosine, both directions through the shared predictor, stop-gradient on the targets, averaged over
    every patch of the (global) batch. Returns {'local_image': loss} in [-1, 1].
    """
    patch_side = F.cosine_similarity(predictor(patches), text_to_patch.detach(), dim=-1)    # [B,L]
    text_side = F.cosine_similarity(predictor(text_to_patch), patches.detach(), dim=-1)     # [B,L]
    total = (patch_side.sum() + text_side.sum()) / 2
    return {"local_image": -global_mean(total, patch_side.numel())}


def sentence_logits(sentences: torch.Tensor, image_to_sentence: torch.Tensor, temperature: float = 1.0):
    """z1 = this rank's sentences [n,D], z2 = their image-to-text features [n,D] (gathered from every rank).

    Returns (z1 normalised [n,D], cosine logits [n,N] (rows = this rank's z1, columns = every rank's z2),
    labels long[n] (the column of each row's own z2)).
    """
    z1 = F.normalize(sentences, dim=-1)
    z2_all, offset = gather_rows(F.normalize(image_to_sentence, dim=-1))   # [N,D]
    logits = z1 @ z2_all.T / temperature                                   # [n,N]
    labels = offset + torch.arange(z1.shape[0], device=z1.device)
    return z1, z2_all, logits, labels


def sentence_contrastive_loss(sentences: torch.Tensor, image_to_sentence: torch.Tensor,
                              temperature: float = 1.0) -> dict:
    """The local text loss without CGNS: cross-entropy of each sentence against all z2, target its own.

    sentences [n,D], image_to_sentence [n,D] -> {'local_text': loss}.
    """
    _, _, logits, labels = sentence_logits(sentences, image_to_sentence, temperature)
    return {"local_text": global_mean(F.cross_entropy(logits, labels, reduction="sum"), labels.shape[0])}
