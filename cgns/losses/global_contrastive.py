"""Global InfoNCE between image vectors and report vectors, gathered across ranks with gradient.

One function, `bidirectional_info_nce`, serves every objective: CM-CGNS's loss 1 (`global_contrastive_loss`: equal
weights, learnable temperature), ConVIRT (weights 0.75 / 0.25, temperature 0.1), GLoRIA's global term and MGCA's
instance-wise term (weights 1 / 1, fixed temperatures 0.1 and 0.07).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cgns.distributed import gather_rows, global_mean

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: keeps a learnable temperature from collapsing


def bidirectional_info_nce(image: torch.Tensor, report: torch.Tensor, logit_scale,
                           image_to_report_weight: float = 0.5, report_to_image_weight: float = 0.5) -> torch.Tensor:
    """w_ir * mean_i CE(scale <v_i, u_.>, i) + w_ri * mean_i CE(scale <u_i, v_.>, i) over the global batch.

    image [B,D], report [B,D] (unit norm, so <.,.> is the cosine), logit_scale: a float or a [] tensor (1/tau).
    This rank's rows against every rank's columns (gathered with gradient), labels offset by the rank's position;
    the value is this rank's share of the global mean (cgns.distributed.global_mean). Returns a [] tensor.
    """
    image_all, offset = gather_rows(image, kind="reports")                                  # [N,D]
    report_all, _ = gather_rows(report, kind="reports")                                     # [N,D]
    labels = offset + torch.arange(image.shape[0], device=image.device)
    image_to_report = logit_scale * image @ report_all.T                    # [B,N]
    report_to_image = logit_scale * report @ image_all.T                    # [B,N]
    total = (image_to_report_weight * F.cross_entropy(image_to_report, labels, reduction="sum")
             + report_to_image_weight * F.cross_entropy(report_to_image, labels, reduction="sum"))
    return global_mean(total, image.shape[0])


def global_contrastive_loss(image: torch.Tensor, report: torch.Tensor, log_logit_scale: torch.Tensor) -> dict:
    """CM-CGNS's loss 1: image [B,D], report [B,D] (both L2-normalised), log_logit_scale [] (learnable, init
    log(1/0.1), its exponential clamped at 100). The two directions averaged. Returns {'global': loss}."""
    scale = log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    return {"global": bidirectional_info_nce(image, report, scale)}


def initial_log_logit_scale(temperature: float = 0.1) -> float:
    return math.log(1.0 / temperature)
