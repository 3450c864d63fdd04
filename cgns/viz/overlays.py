"""Pixel-level pictures with pillow: X-rays back to uint8, attention heat maps over them, masked patches, boxes."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """image: float [C, H, W] normalised with mean 0.5, std 0.5 (values ~[-1, 1]) -> uint8 [H, W, 3]."""
    if image.dim() != 3:
        raise ValueError(f"expected an image [C, H, W], got shape {tuple(image.shape)}")
    pixels = ((image.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return pixels[:3].permute(1, 2, 0).contiguous().numpy()  # [H, W, 3]


def upsample_map(scores: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """scores [h, w] -> [H, W] bilinear, rescaled to [0, 1] (a flat map becomes all zeros)."""
    scores = scores.detach().float().cpu()[None, None]  # [1, 1, h, w]
    upsampled = torch.nn.functional.interpolate(scores, size=size, mode="bilinear", align_corners=False)[0, 0]
    low, high = upsampled.min(), upsampled.max()
    return ((upsampled - low) / (high - low).clamp_min(1e-12)).numpy()


def heatmap_overlay(image: np.ndarray, attention: torch.Tensor, alpha: float = 0.45, box=None,
                    mark_peak: bool = True) -> np.ndarray:
    """Blend a jet-coloured attention map over an X-ray.

    image: uint8 [H, W, 3]; attention: [h, w] over the patch grid; box: optional (x1, y1, x2, y2) pixels drawn in
    green (the generator's region); the peak patch is outlined in white. Returns uint8 [H, W, 3].
    """
    height, width = image.shape[:2]
    heat = upsample_map(attention, (height, width))
    coloured = colormaps["jet"](heat)[..., :3] * 255  # [H, W, 3]
    blended = (1 - alpha) * image.astype(np.float32) + alpha * coloured
    canvas = Image.fromarray(blended.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    if box is not None:
        draw.rectangle([float(v) for v in box], outline=(0, 255, 0), width=2)
    if mark_peak:
        grid_h, grid_w = attention.shape
        row, col = divmod(int(attention.detach().flatten().argmax()), grid_w)
        cell_h, cell_w = height / grid_h, width / grid_w
        draw.rectangle([col * cell_w, row * cell_h, (col + 1) * cell_w - 1, (row + 1) * cell_h - 1],
                       outline=(255, 255, 255), width=1)
    return np.asarray(canvas)


def masked_patches(image: np.ndarray, kept: torch.Tensor) -> np.ndarray:
    """Grey out the patches that were dropped. image: uint8 [H, W, 3]; kept: bool [h, w] (True = token kept)."""
    height, width = image.shape[:2]
    keep = kept.detach().float().cpu()[None, None]  # [1, 1, h, w]
    keep = torch.nn.functional.interpolate(keep, size=(height, width), mode="nearest")[0, 0].bool().numpy()
    out = image.copy()
    out[~keep] = (0.35 * out[~keep] + 0.65 * 128).astype(np.uint8)
    return out
