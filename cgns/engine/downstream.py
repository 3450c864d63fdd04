"""The one driver of the three downstream tasks (linear probe, YOLOv3 detection, U-Net segmentation).

The driver owns what the tasks share: the run configuration's `encoder` and `run` sections, the encoder source
(exactly one of checkpoint / image weights / random init), the training fractions (1% / 10% / 100%), the head seeds,
the whitening sweep, metrics.json, config.json and the paper-style rows. A task is a plug-in (a DownstreamTask:
cgns.engine.linear.LINEAR, cgns.engine.detect.DETECTION, cgns.engine.segment.SEGMENTATION) that builds the data of
one fraction, trains a head on it and scores it, and has a `task` section of its own.

    config = configure(linear.DEMO, dataset="chexpert", random_init=True, image_encoder="vit_tiny", image_size=64)
    results = run_downstream(linear.LINEAR, config)     # {"<pct>": {"val": {...}, "test": {...}, "train": {...}}}

Seeds: `seeds=(0, 1, 2)` runs the whole protocol once per seed, seed s playing the part of `--seeds s` alone (it
seeds the head, the order of its batches, the training subset and, with random_init, the encoder). The result of
each fraction is then the mean over seeds, with the standard deviation under "std" and each seed's own entry under
"seeds"; the paper row shows mean ± std.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from cgns.config import ConfigParser, flag_fields, option, override, sections, write_config
from cgns.models.encoders import ENCODER_NAMES


def pct_key(pct: float) -> str:
    """0.01 -> '0.01', 0.1 -> '0.1', 1.0 -> '1' (the keys of metrics.json)."""
    return f"{pct:g}"


def _shrinkage(text: str) -> float | None:
    """--whiten-shrinkage: 'off' (no whitening), 0 (full) or a shrinkage > 0."""
    from cgns.models.whitening import parse_shrinkage

    try:
        return parse_shrinkage(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def whiten_option() -> Any:
    """The --whiten-shrinkage field of the dense tasks' sections (detection, segmentation)."""
    return option((None,), "fixed whitening of the frozen encoder's maps before the head, fitted on the training "
                           "split: 'off' (none, the protocol), 0 (full) or a shrinkage > 0 (partial). Several "
                           "values: one head each, the best on validation is tested (e.g. off 0 0.1)",
                  parse=_shrinkage, metavar="S", show=lambda value: "off" if value is None else f"{value:g}")


@dataclass
class EncoderConfig:
    """Where the frozen (or fine-tuned) image encoder comes from: exactly one of the three sources at run time."""
    checkpoint: str | None = option(None, "a pretraining checkpoint of this project (encoder name and size are "
                                          "read from it)")
    image_weights: str | None = option(None, "ImageNet-format (timm/torchvision) state dict file")
    random_init: bool = option(False, "randomly initialised encoder (the baseline), seeded by the head seed")
    image_encoder: str | None = option(None, "image encoder (none: the checkpoint's, else resnet50)",
                                       choices=ENCODER_NAMES)
    image_size: int | None = option(None, "crop fed to the encoder, px (none: the checkpoint's, else 224)")
    resize_checkpoint: bool = option(False, "with --checkpoint and another --image-size than it was trained at: "
                                            "build the encoder at --image-size and resample its position tables")

    def __post_init__(self):
        chosen = [flag for flag, on in (("--checkpoint", self.checkpoint is not None),
                                        ("--image-weights", self.image_weights is not None),
                                        ("--random-init", self.random_init)) if on]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} cannot be combined: choose one encoder source")


