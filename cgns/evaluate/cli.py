"""The flags of `python -m cgns.evaluate {zeroshot,retrieval,grounding,all}` and the runner of each evaluation."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cgns.evaluate.prompts import DEFAULT_NUM_PROMPTS, PROMPT_FILE
from cgns.evaluate.table import DOWNSTREAM, TASKS, TEXT_TASKS, plan_cells, run_cells, summarise, write_table

DEFAULT_OUTPUT = "runs/evaluate"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="a pretraining checkpoint (.pt), run folder or exported folder (cgns.load_model)")
    parser.add_argument("--random-init", action="store_true",
                        help="the baseline: the --checkpoint's architecture, tokenizer and preprocessing with "
                             "randomly initialised weights (seeded by --seed)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random-init weights (zeroshot / retrieval / grounding; `all` seeds them "
                             "by each head seed of --seeds)")
    parser.add_argument("--output-dir", default=None, help=f"where metrics.json goes (default {DEFAULT_OUTPUT}_<cmd>)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32, help="images / texts per forward pass")


def _prompt_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-prompts", type=int, default=DEFAULT_NUM_PROMPTS,
                        help="prompts sampled per prompt set (fixed seed); their embeddings are averaged")
    parser.add_argument("--prompt-file", default=str(PROMPT_FILE), help="the prompt sets (JSON)")
    parser.add_argument("--prompt-words", choices=("known", "all"), default="known",
                        help="known: use only the prompts whose every word is a whole word of the model's tokenizer "
                             "(a word it would spell piece by piece never occurred in its pretraining vocabulary), "
                             "all of a set when none is; all: every prompt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m cgns.evaluate",
                                     description="Zero-shot classification, retrieval, phrase grounding, and the "
                                                 "whole evaluation table of a pretrained model.")
    commands = parser.add_subparsers(dest="command", required=True)
    zeroshot = commands.add_parser("zeroshot", help="zero-shot classification by prompts")
    _common(zeroshot)
    zeroshot.add_argument("--dataset", required=True, choices=("chexpert", "rsna", "covidx"))
    zeroshot.add_argument("--data-root", default=None, help="the data set's folder (default: the demo copy)")
    zeroshot.add_argument("--split-file", default=None,
                          help="CheXpert 5xN list: read when it exists (ours, PRIOR's or MedCLIP's), else drawn and "
                               "written there (default <output-dir>/chexpert_5x200.csv)")
    zeroshot.add_argument("--n-per-class", type=int, default=None,
                          help="images per class of the 5xN set (default 200, or the most the data has)")
    _prompt_flags(zeroshot)
    retrieval = commands.add_parser("retrieval", help="MIMIC-CXR 5xN precision@K and exact-pair R@K")
    _common(retrieval)
    retrieval.add_argument("--data-root", default=None, help="MIMIC-CXR-JPG folder (default: the demo copy)")
    retrieval.add_argument("--split-file", default=None,
                           help="the 5xN study list: read when it exists, else drawn and written there (default "
                                "<output-dir>/mimic_5x200.csv)")
    retrieval.add_argument("--n-per-class", type=int, default=None)
    grounding = commands.add_parser("grounding", help="MS-CXR phrase grounding: CNR and mIoU")
    _common(grounding)
    grounding.add_argument("--data-root", default=None, help="MIMIC-CXR-JPG folder (default: the demo copy)")
    grounding.add_argument("--csv", default=None, help="MS-CXR's local-alignment CSV (default: the one under "
                                                       "--data-root; a generated world's is written from its truth)")
    table = commands.add_parser("all", help="every evaluation, one table (resumable)")
    _common(table)
    table.add_argument("--image-weights", default=None, help="ImageNet-format image encoder weights (no text "
                                                             "tower: downstream tasks only)")
    table.add_argument("--image-encoder", default=None, help="with --random-init and no --checkpoint")
    table.add_argument("--image-size", type=int, default=None, help="with --random-init and no --checkpoint")
    table.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="head seeds")
    table.add_argument("--preset", choices=("demo", "paper"), default="demo",
                       help="the downstream presets (cgns.engine.linear / detect / segment)")
    table.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    table.add_argument("--data-dir", default=None,
                       help="a folder holding one sub-folder per data set (mimic_cxr, chexpert, rsna, covidx, siim, "
                            "object_cxr); default: the demo world")
    table.add_argument("--epochs", type=int, default=None, help="override the presets' head epochs")
    table.add_argument("--data-pct", type=float, nargs="+", default=None, metavar="P",
                       help="training fractions of the downstream tasks, e.g. 0.01 0.1 1 (default: the preset's; "
                            "the paper preset's are 1%% / 10%% / 100%%, the demo preset's 100%% only)")
    table.add_argument("--no-progress", action="store_true")
    _prompt_flags(table)
    return parser


def open_model(args, seed: int | None = None):
    """The model through cgns.load_model: the checkpoint, or its random-init twin."""
    from cgns import load_model

    if args.checkpoint is None:
        raise SystemExit("--checkpoint is required (with --random-init it gives the architecture and tokenizer)")
    return load_model(args.checkpoint, args.device, random_init=args.random_init,
                      seed=args.seed if seed is None else seed, batch_size=args.batch_size)


def data_root(dataset: str, explicit: str | None):
    from cgns.data.roots import resolve_data_root

    return resolve_data_root(dataset, explicit)


def prompt_options(args) -> dict:
    return {"n_prompts": args.num_prompts, "prompt_file": args.prompt_file, "prompt_words": args.prompt_words}


def run_zeroshot(model, dataset, root, output_dir, args, split_file=None) -> dict:
    from cgns.evaluate.zeroshot import evaluate_zeroshot

    return evaluate_zeroshot(model, dataset, Path(root), Path(output_dir), split_file=split_file,
                             n_per_class=getattr(args, "n_per_class", None), **prompt_options(args))


def run_retrieval(model, root, output_dir, args, split_file=None) -> dict:
    from cgns.evaluate.retrieval import evaluate_retrieval

    return evaluate_retrieval(model, Path(root), Path(output_dir), split_file=split_file,
                              n_per_class=getattr(args, "n_per_class", None))


def run_grounding(model, root, output_dir, csv_path=None) -> dict:
    from cgns.evaluate.grounding import evaluate_grounding

    if not getattr(model.model, "has_local_features", True):     # a ConVIRT run: its table cells read n/a
        reason = f"{model.model.method} has no local features to ground phrases with"
        print(f"phrase grounding: skipped ({reason})")
        return {"test": {"cnr": None, "miou": None, "n": 0}, "skipped": reason}
    return evaluate_grounding(model, Path(root), Path(output_dir), csv_path=csv_path,
                              cache_size=int(getattr(model, "cache_size", 256)))


def describe(args) -> dict:
    return {"checkpoint": args.checkpoint, "random_init": args.random_init, "seed": args.seed}


def single(args) -> dict:
    """zeroshot / retrieval / grounding: one evaluation -> metrics.json."""
    from cgns.io import atomic_write_json

    output_dir = Path(args.output_dir or f"{DEFAULT_OUTPUT}_{args.command}")
    output_dir.mkdir(parents=True, exist_ok=True)
    model = open_model(args)
    start = time.perf_counter()
    split_file = Path(args.split_file) if getattr(args, "split_file", None) else None
    if args.command == "zeroshot":
        metrics = run_zeroshot(model, args.dataset, data_root(args.dataset, args.data_root), output_dir, args,
                               split_file)
    elif args.command == "retrieval":
        metrics = run_retrieval(model, data_root("mimic_cxr", args.data_root), output_dir, args, split_file)
    else:
        metrics = run_grounding(model, data_root("mimic_cxr", args.data_root), output_dir,
                                Path(args.csv) if args.csv else None)
    metrics["model"] = describe(args)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(output_dir / "metrics.json", metrics)
    print(f"metrics: {output_dir / 'metrics.json'}")
    return metrics


def _downstream(cell, args, fractions_out: list):
    from cgns.engine import detect, linear, segment
    from cgns.engine.downstream import configure, run_downstream

    task = {"linear": linear.LINEAR, "detection": detect.DETECTION, "segmentation": segment.SEGMENTATION}[cell.task]
    preset = {"linear": linear.PRESETS, "detection": detect.PRESETS, "segmentation": segment.PRESETS}[cell.task]
    values = {"dataset": cell.dataset, "seeds": (cell.seed,), "output_dir": str(cell.directory),
              "device": args.device}
    if args.data_dir:
        values["data_root"] = str(Path(args.data_dir) / cell.dataset)
    if args.epochs:
        values["epochs"] = args.epochs
    if args.data_pct:
        values["data_pct"] = tuple(args.data_pct)
    if args.image_weights:
        values.update(image_weights=args.image_weights, image_encoder=args.image_encoder or "resnet50")
    elif args.random_init:
        encoder, size = (args.image_encoder, args.image_size)
        if args.checkpoint:
            from cgns.engine.features import checkpoint_encoder_config

            encoder, size = checkpoint_encoder_config(checkpoint_file(args.checkpoint))
        values.update(random_init=True, image_encoder=encoder, image_size=size)
    else:
        values["checkpoint"] = str(checkpoint_file(args.checkpoint))
    config = configure(preset[args.preset], **values)
    fractions_out[:] = [f"{p:g}" for p in config.run.data_pct]
    return run_downstream(task, config, log=lambda *a: None)


def check_fractions(cells, data_pct) -> None:
    """Refuse to keep a finished downstream cell that was trained on other fractions than --data-pct asks for (the
    table would mix them), naming the cell and both sets."""
    wanted = sorted(f"{p:g}" for p in data_pct)
    for cell in cells:
        if cell.task in DOWNSTREAM and cell.metrics_path.is_file():
            metrics = json.loads(cell.metrics_path.read_text())
            have = sorted(k for k in metrics if k.replace(".", "", 1).isdigit())
            if have != wanted:
                raise SystemExit(f"{cell.metrics_path}: finished with fractions {', '.join(have)}, but --data-pct "
                                 f"asks for {', '.join(wanted)}; use another --output-dir or remove that cell")


def checkpoint_file(path) -> Path:
    """A run folder -> its checkpoints/final.pt (else latest.pt); a file as given."""
    path = Path(path)
    if path.is_dir():
        for name in ("final.pt", "latest.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise FileNotFoundError(f"{path}: no checkpoints/final.pt or latest.pt (the downstream tasks need a "
                                f"pretraining checkpoint file)")
    return path


def whole_table(args) -> dict:
    """all: plan the cells, run the unfinished ones, write the table."""
    if sum([args.checkpoint is not None and not args.random_init, args.random_init,
            args.image_weights is not None]) != 1:
        raise SystemExit("choose one encoder: --checkpoint CKPT, --random-init (with --checkpoint or "
                         "--image-encoder/--image-size) or --image-weights FILE")
    if args.random_init and not args.checkpoint and not (args.image_encoder and args.image_size):
        raise SystemExit("--random-init needs --checkpoint (its architecture) or --image-encoder and --image-size")
    if args.random_init and args.seed != 0:
        raise SystemExit(f"evaluate all --random-init seeds every cell's random weights by its head seed (--seeds, "
                         f"here {' '.join(map(str, args.seeds))}); --seed {args.seed} would be ignored: give the "
                         f"seeds you want as --seeds")
    output_dir = Path(args.output_dir or f"{DEFAULT_OUTPUT}_all")
    output_dir.mkdir(parents=True, exist_ok=True)
    has_text = args.checkpoint is not None and args.image_weights is None
    cells = plan_cells(output_dir, tuple(args.tasks), tuple(args.seeds), has_text, seeded_text=args.random_init)
    models, fractions = {}, ["1"]
    root = (lambda d: Path(args.data_dir) / d) if args.data_dir else (lambda d: data_root(d, None))
    splits = output_dir / "splits"

    def run_cell(cell):
        start = time.perf_counter()
        if cell.task not in TEXT_TASKS:
            seen: list = []
            _downstream(cell, args, seen)
            fractions[:] = seen
            return {}
        seed = args.seed if cell.seed == "all" else cell.seed
        if seed not in models:
            models.clear()
            models[seed] = open_model(args, seed)
        model = models[seed]
        if cell.task == "zeroshot":
            metrics = run_zeroshot(model, cell.dataset, root(cell.dataset), cell.directory, args,
                                   splits / "chexpert_5x200.csv" if cell.dataset == "chexpert" else None)
        elif cell.task == "retrieval":
            metrics = run_retrieval(model, root("mimic_cxr"), cell.directory, args, splits / "mimic_5x200.csv")
        else:
            metrics = run_grounding(model, root("mimic_cxr"), cell.directory)
        return {**metrics, "model": describe(args) | {"seed": seed}, "seconds": round(time.perf_counter() - start, 1)}

    if args.data_pct:
        check_fractions(cells, args.data_pct)
    start = time.perf_counter()
    results = run_cells(cells, run_cell, log=lambda *a: None, progress=not args.no_progress)
    for cell in cells:   # the fractions of finished downstream cells (a resumed run may have run none)
        if cell.task in DOWNSTREAM:
            fractions[:] = [k for k in results[str(cell.directory)] if k.replace(".", "", 1).isdigit()]
            break
    method = ("random init" if args.random_init else f"ImageNet weights {args.image_weights}" if args.image_weights
              else f"checkpoint {args.checkpoint}")
    rows = summarise(cells, results, tuple(fractions))
    paths = write_table(output_dir, rows, method)
    print(Path(paths["markdown"]).read_text(), end="")
    print(f"table: {paths['markdown']} {paths['csv']} {paths['plot']} ({time.perf_counter() - start:.0f}s, "
          f"{len(cells)} cells)")
    return {"rows": rows, "paths": paths}


def main(argv=None):
    args = build_parser().parse_args(argv)
    return whole_table(args) if args.command == "all" else single(args)
