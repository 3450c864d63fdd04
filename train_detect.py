"""Detection with a YOLOv3 head on a frozen (or fine-tuned) image encoder: RSNA pneumonia boxes or Object-CXR.

    python train_detect.py --dataset rsna --data-pct 0.01 0.1 1 --checkpoint runs/demo/checkpoints/final.pt
    python train_detect.py --dataset object_cxr --random-init --image-encoder resnet50 --image-size 224
    python train_detect.py --dataset rsna --random-init --image-encoder vit_tiny --image-size 64 --whiten-shrinkage off 0 0.1

Prints the paper-style rows (mAP over IoU 0.4:0.05:0.75 on all test images, and the original's skip-empty variant)
and writes <output-dir>/metrics.json: {"<pct>": {"val": {...}, "test": {...}, "train": {...}}, "val": ...,
"test": ... (largest fraction)}.
"""
from __future__ import annotations

import argparse


from cgns.cli import (add_common_args, add_encoder_source_args, add_whitening_args, check_encoder_source,
                      downstream_kwargs, print_final)
from cgns.engine.detect import DATASETS, paper_row, run_detection
from cgns.models.yolov3 import VIT_BLOCKS


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("YOLOv3 detection on an image encoder", add_help=True)
    add_common_args(parser, epochs=50, batch_size=16)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    add_encoder_source_args(parser)
    parser.add_argument("--finetune", action="store_true", help="train the encoder too (default: frozen)")
    parser.add_argument("--encoder-lr-scale", type=float, default=1.0,
                        help="with --finetune: the encoder's learning rate as a multiple of the head's (e.g. 0.1)")
    parser.add_argument("--vit-blocks", choices=list(VIT_BLOCKS), default="last",
                        help="a ViT's maps the feature pyramid is built from: its last block (ViTDet), or its four "
                             "evenly spaced blocks concatenated")
    parser.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-6)
    parser.add_argument("--head-width", type=int, default=256, help="channels of the coarsest YOLOv3 neck block")
    parser.add_argument("--conf-thresh", type=float, default=0.5, help="objectness kept before NMS (original: 0.5)")
    parser.add_argument("--nms-thresh", type=float, default=0.5, help="NMS IoU (original: 0.5)")
    parser.add_argument("--augment", action="store_true", help="training augmentation of the detection dataset")
    add_whitening_args(parser)
    parser.add_argument("--feature-cache-gb", type=float, default=2.0,
                        help="frozen encoder: keep its maps in memory (encode each image once) up to this size; "
                             "0 re-encodes every epoch")
    return parser


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = check_encoder_source(args)
    output_dir = args.output_dir or f"runs/detect_{args.dataset}"
    results = run_detection(
        args.dataset, **downstream_kwargs(args), finetune=args.finetune, encoder_lr_scale=args.encoder_lr_scale,
        vit_blocks=args.vit_blocks, lr=args.learning_rate, weight_decay=args.weight_decay, head_width=args.head_width,
        conf_thresh=args.conf_thresh, nms_thresh=args.nms_thresh, augment=args.augment, feature_cache_gb=args.feature_cache_gb,
        whiten_shrinkage=args.whiten_shrinkage, device=device,
        output_dir=output_dir)
    for split in ("val", "test"):
        print(paper_row(args.dataset, results, split))
    print(paper_row(args.dataset, results, "test", "skip_empty/mAP") + "   (original's variant: skips empty images)")
    largest = results[max(results, key=float)]
    keys = ("mAP", "AP50", "skip_empty/mAP")
    print_final({split: {k: largest[split][k] for k in keys} for split in ("val", "test")})
    return results


if __name__ == "__main__":
    main()