@dataclass
class RunConfig:
    """Data, fractions, seeds and optimisation shared by the three tasks. Defaults: MGCA's evaluation protocol."""
    data_root: str | None = option(None, "data set in its official layout (none: the generated demo copy under "
                                         "data/demo/)")
    output_dir: str | None = option(None, "where metrics.json, config.json and the task's files go (none: "
                                          "runs/linear_<dataset>, runs/detect_<dataset> or runs/seg_<dataset>)")
    data_pct: tuple[float, ...] = option((0.01, 0.1, 1.0), "fraction(s) of the TRAINING split (seeded subsets; "
                                                           "validation and test stay whole)")
    seeds: tuple[int, ...] = option((42,), "head seed(s): each fraction trains one head per seed; several: the "
                                           "paper row shows mean ± std")
    epochs: int = option(50, "training epochs of the head")
    batch_size: int = option(16, "images per batch")
    lr: float = option(5e-4, "peak learning rate (cosine schedule)")
    weight_decay: float = option(1e-6, "weight decay")
    num_workers: int = option(0, "DataLoader worker processes")
    device: str | None = option(None, "cpu / cuda (none: cuda when available)")

    def __post_init__(self):
        bad = [p for p in self.data_pct if not 0 < p <= 1]
        if bad or not self.data_pct:
            raise ValueError(f"data_pct must be one or more fractions in (0, 1], got {list(self.data_pct)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be one or more distinct integers, got {list(self.seeds)}")


def downstream_config(name: str, task_section: type) -> type:
    """The run configuration class of a task: the sections `encoder` (EncoderConfig), `run` (RunConfig) and `task`
    (the task's own dataclass, `dataset` first)."""
    config_cls = dataclasses.make_dataclass(name, [
        ("encoder", EncoderConfig, field(default_factory=EncoderConfig)),
        ("run", RunConfig, field(default_factory=RunConfig)),
        ("task", task_section, field(default_factory=task_section))])
    config_cls.__module__ = task_section.__module__
    return config_cls


