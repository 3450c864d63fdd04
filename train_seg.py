"""Segmentation with a U-Net decoder on a (frozen by default) image encoder: SIIM pneumothorax, RSNA boxes-as-masks.

    python train_seg.py --dataset siim --data-pct 0.01 0.1 1 --checkpoint runs/demo/checkpoints/final.pt
    python train_seg.py --dataset rsna --random-init --image-encoder resnet50 --finetune

Prints the paper-style row (1% / 10% / 100% Dice) and writes <output-dir>/metrics.json
{"<pct>": {"val": {...}, "test": {...}, "train": {...}}, "val": ..., "test": ... (largest fraction)} and
<output-dir>/overlays/*.png (image | ground truth | prediction).
"""
from __future__ import annotations

import argparse

import torch

from cgns.cli import add_common_args, print_final
from cgns.engine.segment import DATASETS, paper_row, run_segmentation


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("U-Net segmentation on an image encoder", add_help=True)
    add_common_args(parser, epochs=20, batch_size=16)
    # None = "take it from the checkpoint" (or 224 without one); a differing explicit value is refused
    parser.set_defaults(image_size=None)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--image-encoder", default=None,
                        help="vit_tiny / vit_small / vit_base / resnet50 (default: the checkpoint's, else resnet50)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image-weights", default=None, help="ImageNet-format (timm/torchvision) state dict file")
    source.add_argument("--random-init", action="store_true", help="randomly initialised encoder (baseline)")
    parser.add_argument("--finetune", action="store_true", help="train the encoder too (default: frozen)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-6)
    parser.add_argument("--patience", type=int, default=5, help="early stopping: epochs without val Dice gain")
    parser.add_argument("--decoder-width", default="base", choices=("base", "small"))
    parser.add_argument("--overlays", type=int, default=4, help="test overlays to write per fraction (0: none)")
    return parser


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.checkpoint is not None and (args.image_weights or args.random_init):
        raise SystemExit("--checkpoint cannot be combined with --image-weights or --random-init")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    output_dir = args.output_dir or f"runs/seg_{args.dataset}"
    results = run_segmentation(
        args.dataset, data_root=args.data_root, encoder_name=args.image_encoder, image_size=args.image_size,
        checkpoint=args.checkpoint, image_weights=args.image_weights, random_init=args.random_init,
        finetune=args.finetune, data_pcts=args.data_pct, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
        decoder_width=args.decoder_width, device=device, output_dir=output_dir, overlays=args.overlays,
        num_workers=args.num_workers)
    print(paper_row(args.dataset, results, "val"))
    print(paper_row(args.dataset, results, "test"))
    largest = results[max(results, key=float)]
    print_final({"val": {"dice": largest["val"]["dice"]}, "test": {"dice": largest["test"]["dice"]}})
    return results


if __name__ == "__main__":
    main()
