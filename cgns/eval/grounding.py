"""Phrase-grounding metrics of a text-to-image similarity map against a box: CNR and mIoU over thresholds.

CNR (BioViL, Boecking et al. 2022): with A the pixels inside the box and Abar the pixels outside it (both within
the image, padding excluded), CNR = |mean(A) - mean(Abar)| / sqrt(var(A) + var(Abar)) on the similarity map
upsampled to the image. mIoU: the map min-max scaled to [0, 1] within the image, thresholded at each of
THRESHOLDS, the IoU of each region (map >= t) with the box, averaged over the thresholds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def upsample_map(similarity: torch.Tensor, size: int) -> torch.Tensor:
    """[gh, gw] patch-grid map -> [size, size] pixel map (bilinear, as the maps are drawn)."""
    if similarity.dim() != 2:
        raise ValueError(f"similarity map must be [gh, gw], got shape {tuple(similarity.shape)}")
    return F.interpolate(similarity[None, None].float(), size=(size, size), mode="bilinear",
                         align_corners=False)[0, 0]


def box_mask(box, size: int) -> torch.Tensor:
    """bool [size, size]: pixels whose centre (x + 0.5, y + 0.5) lies inside box (x1, y1, x2, y2), in pixels."""
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    x1, y1, x2, y2 = (float(v) for v in box)
    return ((centres >= y1) & (centres < y2))[:, None] & ((centres >= x1) & (centres < x2))[None, :]


def cnr(values: torch.Tensor, inside: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Contrast-to-noise ratio of `values` [H, W] between `inside` and the rest of `valid` (bool [H, W]; default:
    everywhere). Population variances; nan when either region is empty or both are constant."""
    valid = torch.ones_like(inside) if valid is None else valid
    a, b = values[inside & valid].double(), values[~inside & valid].double()
    if a.numel() == 0 or b.numel() == 0:
        return float("nan")
    noise = torch.sqrt(a.var(unbiased=False) + b.var(unbiased=False))
    if noise == 0:
        return float("nan")
    return float((a.mean() - b.mean()).abs() / noise)


def mean_iou(values: torch.Tensor, inside: torch.Tensor, valid: torch.Tensor | None = None,
             thresholds=THRESHOLDS) -> float:
    """IoU of {values >= t} with `inside`, averaged over thresholds t of the map min-max scaled within `valid`."""
    valid = torch.ones_like(inside) if valid is None else valid
    scores = values.double()
    low, high = scores[valid].min(), scores[valid].max()
    scaled = (scores - low) / (high - low) if high > low else torch.zeros_like(scores)
    truth = inside & valid
    ious = []
    for t in thresholds:
        predicted = (scaled >= t) & valid
        union = (predicted | truth).sum()
        ious.append(float((predicted & truth).sum()) / float(union) if union > 0 else 0.0)
    return sum(ious) / len(ious)
