"""Figures of individual validation examples: attention maps per sentence, CM-MIR reconstructions, retrieval.

Inputs are plain arrays/tensors (already computed by cgns.viz.panels), so these draw without a model.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch

from cgns.viz.overlays import heatmap_overlay, image_to_uint8, masked_patches
from cgns.viz.plots import _figure, _save

MAX_SENTENCES = 6


def _show(axis, pixels: np.ndarray, title: str = "", fontsize: int = 7) -> None:
    axis.imshow(pixels, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=fontsize)


def draw_attention(examples: list[dict], path: Path) -> Path:
    """One row per example: the X-ray, then each sentence's text-to-patch attention over it.

    example: {"image": float [3, S, S] (normalised), "sentences": [str], "maps": [[h, w] tensor] per sentence,
              "boxes": [(x1, y1, x2, y2) or None] per sentence (the generator's region, model-input pixels)}
    """
    cols = 1 + min(MAX_SENTENCES, max(len(e["sentences"]) for e in examples))
    figure = _figure(len(examples), cols, width=2.3, height=2.75)
    for row, example in enumerate(examples):
        pixels = image_to_uint8(example["image"])
        _show(figure.add_subplot(len(examples), cols, row * cols + 1), pixels, f"image {example.get('index', row)}")
        boxes = example.get("boxes") or [None] * len(example["sentences"])
        for i, (sentence, attention, box) in enumerate(zip(example["sentences"], example["maps"], boxes)):
            if i + 1 >= cols:
                break
            # colours are rescaled per map, so state the raw range: a flat map must not look confident
            title = "\n".join(textwrap.wrap(sentence, 30)[:3]
                              + [f"weights {float(attention.min()):.2f}-{float(attention.max()):.2f}"])
            overlay = heatmap_overlay(pixels, attention, box=box)
            _show(figure.add_subplot(len(examples), cols, row * cols + i + 2), overlay, title)
    return _save(figure, path)


def draw_reconstructions(examples: list[dict], path: Path) -> Path:
    """One row per example: input, the tokens kept (dropped ones greyed), reconstruction, |error|.

    example: {"image": float [3, S, S], "kept": bool [h, w] (True = token kept) or None,
              "reconstruction": float [3, S, S] in the same normalisation as the image}
    """
    figure = _figure(len(examples), 4, width=2.4, height=2.5)
    for row, example in enumerate(examples):
        pixels = image_to_uint8(example["image"])
        reconstruction = image_to_uint8(example["reconstruction"])
        _show(figure.add_subplot(len(examples), 4, row * 4 + 1), pixels, "input", 9)
        kept = example.get("kept")
        if kept is not None:
            title = f"masked tokens ({int((~kept.bool()).sum())}/{kept.numel()} dropped)"
            _show(figure.add_subplot(len(examples), 4, row * 4 + 2), masked_patches(pixels, kept.bool()), title, 9)
        _show(figure.add_subplot(len(examples), 4, row * 4 + 3), reconstruction, "reconstruction", 9)
        error = (example["reconstruction"].float() - example["image"].float()).abs().mean(0)  # [S, S]
        axis = figure.add_subplot(len(examples), 4, row * 4 + 4)
        axis.imshow(error.cpu().numpy(), cmap="magma", vmin=0, vmax=1)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"|error| (mean {float(error.mean()):.3f})", fontsize=9)
    return _save(figure, path)


def save_thumbnail(image: torch.Tensor, path: Path, size: int = 160) -> Path:
    """The X-ray as a small PNG (for the retrieval table)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_to_uint8(image)).resize((size, size), Image.BILINEAR).save(path)
    return path