def configure(base, **values):
    """A copy of a run configuration (a preset) with fields set by name (`epochs=5`, `checkpoint=path`); a name
    that is no field of any section is refused."""
    known = {f.name for cls in sections(type(base)).values() for f in flag_fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"unknown configuration field(s) {', '.join(unknown)}")
    return override(base, {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass
class Fraction:
    """One training fraction's data: what the head trains on (train), is chosen on (val) and scored on (test)."""
    pct: float
    train: Any
    val: Any
    test: Any
    num_train: int
    extra: dict = field(default_factory=dict)


@dataclass
class SeedRun:
    """One seed's pass over the fractions: the configuration, the encoder and whatever the task keeps between
    fractions (`state`: feature caches, class names)."""
    config: Any
    seed: int
    device: str
    log: Callable
    root: Path
    encoder: torch.nn.Module
    source: dict
    state: dict = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return self.config.task.dataset


def monitor_key(metrics: dict | None, metric: str, select_by: str = "metric") -> tuple:
    """Larger is better: (-val loss) with select_by="loss", else (val metric, -val loss); an undefined (None / nan)
    metric ranks last. Orders the epochs of one head and the heads of a whitening sweep."""
    if not metrics:
        return (-math.inf, -math.inf)
    if select_by == "loss":
        return (-metrics["loss"],)
    value = metrics.get(metric)
    return (-math.inf if value is None or math.isnan(value) else value, -metrics["loss"])


class DownstreamTask:
    """A downstream task as the driver sees it. Subclasses set the class attributes and implement the hooks; the
    entry point train_<prefix>.py parses with `parser` and prints with `report`."""
    name: str = ""                  # "linear", "detection", "segmentation": log lines
    prefix: str = ""                # "linear", "detect", "seg": train_<prefix>.py, runs/<prefix>_<dataset>
    description: str = ""           # the entry point's --help title
    config_cls: type                # the run configuration class (downstream_config)
    presets: dict                   # {"demo": ..., "paper": ...}, instances of config_cls
    datasets: tuple = ()
    rows: tuple = ()                # (split, metric, suffix) of the paper-style rows printed after a run
    final_keys: tuple = ()          # metrics of the `final:` line
    whitens: bool = False           # a whitening sweep (metrics.json records it under "whitening")

    def primary(self, dataset: str) -> str:
        """The metric that ranks epochs and whitening candidates and fills the paper row."""
        raise NotImplementedError

    def whitening(self, config) -> list:
        """Candidate whitening shrinkages (None = none); checked before any data is read."""
        return [None]

    def setup(self, run: SeedRun) -> None:
        """Once per seed, after the encoder is loaded: what the fractions share."""

    def fraction(self, run: SeedRun, pct: float) -> Fraction:
        raise NotImplementedError

    def fit_moments(self, run: SeedRun, data: Fraction):
        """cgns.models.whitening.MapMoments of the training fraction's encoder maps (for the whitening sweep)."""
        raise NotImplementedError

    def train_head(self, run: SeedRun, data: Fraction, whitening) -> tuple:
        """-> (model, summary with best_epoch / epochs_run, validation metrics of the kept epoch)."""
        raise NotImplementedError

    def evaluate(self, run: SeedRun, data: Fraction, model, summary: dict) -> dict:
        """-> {"val": {...}, "test": {...}, "train": {...}} of the chosen head."""
        raise NotImplementedError

    def metrics_extra(self, config) -> dict:
        """Task-specific top-level entries of metrics.json."""
        return {}

    @functools.cached_property
    def parser(self) -> ConfigParser:
        """The entry point's parser: --config demo|paper|FILE, then every flag of config_cls."""
        return ConfigParser(self.description, self.config_cls, self.presets, prog=f"train_{self.prefix}.py")

    def parse(self, argv=None):
        """The entry point's configuration: `parser.parse(argv)`, --dataset required, output_dir resolved to
        runs/<prefix>_<dataset> when not given."""
        config = self.parser.parse(argv)
        if config.task.dataset is None:
            self.parser.build(config).error(f"the following arguments are required: --dataset "
                                            f"(one of {', '.join(self.datasets)})")
        if config.run.output_dir is None:
            config = dataclasses.replace(config, run=dataclasses.replace(
                config.run, output_dir=f"runs/{self.prefix}_{config.task.dataset}"))
        return config

    def report(self, config, results: dict) -> dict:
        """Print the paper-style rows and the `final:` line (largest fraction); return `results`."""
        from cgns.cli import print_final

        dataset = config.task.dataset
        for split, metric, suffix in self.rows:
            print(paper_row(dataset, results, split, metric or self.primary(dataset)) + suffix)
        largest = results[pct_key(max(config.run.data_pct))]
        keys = self.final_keys or (self.primary(dataset),)
        print_final({split: {k: largest[split][k] for k in keys if k in largest[split]} for split in ("val", "test")})
        return results


def device_of(config) -> str:
    return config.run.device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_encoder(config, seed: int):
    """(encoder, source) from exactly one of checkpoint / image weights / random init (seeded by `seed`); frozen
    unless the task fine-tunes it."""
    from cgns.engine.features import load_frozen_encoder

    source = config.encoder
    return load_frozen_encoder(source.image_encoder, source.image_size, checkpoint=source.checkpoint,
                               image_weights=source.image_weights, random_init=source.random_init, seed=seed,
                               resize_checkpoint=source.resize_checkpoint,
                               frozen=not getattr(config.task, "finetune", False))


def run_seed(task: DownstreamTask, config, seed: int, candidates: list, log=print) -> tuple[dict, dict]:
    """Every fraction with one seed -> ({"<pct>": entry}, encoder source)."""
    from cgns.data.roots import resolve_data_root
    from cgns.engine.features import sweep_whitening
    from cgns.models.whitening import shrinkage_label

    # the encoder first: a checkpoint that does not match the flags is refused before any data is touched
    encoder, source = load_encoder(config, seed)
    device = device_of(config)
    run = SeedRun(config, seed, device, log, resolve_data_root(config.task.dataset, config.run.data_root),
                  encoder.to(device), source)
    task.setup(run)
    primary, results = task.primary(run.dataset), {}
    for index, pct in enumerate(config.run.data_pct):
        start = time.perf_counter()
        if index and getattr(config.task, "finetune", False):   # a fine-tuned encoder must not leak across fractions
            run.encoder, run.source = load_encoder(config, seed)
        data = task.fraction(run, pct)

        def train_head(whitening):
            model, summary, val = task.train_head(run, data, whitening)
            return model, summary, val, monitor_key(val, primary)

        model, summary, chosen, tried, spectrum = sweep_whitening(candidates, lambda: task.fit_moments(run, data),
                                                                  train_head, primary, log)
        entry = task.evaluate(run, data, model, summary)
        entry["train"]["seconds"] = round(time.perf_counter() - start, 2)
        if task.whitens:
            entry["whitening"] = {"chosen": shrinkage_label(chosen), f"val_{primary}": tried,
                                  "map_spectrum": spectrum}
        results[pct_key(pct)] = entry
        log(f"{task.name} {run.dataset} {pct_key(pct)}: val {primary} {_show(entry['val'].get(primary))} "
            f"test {primary} {_show(entry['test'].get(primary))} (best epoch {summary['best_epoch']})")
    return results, run.source


def run_downstream(task: DownstreamTask, config, log=print) -> dict:
    """Train and score the task's head for each fraction (and seed) -> {"<pct>": {"val", "test", "train", ...}}.

    With config.run.output_dir: writes config.json (before training) and metrics.json: the fractions, plus "val" /
    "test" of the largest one. Several seeds: each fraction's entry is the mean over seeds (see the module
    docstring)."""
    from cgns.cli import write_metrics

    dataset = config.task.dataset
    if dataset not in task.datasets:
        raise ValueError(f"{task.name}: unknown dataset '{dataset}' (expected one of {list(task.datasets)})")
    candidates = task.whitening(config)
    output_dir = config.run.output_dir
    if output_dir is not None:
        write_config(output_dir, config)
    per_seed, sources = {}, []
    for seed in config.run.seeds:
        per_seed[seed], source = run_seed(task, config, seed, candidates, log)
        sources.append(source)
    results = per_seed[config.run.seeds[0]] if len(per_seed) == 1 else combine_seeds(per_seed)
    if output_dir is not None:
        largest = results[pct_key(max(config.run.data_pct))]
        write_metrics(output_dir, {**results, "val": largest["val"], "test": largest["test"], "encoder": sources[0],
                                   "dataset": dataset, "primary_metric": task.primary(dataset),
                                   **task.metrics_extra(config)})
    return results


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _stdev(values: list[float]) -> float:
    """Sample standard deviation; nan when a value is (statistics.stdev fails on nan)."""
    return math.nan if any(math.isnan(v) for v in values) else statistics.stdev(values)


def _over_seeds(entries: list[dict], reduce: Callable) -> dict:
    """Reduce each numeric leaf of the entries (nested dicts followed); a leaf undefined (None) in one seed is None,
    other leaves (names, lists) are left out."""
    combined = {}
    for key, first in entries[0].items():
        values = [entry.get(key) for entry in entries]
        if isinstance(first, dict) and all(isinstance(v, dict) for v in values):
            combined[key] = _over_seeds(values, reduce)
        elif all(_number(v) or v is None for v in values):
            combined[key] = None if None in values else reduce([float(v) for v in values])
    return combined


def combine_seeds(per_seed: dict[int, dict]) -> dict:
    """{seed: {"<pct>": entry}} -> {"<pct>": {"val", "test", "train": means over seeds, "std": {"val", "test"}
    (sample standard deviations), "seeds": {"<seed>": entry}}}."""
    combined = {}
    for key in next(iter(per_seed.values())):
        entries = [results[key] for results in per_seed.values()]
        combined[key] = {split: _over_seeds([e[split] for e in entries], statistics.fmean)
                         for split in ("val", "test", "train")}
        combined[key]["std"] = {split: _over_seeds([e[split] for e in entries], _stdev)
                                for split in ("val", "test")}
        combined[key]["seeds"] = {str(seed): results[key] for seed, results in per_seed.items()}
    return combined


def _show(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def paper_row(dataset: str, results: dict, split: str = "test", metric: str = "mAP") -> str:
    """'rsna  test mAP (%)  1%: 3.1 | 10%: 8.0 | 100%: 15.2' (the layout of the paper's tables); with several
    seeds each cell is mean ± std."""
    cells = []
    for key, entry in results.items():
        if not isinstance(entry, dict) or split not in entry or metric not in entry[split]:
            continue
        value = entry[split][metric]
        shown = "n/a" if value is None else f"{100 * value:.1f}"
        spread = entry.get("std", {}).get(split, {}).get(metric)
        if spread is not None and value is not None:
            shown += f" ± {100 * spread:.1f}"
        cells.append(f"{100 * float(key):g}%: {shown}")
    return f"{dataset}  {split} {metric} (%)  " + " | ".join(cells)
