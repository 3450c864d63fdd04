"""The flag vocabulary shared by every entry point, and the one way they report results."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from cgns.io import atomic_write_json


def add_common_args(parser: argparse.ArgumentParser, *, epochs: int = 10, batch_size: int = 64,
                    image_size: int = 224) -> argparse.ArgumentParser:
    """Add --data-root, --output-dir, --seed, --epochs, --batch-size, --data-pct, --checkpoint, ... ."""
    parser.add_argument("--data-root", type=str, default=None,
                        help="data set in its official layout; omitted -> the generated demo copy under data/demo/")
    parser.add_argument("--output-dir", type=str, default=None, help="where metrics.json, logs and checkpoints go")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size, help="per process")
    parser.add_argument("--data-pct", type=float, nargs="+", default=[1.0],
                        help="fraction(s) of the TRAINING split to use, e.g. 0.01 0.1 1")
    parser.add_argument("--checkpoint", type=str, default=None, help="a checkpoint this project wrote")
    parser.add_argument("--image-size", type=int, default=image_size, help="crop size fed to the encoder (px)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", type=str, default=None, help="cpu / cuda (default: cuda when available)")
    return parser


def write_metrics(output_dir: str | os.PathLike, metrics: dict) -> Path:
    """Write <output_dir>/metrics.json atomically."""
    return atomic_write_json(Path(output_dir) / "metrics.json", metrics)


def _flatten(metrics: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def print_final(metrics: dict, label: str = "final") -> str:
    """Print the final metrics as one line `final: a=0.8123 b/c=12` and return it."""
    parts = []
    for key, value in _flatten(metrics).items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4f}")
        elif isinstance(value, (int, str)) or value is None:
            parts.append(f"{key}={value}")
    line = f"{label}: " + " ".join(parts)
    print(line, flush=True)
    return line


def add_encoder_source_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The downstream scripts' encoder flags: --image-encoder and one of --checkpoint / --image-weights /
    --random-init. --image-size defaults to None: taken from the checkpoint (224 without one); a differing explicit
    value is refused by the loader unless --resize-checkpoint is given."""
    parser.set_defaults(image_size=None)
    parser.add_argument("--image-encoder", default=None,
                        help="vit_tiny / vit_small / vit_base / resnet50 (default: the checkpoint's, else resnet50)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image-weights", default=None, help="ImageNet-format (timm/torchvision) state dict file")
    source.add_argument("--random-init", action="store_true", help="randomly initialised encoder (baseline)")
    parser.add_argument("--resize-checkpoint", action="store_true",
                        help="with --checkpoint and an --image-size other than the one it was trained at: build the "
                             "encoder at --image-size and resample its position tables (refused without this flag)")
    return parser


def add_whitening_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--whiten-shrinkage for the dense heads (detection, segmentation); see cgns.models.whitening."""
    from cgns.models.whitening import parse_shrinkage

    def shrinkage(value: str):
        try:
            return parse_shrinkage(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parser.add_argument("--whiten-shrinkage", type=shrinkage, nargs="+", default=[None], metavar="S",
                        help="fixed whitening of the frozen encoder's maps before the head, fitted on the training "
                             "split: 'off' (default, the protocol), 0 (full) or a shrinkage > 0 (partial). Several "
                             "values: one head each, the best on validation is tested (e.g. off 0 0.1)")
    return parser


def downstream_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments every downstream run_* (linear, detection, segmentation) takes from the shared flags."""
    return dict(data_root=args.data_root, encoder_name=args.image_encoder, image_size=args.image_size,
                checkpoint=args.checkpoint, image_weights=args.image_weights, random_init=args.random_init,
                data_pcts=args.data_pct, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
                num_workers=args.num_workers, resize_checkpoint=args.resize_checkpoint)


def check_encoder_source(args: argparse.Namespace) -> str:
    """Refuse a checkpoint combined with another encoder source; return the device to run on."""
    if args.checkpoint is not None and (args.image_weights or args.random_init):
        raise SystemExit("--checkpoint cannot be combined with --image-weights or --random-init")
    if args.device:
        return args.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
