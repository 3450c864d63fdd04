"""Segmentation with a U-Net decoder on a (frozen by default) image encoder: SIIM pneumothorax, RSNA boxes-as-masks.

    python train_seg.py --dataset siim --data-pct 0.01 0.1 1 --checkpoint runs/pretrain_demo/checkpoints/final.pt
    python train_seg.py --config paper --dataset rsna --random-init --image-encoder resnet50 --finetune --data-root DIR
    python train_seg.py --dataset siim --checkpoint runs/pretrain_demo/checkpoints/final.pt --whiten-shrinkage off

Presets (`--config demo|paper|FILE`) and flags: cgns.engine.segment (SegmentationConfig, PRESETS). Prints the
paper-style row (1% / 10% / 100% Dice) and writes <output-dir>/config.json, metrics.json
{"<pct>": {"val": {...}, "test": {...}, "train": {...}}, "val": ..., "test": ... (largest fraction)} and
<output-dir>/overlays/*.png (image | ground truth | prediction).
"""
from __future__ import annotations

from cgns.engine.downstream import run_downstream
from cgns.engine.segment import SEGMENTATION


def main(argv=None) -> dict:
    config = SEGMENTATION.parse(argv)   # --config demo|paper|FILE, then the flags given; --dataset required
    return SEGMENTATION.report(config, run_downstream(SEGMENTATION, config))   # paper-style rows and the final: line


if __name__ == "__main__":
    main()
