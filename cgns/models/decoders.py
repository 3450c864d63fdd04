"""CM-MIR decoders: reconstruct the image from partly dropped local image features fused with the text-to-image
features of the cross-modal attention.

ViT: drop whole patch tokens (rescaled by 1/(1-p)), fuse by cross-attention, refine with a transformer decoder of
independent layers (batch-first attention), then a conv/upsample head. ResNet: drop whole channels (same rescale),
concatenate with the text-to-image map, then the head. The head ends in tanh, matching the [-1,1] target (the
original ended in ReLU then tanh, so its output lay in [0,1)).

Dropping is the pretext task, not a regulariser, so it also happens in eval mode.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def drop_tokens(tokens: torch.Tensor, p: float) -> torch.Tensor:
    """tokens [B,L,D]: each token zeroed with probability p, the kept ones scaled by 1/(1-p)."""
    if p <= 0:
        return tokens
    keep = torch.rand(tokens.shape[0], tokens.shape[1], 1, device=tokens.device) >= p       # [B,L,1]
    return tokens * keep.to(tokens.dtype) / (1.0 - p)


def drop_channels(feature_map: torch.Tensor, p: float) -> torch.Tensor:
    """feature_map [B,C,h,w]: each channel of each sample zeroed with probability p, the rest scaled by 1/(1-p)."""
    if p <= 0:
        return feature_map
    keep = torch.rand(feature_map.shape[0], feature_map.shape[1], 1, 1, device=feature_map.device) >= p
    return feature_map * keep.to(feature_map.dtype) / (1.0 - p)


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B,h*w,D] (row-major) -> [B,D,h,w]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def upsampling_head(in_channels: int, stride: int, min_channels: int = 16) -> nn.Sequential:
    """[B,C,h,w] -> [B,3,h*stride,w*stride] in [-1,1]: log2(stride) x (3x3 conv, ReLU, 2x bilinear upsample)
    with halving widths, then a 3x3 conv to RGB and tanh."""
    steps = int(math.log2(stride))
    if 2 ** steps != stride:
        raise ValueError(f"decoder stride must be a power of 2, got {stride}")
    layers, channels = [], in_channels
    for _ in range(steps):
        width = max(channels // 2, min_channels)
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True),
                   nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
        channels = width
    layers += [nn.Conv2d(channels, 3, 3, padding=1), nn.Tanh()]
    return nn.Sequential(*layers)


class ViTDecoder(nn.Module):
    """forward(patches [B,L,D], text_to_patch [B,L,D]) -> reconstruction [B,3,S,S] in [-1,1]."""

    def __init__(self, dim: int, grid: tuple[int, int], stride: int = 16, num_layers: int = 6, num_heads: int = 8,
                 feedforward: int = 2048, drop: float = 0.5):
        super().__init__()
        self.grid, self.drop = grid, drop
        self.position = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.fusion = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        # Each layer built (and initialised) on its own: the original repeated ONE layer num_layers times, and
        # deep-copying one layer would still start every copy from the same values.
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(dim, num_heads, feedforward, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = upsampling_head(dim, stride)

    def forward(self, patches, text_to_patch):
        kept = drop_tokens(patches, self.drop) + self.position                        # [B,L,D]
        fused = kept + self.fusion(kept, text_to_patch + self.position, text_to_patch, need_weights=False)[0]
        decoded = fused
        for layer in self.layers:                                                     # batch-first: [B,L,D]
            decoded = layer(decoded, fused)
        return self.head(tokens_to_map(self.norm(decoded), self.grid))


class ResNetDecoder(nn.Module):
    """forward(patches [B,L,D], text_to_patch [B,L,D]) -> reconstruction [B,3,S,S] in [-1,1]."""

    def __init__(self, dim: int, grid: tuple[int, int], stride: int = 32, drop: float = 0.5):
        super().__init__()
        self.grid, self.drop = grid, drop
        self.head = upsampling_head(2 * dim, stride)

    def forward(self, patches, text_to_patch):
        image_map = drop_channels(tokens_to_map(patches, self.grid), self.drop)       # [B,D,h,w]
        fused = torch.cat([image_map, tokens_to_map(text_to_patch, self.grid)], dim=1)   # [B,2D,h,w]
        return self.head(fused)


def build_decoder(encoder_name: str, dim: int, grid: tuple[int, int], stride: int, *, num_layers: int = 6,
                  num_heads: int = 8, feedforward: int = 2048, drop: float = 0.5) -> nn.Module:
    if encoder_name.startswith("vit"):
        return ViTDecoder(dim, grid, stride, num_layers, num_heads, feedforward, drop)
    return ResNetDecoder(dim, grid, stride, drop)
