"""CM-MIR decoders: reconstruct the image from partly dropped local image features fused with the text-to-image
features of the cross-modal attention.

ViT: drop whole patch tokens (rescaled by 1/(1-p)), fuse by cross-attention, refine with a transformer decoder of
independent layers (batch-first attention), then a conv/upsample head. ResNet: drop whole channels (same rescale),
concatenate with the text-to-image map, then the head. The head ends in tanh, matching the [-1,1] target (the
original ended in ReLU then tanh, so its output lay in [0,1)).

Dropping is the pretext task, not a regulariser, so it also happens in eval mode.

MaskedPatchDecoder is the `--mir-masking input` variant (ViT with --mask-ratio > 0): MAE's decoder, a mask token at
each patch the encoder never saw, positions added again, attending to the report's sentences; it predicts each
patch's pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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


def place_on_grid(tokens: torch.Tensor, keep_index: torch.Tensor, num_patches: int,
                  fill: torch.Tensor | None = None) -> torch.Tensor:
    """tokens [B,M,D] of the patches keep_index long[B,M] -> [B,L,D] on the full grid, `fill` [D] (default 0) at
    the other patches. Differentiable in tokens and fill."""
    batch, _, dim = tokens.shape
    base = (tokens.new_zeros(batch, num_patches, dim) if fill is None
            else fill.to(tokens.dtype).expand(batch, num_patches, dim))
    return base.scatter(1, keep_index[:, :, None].expand(-1, -1, dim), tokens)


def patches_to_image(pixels: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """pixels [B,h*w,C*p*p] (rows laid out (C,p,p), row-major over the grid, as F.unfold makes them) ->
    images [B,C,h*p,w*p]: the inverse of F.unfold(images, p, stride=p).transpose(1, 2)."""
    size = (grid[0] * patch_size, grid[1] * patch_size)
    return F.fold(pixels.transpose(1, 2), size, kernel_size=patch_size, stride=patch_size)


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


class MaskedPatchDecoder(nn.Module):
    """forward(kept [B,M,D], keep_index long[B,M], sentences [B,S,D], sentence_mask bool[B,S]) -> predicted image
    [B,3,S,S] (every patch predicted; the loss reads the masked ones).

    The kept patch tokens go back to their grid positions, a learned mask token fills the others, positions are
    added again (MAE), and independent pre-norm decoder layers attend over the grid and to the real sentences of
    the report. A linear head gives each patch's 3*p*p pixels.
    """

    def __init__(self, dim: int, grid: tuple[int, int], patch_size: int = 16, num_layers: int = 6,
                 num_heads: int = 8, feedforward: int = 2048):
        super().__init__()
        self.grid, self.patch_size = grid, patch_size
        self.num_patches = grid[0] * grid[1]
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.position = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(dim, num_heads, feedforward, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.pixels = nn.Linear(dim, 3 * patch_size * patch_size)

    def forward(self, kept, keep_index, sentences, sentence_mask):
        tokens = place_on_grid(kept, keep_index, self.num_patches, self.mask_token) + self.position   # [B,L,D]
        padding = ~sentence_mask                                                                    # [B,S]
        for layer in self.layers:
            tokens = layer(tokens, sentences, memory_key_padding_mask=padding)
        pixels = self.pixels(self.norm(tokens))                                                     # [B,L,3p^2]
        return patches_to_image(pixels, self.grid, self.patch_size)


def build_decoder(encoder_name: str, dim: int, grid: tuple[int, int], stride: int, *, num_layers: int = 6,
                  num_heads: int = 8, feedforward: int = 2048, drop: float = 0.5) -> nn.Module:
    if encoder_name.startswith("vit"):
        return ViTDecoder(dim, grid, stride, num_layers, num_heads, feedforward, drop)
    return ResNetDecoder(dim, grid, stride, drop)
