"""U-Net decoder over an image encoder's feature pyramid (ResNet-50 and ViT), and the segmentation model.

The decoder reads `encoder.feature_pyramid(images)`: a list of maps, fine to coarse, with `pyramid_strides`.
  ResNet-50: stem (/2), layer1 (/4), layer2 (/8), layer3 (/16), layer4 (/32) — the classic U-Net skips.
  ViT:       every map sits at /16 (patch tokens reshaped to a grid, from evenly spaced blocks). As in UNETR, the
             deepest map starts the decoder and each shallower one is brought to the next finer scale (/8, /4, /2)
             by transposed convolutions, so the decoder upsamples progressively with a skip at every scale.
One rule covers both: walking from the deepest map to the finest, skip i is used at stride
min(its own stride, half the stride of the level below it), and upsampled by transposed convs to get there.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + BatchNorm + ReLU. [B, C_in, H, W] -> [B, C_out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True))


class SkipProjection(nn.Sequential):
    """Upsample a skip map by 2**steps with transposed convs (UNETR); identity when steps == 0.
    [B, C_in, H, W] -> [B, C_out, H * 2**steps, W * 2**steps]."""

    def __init__(self, in_channels: int, out_channels: int, steps: int):
        layers, channels = [], in_channels
        for _ in range(steps):
            layers += [nn.ConvTranspose2d(channels, out_channels, 2, stride=2, bias=False),
                       nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            channels = out_channels
        super().__init__(*layers)
        self.out_channels = channels


class UpBlock(nn.Module):
    """Upsample to the skip's size, concatenate it, fuse. x [B, C_x, h, w], skip [B, C_s, H, W] -> [B, C_out, H, W]."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.fuse = ConvBlock(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size=None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else size
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.fuse(x)


def plan_skip_strides(strides: Sequence[int]) -> list[int]:
    """Decoder stride of each pyramid map (fine to coarse); maps that would need a stride below 1 get 0 (unused).
    ResNet (2, 4, 8, 16, 32) -> same; ViT (16, 16, 16, 16) -> (2, 4, 8, 16)."""
    targets = [0] * len(strides)
    targets[-1] = strides[-1]
    for i in range(len(strides) - 2, -1, -1):
        target = min(strides[i], targets[i + 1] // 2)
        targets[i] = target if target >= 1 else 0
    return targets


class UNet(nn.Module):
    """U-Net decoder. forward(pyramid: list of [B, C_i, H/s_i, W/s_i], image_size) -> logits [B, classes, H, W]."""

    def __init__(self, pyramid_channels: Sequence[int], pyramid_strides: Sequence[int],
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), num_classes: int = 1,
                 prior: float | None = 0.01):
        super().__init__()
        if len(pyramid_channels) != len(pyramid_strides) or not pyramid_channels:
            raise ValueError(f"UNet: {len(pyramid_channels)} pyramid channels vs {len(pyramid_strides)} strides")
        targets = plan_skip_strides(pyramid_strides)
        self.used = [i for i, t in enumerate(targets) if t > 0]  # pyramid indices used, fine to coarse
        deepest = self.used[-1]
        skips = self.used[:-1][::-1]  # coarse to fine
        finest = targets[skips[-1]] if skips else targets[deepest]  # stride left after the last skip
        levels = len(skips) + int(math.log2(finest))
        widths = list(decoder_channels) + [decoder_channels[-1]] * max(0, levels - len(decoder_channels))
        self.projections = nn.ModuleDict()
        self.up_blocks = nn.ModuleList()
        channels = pyramid_channels[deepest]
        for level, i in enumerate(skips):
            steps = int(math.log2(pyramid_strides[i] // targets[i]))
            projection = SkipProjection(pyramid_channels[i], widths[level], steps)
            self.projections[str(i)] = projection
            self.up_blocks.append(UpBlock(channels, projection.out_channels, widths[level]))
            channels = widths[level]
        # from the finest skip's stride down to full resolution, plain x2 upsampling blocks
        self.final_blocks = nn.ModuleList()
        for level in range(len(skips), levels):
            self.final_blocks.append(UpBlock(channels, 0, widths[level]))
            channels = widths[level]
        self.head = nn.Conv2d(channels, num_classes, 1)
        if prior is not None:
            if not 0 < prior < 1:
                raise ValueError(f"UNet: the foreground prior must lie in (0, 1), got {prior}")
            # Start from "1% of pixels positive" (the focal-loss prior of RetinaNet, as the YOLOv3 objectness):
            # with a zero bias every pixel starts at p = 0.5, the focal term barely pushes easy background down,
            # and the decoder keeps false-positive pixels on every empty image (per-image Dice 0 there).
            nn.init.constant_(self.head.bias, -math.log((1 - prior) / prior))
        self.skips, self.deepest = skips, deepest

    def forward(self, pyramid: Sequence[torch.Tensor], image_size) -> torch.Tensor:
        x = pyramid[self.deepest]
        for block, i in zip(self.up_blocks, self.skips):
            x = block(x, self.projections[str(i)](pyramid[i]))
        for block in self.final_blocks:
            x = block(x, None, size=(x.shape[-2] * 2, x.shape[-1] * 2))
        logits = self.head(x)
        if tuple(logits.shape[-2:]) != tuple(image_size):
            logits = F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=False)
        return logits


class SegmentationModel(nn.Module):
    """Encoder (frozen by default) + U-Net decoder. images [B, 3, S, S] -> mask logits [B, 1, S, S].
    whitening: an optional fixed MapWhitening of the encoder's pyramid (frozen encoder only)."""

    def __init__(self, encoder: nn.Module, decoder: UNet, finetune: bool = False, whitening: nn.Module | None = None):
        super().__init__()
        if whitening is not None and finetune:
            raise ValueError("SegmentationModel: feature whitening is fitted on frozen features; "
                             "it cannot be combined with fine-tuning")
        self.encoder, self.decoder, self.finetune, self.whitening = encoder, decoder, finetune, whitening
        for param in encoder.parameters():
            param.requires_grad_(finetune)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.finetune:
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            pyramid = self.encoder.feature_pyramid(images)
        if self.whitening is not None:
            pyramid = self.whitening(pyramid)
        return self.decoder(pyramid, images.shape[-2:])


def build_unet(encoder: nn.Module, num_classes: int = 1, width: str = "base", prior: float | None = 0.01) -> UNet:
    """Decoder sized for `encoder` (its pyramid_channels / pyramid_strides). width: 'base' or 'small'.
    prior: initial foreground probability of every pixel (None: a zero bias, p = 0.5)."""
    channels = {"base": (256, 128, 64, 32, 16), "small": (128, 64, 32, 16, 16)}[width]
    return UNet(encoder.pyramid_channels, encoder.pyramid_strides, channels, num_classes, prior=prior)
