"""write_report(run_dir): the visual report of a pretraining run, RUN_DIR/report/report.html plus its PNGs.

Sections from log.jsonl need nothing but the log; the model sections (CM-MIR reconstructions, attention maps,
retrieval examples, cluster members, the localisation figure) need checkpoints/final.pt (or latest.pt) and the
validation split of the data the run was trained on.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cgns.viz.html import Details, Figure, Section, Table, render_page
from cgns.viz.plots import plot_training_curves
from cgns.viz.runlog import read_log

REPORT_DIR = "report"
SETTINGS_SHOWN = ("image_encoder", "image_size", "stage1_epochs", "stage2_epochs", "batch_size", "lr",
                  "data_root", "data_pct", "max_length", "num_clusters", "seed", "device")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def _flatten(metrics: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def summary_section(run_dir: Path) -> Section:
    section = Section("Run", note=f"run directory: {run_dir.name}")
    config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.json"
    if config_path.is_file():
        args = {k: v for section in _read_json(config_path).values() for k, v in section.items()}
        shown = [[k, args[k]] for k in SETTINGS_SHOWN if k in args]
        others = [[k, v] for k, v in sorted(args.items()) if k not in SETTINGS_SHOWN and not isinstance(v, dict)]
        section.items.append(Table(["setting", "value"], shown, caption="main settings (config.json)"))
        if others:
            section.items.append(Details(f"all {len(others)} other settings", [Table(["setting", "value"], others)]))
    if metrics_path.is_file():
        flat = _flatten(_read_json(metrics_path))
        section.items.append(Table(["metric", "value"], [[k, v] for k, v in sorted(flat.items())],
                                   caption="final metrics (metrics.json)"))
    return section


def curve_sections(run_dir: Path, out_dir: Path) -> list[Section]:
    log_path = run_dir / "log.jsonl"
    if not log_path.is_file():
        return [Section("Training curves", error=f"{log_path.name} not found: no curves")]
    figures = plot_training_curves(read_log(log_path), out_dir)
    curves = Section("Training curves", note="Per-step training losses (faint: raw, solid: moving average) by "
                     "stage, validation losses (black), learning rate, and validation retrieval recall.")
    captions = {"losses": "loss per term; dashed line = start of stage 2",
                "learning_rate": "learning rate per step (warm-up then cosine, rebuilt per stage)",
                "retrieval_recall": "validation retrieval R@k (image->report, report->image)"}
    for name, caption in captions.items():
        if name in figures:
            curves.items.append(Figure(figures[name], caption))
    if not curves.items:
        curves.error = "log.jsonl holds no train or validation records yet"
    cgns = Section("CGNS clusters over training",
                   note="k-means over sentence-level cross-modal features: how many clusters are in use and how "
                        "evenly sentences spread, and the hard-negative / false-negative statistics.")
    if "cluster_sizes" in figures:
        cgns.items.append(Figure(figures["cluster_sizes"], "cluster sizes per logged step (sorted, largest first)"))
    if "cgns_stats" in figures:
        cgns.items.append(Figure(figures["cgns_stats"], "CGNS statistics; dotted line = k-means start"))
    if not cgns.items:
        cgns.note += " (the log holds no cgns/* statistics: k-means never started or was disabled)"
    return [curves, cgns]


def write_report(run_dir: str | Path, *, out_dir: str | Path | None = None, num_images: int = 4,
                 device: str = "cpu", data_root: str | Path | None = None, with_model: bool = True) -> Path:
    """Write the report of the pretraining run in `run_dir`; returns the path of report.html.

    num_images: validation images shown per model panel; data_root: the MIMIC-CXR folder (default: the run's
    config.json's data_root, else the demo copy); with_model=False skips the sections that need the checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [summary_section(run_dir)]
    sections += curve_sections(run_dir, out_dir)
    if with_model:
        from cgns.viz.panels import model_sections

        sections += model_sections(run_dir, out_dir, num_images=num_images, device=device, data_root=data_root)
    page = render_page(f"CM-CGNS pretraining report: {run_dir.resolve().name}", sections, out_dir / "report.html")
    print(f"report: {page}", file=sys.stderr)
    return page
