"""Segmentation with a U-Net decoder on a (frozen by default) image encoder: SIIM pneumothorax, RSNA boxes-as-masks.

    python train_seg.py --dataset siim --data-pct 0.01 0.1 1 --checkpoint runs/demo/checkpoints/final.pt
    python train_seg.py --dataset rsna --random-init --image-encoder resnet50 --finetune
    python train_seg.py --dataset siim --checkpoint runs/demo/checkpoints/final.pt --whiten-shrinkage off 0 0.1

Prints the paper-style row (1% / 10% / 100% Dice) and writes <output-dir>/metrics.json
{"<pct>": {"val": {...}, "test": {...}, "train": {...}}, "val": ..., "test": ... (largest fraction)} and
<output-dir>/overlays/*.png (image | ground truth | prediction).
"""
from __future__ import annotations

import argparse


from cgns.cli import (add_common_args, add_encoder_source_args, add_whitening_args, check_encoder_source,
                      downstream_kwargs, print_final)
from cgns.engine.segment import DATASETS, paper_row, run_segmentation


def _prior(text: str):
    """--foreground-prior: 'auto' or a probability in (0, 1)."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a probability in (0, 1), got '{text}'") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1), got {value}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("U-Net segmentation on an image encoder", add_help=True)
    add_common_args(parser, epochs=20, batch_size=16)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    add_encoder_source_args(parser)
    parser.add_argument("--finetune", action="store_true", help="train the encoder too (default: frozen)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-6)
    parser.add_argument("--patience", type=int, default=5, help="early stopping: epochs without val Dice gain")
    parser.add_argument("--decoder-width", default="base", choices=("base", "small"))
    parser.add_argument("--foreground-prior", type=_prior, default=0.01,
                        help="initial foreground probability of the decoder's output (RetinaNet-style bias; "
                             "0.5 = the former zero bias), or 'auto': the training masks' foreground share, "
                             "clamped to [0.01, 0.5] (for large structures such as lungs)")
    add_whitening_args(parser)
    parser.add_argument("--overlays", type=int, default=4, help="test overlays to write per fraction (0: none)")
    return parser


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = check_encoder_source(args)
    output_dir = args.output_dir or f"runs/seg_{args.dataset}"
    results = run_segmentation(
        args.dataset, **downstream_kwargs(args), finetune=args.finetune, lr=args.lr, weight_decay=args.weight_decay,
        patience=args.patience, decoder_width=args.decoder_width, foreground_prior=args.foreground_prior,
        whiten_shrinkage=args.whiten_shrinkage, device=device, output_dir=output_dir, overlays=args.overlays)
    print(paper_row(args.dataset, results, "val"))
    print(paper_row(args.dataset, results, "test"))
    largest = results[max(results, key=float)]
    print_final({"val": {"dice": largest["val"]["dice"]}, "test": {"dice": largest["test"]["dice"]}})
    return results


if __name__ == "__main__":
    main()
