"""Loss 4 (CM-MIR, stage 2): weighted L1 between the reconstruction and the normalised input image."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cgns.distributed import global_mean


def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor, weight: float = 10.0) -> dict:
    """reconstruction [B,3,S,S] in [-1,1], images [B,3,S,S] (normalised mean .5 std .5, so also [-1,1]).

    Returns {'reconstruction': weight * mean |reconstruction - images|}.
    """
    if reconstruction.shape != images.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and images {tuple(images.shape)} differ; "
                         f"the decoder must output the input resolution")
    total = F.l1_loss(reconstruction.float(), images.float(), reduction="sum")
    return {"reconstruction": weight * global_mean(total, images.numel())}
