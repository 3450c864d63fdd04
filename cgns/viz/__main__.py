"""python -m cgns.viz RUN_DIR: write RUN_DIR/report/report.html and its PNGs."""
from __future__ import annotations

import argparse
import json


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("cgns.viz", description="visual report of a pretraining run")
    parser.add_argument("run_dir", help="output directory of train_pretrain.py (log.jsonl, checkpoints/)")
    parser.add_argument("--out-dir", default=None, help="where report.html goes (default RUN_DIR/report)")
    parser.add_argument("--num-images", type=int, default=4, help="validation images per model panel")
    parser.add_argument("--data-root", default=None,
                        help="MIMIC-CXR folder for the model panels (default: the run's own data root)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-model", action="store_true",
                        help="only the curves from log.jsonl (no checkpoint, no data needed)")
    parser.add_argument("--localisation-only", action="store_true",
                        help="print the attention localisation figure as JSON and write no report")
    parser.add_argument("--attention", choices=["cross", "grounding"], default=None,
                        help="with --localisation-only: which attention to measure, the cross-attention of losses "
                             "2-4 or the grounding term's (default: the grounding term's when the run trained it)")
    parser.add_argument("--checkpoint", default=None,
                        help="with --localisation-only: the checkpoint to measure (default: final.pt, else latest.pt)")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.localisation_only:
        from cgns.viz.localisation import attention_localisation

        result = attention_localisation(args.run_dir, data_root=args.data_root, device=args.device,
                                        checkpoint=args.checkpoint, attention_kind=args.attention)
        print(json.dumps(result, indent=2))
        return result
    from cgns.viz.report import write_report

    return write_report(args.run_dir, out_dir=args.out_dir, num_images=args.num_images, device=args.device,
                        data_root=args.data_root, with_model=not args.no_model)


if __name__ == "__main__":
    main()
