"""Detection with a YOLOv3 head on a frozen (or fine-tuned) image encoder: RSNA pneumonia boxes or Object-CXR.

    python train_detect.py --dataset rsna --data-pct 0.01 0.1 1 --checkpoint runs/pretrain_demo/checkpoints/final.pt
    python train_detect.py --dataset object_cxr --random-init --image-encoder resnet50 --image-size 224
    python train_detect.py --dataset rsna --random-init --image-encoder vit_tiny --image-size 64 \
        --whiten-shrinkage off 0 0.1

Presets (`--config demo|paper|FILE`) and flags: cgns.engine.detect (DetectionConfig, PRESETS). Prints the paper-style
rows (mAP over IoU 0.4:0.05:0.75 on all test images, and the original's skip-empty variant) and writes
<output-dir>/config.json and metrics.json: {"<pct>": {"val": {...}, "test": {...}, "train": {...}}, "val": ...,
"test": ... (largest fraction)}.
"""
from __future__ import annotations

from cgns.engine.downstream import run_downstream
from cgns.engine.detect import DETECTION


def main(argv=None) -> dict:
    config = DETECTION.parse(argv)   # --config demo|paper|FILE, then the flags given; --dataset required
    return DETECTION.report(config, run_downstream(DETECTION, config))   # paper-style rows and the final: line


if __name__ == "__main__":
    main()
