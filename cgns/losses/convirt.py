"""ConVIRT: Zhang, Jiang, Miura, Manning, Langlotz, "Contrastive Learning of Medical Visual Representations from
Paired Images and Text", MLHC 2022 (arXiv 2010.00747).

The loss as computed here, over the global batch of N pairs (gathered across ranks with gradient):
    v_i = g_v(h_v,i) / |.|,   u_i = g_u(maxpool_t h_u,i,t) / |.|          (g: Linear-ReLU-Linear, d = 512)
    l_i(v->u) = -log exp(<v_i,u_i>/tau) / sum_k exp(<v_i,u_k>/tau),   l_i(u->v) likewise with v and u swapped
    L = (1/N) sum_i [lambda l_i(v->u) + (1 - lambda) l_i(u->v)],      tau = 0.1, lambda = 0.75
Departures and sources: docs/METHODS.md#convirt.

Inputs (the dict `inputs` of ConVIRTObjective.forward; names shared by every peer objective, see `requires`):
    image_global [B,Di]   the image encoder's global feature (ViT class token / ResNet pooled), before any projection
    tokens [B,T,Dt]       the text encoder's last hidden states
    attention_mask [B,T]  1 on real tokens ([CLS], the report, [SEP]), 0 on padding
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgns.losses.global_contrastive import bidirectional_info_nce
from cgns.models.projection_heads import ProjectionHead


def convirt_loss(image: torch.Tensor, report: torch.Tensor, temperature: float = 0.1,
                 image_to_report_weight: float = 0.75) -> dict:
    """image [B,D], report [B,D] (unit norm) -> {'global': lambda l(v->u) + (1 - lambda) l(u->v)}, the global mean."""
    return {"global": bidirectional_info_nce(image, report, 1.0 / temperature, image_to_report_weight,
                                             1.0 - image_to_report_weight)}


def max_pool_tokens(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """tokens [B,T,D], attention_mask [B,T] -> the element-wise maximum over each report's real tokens, [B,D]."""
    real = attention_mask.bool()[..., None]                                                  # [B,T,1]
    return tokens.masked_fill(~real, torch.finfo(tokens.dtype).min).amax(dim=1)


class ConVIRTObjective(nn.Module):
    """ConVIRT's projection heads and loss. forward(inputs, epoch) -> {'global': loss}."""

    requires = ("image_global", "tokens", "attention_mask")

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int = 512, temperature: float = 0.1,
                 image_to_report_weight: float = 0.75):
        super().__init__()
        if not 0 <= image_to_report_weight <= 1:
            raise ValueError(f"ConVIRT's lambda must be in [0, 1], got {image_to_report_weight}")
        self.temperature, self.image_to_report_weight = temperature, image_to_report_weight
        self.image_head = ProjectionHead(image_dim, image_dim, embed_dim)                     # g_v
        self.text_head = ProjectionHead(text_dim, text_dim, embed_dim)                       # g_u

    def image_embedding(self, inputs: dict) -> torch.Tensor:
        """-> v [B,D], unit norm (also what retrieval and zero-shot evaluation compare)."""
        return F.normalize(self.image_head(inputs["image_global"]), dim=-1)

    def report_embedding(self, inputs: dict) -> torch.Tensor:
        """-> u [B,D], unit norm."""
        return F.normalize(self.text_head(max_pool_tokens(inputs["tokens"], inputs["attention_mask"])), dim=-1)

    def forward(self, inputs: dict, epoch: int = 0) -> dict:
        return convirt_loss(self.image_embedding(inputs), self.report_embedding(inputs), self.temperature,
                            self.image_to_report_weight)
