"""Linear classification with a frozen image encoder (CheXpert, RSNA, COVIDx), one or several data fractions.

    python train_linear.py --dataset chexpert --data-pct 0.01 0.1 1 --checkpoint runs/demo/checkpoints/final.pt
    python train_linear.py --dataset covidx --random-init --image-encoder resnet50

Prints the paper-style row (1% / 10% / 100%) and writes <output-dir>/metrics.json:
{"<pct>": {"val": {...}, "test": {...}, "train": {...}}, "val": ..., "test": ... (largest fraction)}.
"""
from __future__ import annotations

import argparse


from cgns.cli import add_common_args, add_encoder_source_args, check_encoder_source, downstream_kwargs, print_final
from cgns.engine.linear import SELECT_BY, TASKS, paper_row, run_linear_eval


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Linear probe on a frozen image encoder", add_help=True)
    add_common_args(parser, epochs=50, batch_size=64)
    parser.add_argument("--dataset", required=True, choices=sorted(TASKS))
    add_encoder_source_args(parser)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=1e-6)
    parser.add_argument("--patience", type=int, default=10, help="early stopping: epochs without val improvement")
    parser.add_argument("--select-by", choices=SELECT_BY, default="loss",
                        help="best epoch by validation loss (MGCA's monitor; stable on small validation sets) or by "
                             "the validation AUROC / accuracy")
    parser.add_argument("--feature-cache", default=None,
                        help="folder for cached features (default <output-dir>/feature_cache)")
    parser.add_argument("--no-cache", action="store_true",
                        help="re-encode the images every epoch instead of caching features (slow; for comparison)")
    parser.add_argument("--augmented-views", type=int, default=0,
                        help="cache this many augmented passes of the training split (one per epoch) instead "
                             "of one clean pass")
    return parser


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = check_encoder_source(args)
    output_dir = args.output_dir or f"runs/linear_{args.dataset}"
    results = run_linear_eval(
        args.dataset, **downstream_kwargs(args), lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
        select_by=args.select_by, device=device, output_dir=output_dir, feature_cache=args.feature_cache,
        cache_features=not args.no_cache, augmented_views=args.augmented_views)
    print(paper_row(args.dataset, results, "val"))
    print(paper_row(args.dataset, results, "test"))
    largest = results[max(results, key=float)]
    print_final({"val": {k: largest["val"][k] for k in ("auroc", "accuracy") if k in largest["val"]},
                 "test": {k: largest["test"][k] for k in ("auroc", "accuracy") if k in largest["test"]}})
    return results


if __name__ == "__main__":
    main()
