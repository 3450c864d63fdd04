"""Loss 1: symmetric InfoNCE between global image vectors and report vectors, gathered across ranks."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cgns.distributed import gather_rows, global_mean

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: keeps a learnable temperature from collapsing


def global_contrastive_loss(image: torch.Tensor, report: torch.Tensor, log_logit_scale: torch.Tensor) -> dict:
    """image [B,D], report [B,D] (both L2-normalised), log_logit_scale [] (learnable, init log(1/0.1)).

    This rank's rows against every rank's columns (gathered with gradient), labels offset by the rank's position.
    Returns {'global': loss}.
    """
    image_all, offset = gather_rows(image)                                  # [N,D]
    report_all, _ = gather_rows(report)                                     # [N,D]
    scale = log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    labels = offset + torch.arange(image.shape[0], device=image.device)
    image_to_report = scale * image @ report_all.T                          # [B,N]
    report_to_image = scale * report @ image_all.T                          # [B,N]
    total = (F.cross_entropy(image_to_report, labels, reduction="sum")
             + F.cross_entropy(report_to_image, labels, reduction="sum")) / 2
    return {"global": global_mean(total, image.shape[0])}


def initial_log_logit_scale(temperature: float = 0.1) -> float:
    return math.log(1.0 / temperature)
