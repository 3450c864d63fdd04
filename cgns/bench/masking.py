"""Input masking (--mask-ratio): the image tower's forward + backward at R = 0, 0.5, 0.75 for ViT-Tiny and ViT-Base
at 224 px, as speed-ups over R = 0 measured in the same run, and the whole paper-configuration training step
(ViT-B/16 + BERT-base, stage 2) at R = 0 and 0.5.

Ratios > 1: the masked tower (or step) is that many times faster than the unmasked one.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from cgns.models.vit import kept_patch_count, random_patch_split, vit_base, vit_tiny

RATIOS = (0.5, 0.75)


def tower_seconds(vit, images, mask_ratio: float, repeats: int) -> float:
    """Best-of-`repeats` seconds of one forward + backward of the ViT on images with this mask ratio."""
    num_patches = vit.grid * vit.grid
    best = float("inf")
    for attempt in range(repeats + 1):  # the first call warms up, untimed
        keep = (None if mask_ratio == 0 else
                random_patch_split(images.shape[0], num_patches, kept_patch_count(num_patches, mask_ratio))[0])
        start = time.perf_counter()
        vit(images, keep).float().square().mean().backward()
        elapsed = time.perf_counter() - start
        if attempt > 0:
            best = min(best, elapsed)
        vit.zero_grad(set_to_none=True)
    return best


def tower_rows(quick: bool) -> list[dict]:
    rows = []
    for name, build, batch, repeats in (("vit_tiny", vit_tiny, 16, 2 if quick else 5),
                                        ("vit_base", vit_base, 4, 1 if quick else 2)):
        torch.manual_seed(0)
        vit = build(224)
        images = torch.randn(batch, 3, 224, 224)
        full = tower_seconds(vit, images, 0.0, repeats)
        for ratio in RATIOS:
            masked = tower_seconds(vit, images, ratio, repeats)
            rows.append({"section": "masking", "name": f"{name}@224 forward+backward, R={ratio}",
                         "ours": masked * 1e3, "baseline": full * 1e3, "unit": "ms", "ratio": full / masked,
                         "note": f"batch {batch}, best of {repeats}; baseline R=0 (196 patches)"})
    return rows


def step_rows(quick: bool) -> list[dict]:
    from cgns.bench.pretrain import measure
    from cgns.engine.pretrain_config import PAPER

    cuda = torch.cuda.is_available()
    device, batch = ("cuda", 64) if cuda else ("cpu", 2)
    steps = 5 if cuda else 1
    timed = {}
    for ratio in (0.0, 0.5):
        config = dataclasses.replace(PAPER.model, mask_ratio=ratio)
        timed[ratio] = measure(config, batch, steps=steps, warmup=1, device=device,
                               amp="bf16" if cuda else "none")["samples_per_s"]
    return [{"section": "masking", "name": "paper step (ViT-B/16 + BERT-base, stage 2), R=0.5",
             "ours": timed[0.5], "baseline": timed[0.0], "unit": "samples/s", "ratio": timed[0.5] / timed[0.0],
             "note": f"batch {batch} on {device}, {steps} step(s) after 1 warm-up; baseline R=0"}]


def run(quick: bool = False) -> list[dict]:
    return tower_rows(quick) + step_rows(quick)
