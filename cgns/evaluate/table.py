"""`python -m cgns.evaluate all`: every evaluation of one encoder in one table, resumable.

A cell is one evaluation (task x data set) with one seed; it writes <output>/<task>_<dataset>/seed<s>/metrics.json
and a later run with the same output folder keeps and skips every cell whose metrics.json exists. Downstream cells
(linear, detection, segmentation) go through cgns.engine.downstream with the chosen preset, one head seed each; the
evaluations of the text tower (zero-shot, retrieval, grounding) need no head: with a checkpoint they run once
(seed 'all'), with a random-init model once per seed (the seed draws its weights), and not at all for ImageNet
weights (no text tower). The table shows mean ± sample standard deviation over seeds, in the published layout.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cgns.io import atomic_write_json, atomic_write_text

DOWNSTREAM = ("linear", "segmentation", "detection")
TEXT_TASKS = ("zeroshot", "retrieval", "grounding")
TASKS = DOWNSTREAM + TEXT_TASKS


@dataclass(frozen=True)
class Column:
    """One column of the table: a task on a data set, and the metrics (JSON paths into its metrics.json) shown
    as 'a / b / c' in the cell; `percent`: shown x100 as the published tables do."""
    task: str
    dataset: str
    header: str
    percent: bool = True


# The published layout (DATASETS.md) first, then the evaluations of the text tower.
COLUMNS = (
    Column("linear", "chexpert", "CheXpert AUC"), Column("linear", "rsna", "RSNA AUC"),
    Column("linear", "covidx", "COVIDx ACC"), Column("segmentation", "siim", "SIIM Dice"),
    Column("segmentation", "rsna", "RSNA Dice"), Column("detection", "rsna", "RSNA mAP"),
    Column("detection", "object_cxr", "Object-CXR mAP"),
    Column("zeroshot", "chexpert", "CheXpert 5xN zero-shot ACC"), Column("zeroshot", "rsna", "RSNA zero-shot AUC"),
    Column("zeroshot", "covidx", "COVIDx zero-shot ACC"),
    Column("retrieval", "mimic_cxr", "MIMIC 5xN P@1/5/10 i2t"),
    Column("retrieval", "mimic_cxr", "MIMIC 5xN P@1/5/10 t2i"),
    Column("retrieval", "mimic_cxr", "exact pairs R@1/5/10 i2t"),
    Column("grounding", "mimic_cxr", "MS-CXR CNR / mIoU", percent=False),
)


def column_values(column: Column, metrics: dict, fractions: tuple[str, ...]) -> list[tuple[str, float | None]]:
    """[(label, value)] a cell shows, read from one seed's metrics.json."""
    def get(*keys):
        value = metrics
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    if column.task in DOWNSTREAM:
        primary = metrics.get("primary_metric")
        return [(f"{100 * float(pct):g}%", get(pct, "test", primary)) for pct in fractions]
    if column.task == "zeroshot":
        return [("test", get("test", "auroc" if column.dataset == "rsna" else "accuracy"))]
    if column.task == "grounding":
        return [("CNR", get("test", "cnr")), ("mIoU", get("test", "miou"))]
    if "exact" in column.header:
        return [(f"R@{k}", get("exact_pairs", "test", f"i2t_R@{k}")) for k in (1, 5, 10)]
    way = "image_to_text" if column.header.endswith("i2t") else "text_to_image"
    return [(f"P@{k}", get("test", way, f"P@{k}")) for k in (1, 5, 10)]


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    if not kept or len(kept) < len(values):
        return None, None
    return statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else None


@dataclass
class Cell:
    task: str
    dataset: str
    seed: int | str            # a head seed, or 'all' (a text-tower evaluation of a fixed model)
    directory: Path

    @property
    def metrics_path(self) -> Path:
        return self.directory / "metrics.json"

    @property
    def name(self) -> str:
        return f"{self.task} {self.dataset} seed {self.seed}"


def plan_cells(output_dir: Path, tasks: tuple[str, ...], seeds: tuple[int, ...], has_text: bool,
               seeded_text: bool) -> list[Cell]:
    """Every (task, data set, seed) cell to run, in table order; text-tower cells only when has_text, once (seed
    'all') unless seeded_text (a random-init model: one model per seed)."""
    cells, seen = [], set()
    for column in COLUMNS:
        key = (column.task, column.dataset)
        if column.task not in tasks or key in seen or (column.task in TEXT_TASKS and not has_text):
            continue
        seen.add(key)
        per_seed = column.task in DOWNSTREAM or seeded_text
        for seed in (seeds if per_seed else ("all",)):
            cells.append(Cell(column.task, column.dataset, seed,
                              output_dir / f"{column.task}_{column.dataset}" / f"seed{seed}"))
    return cells


def run_cells(cells: list[Cell], run_cell: Callable[[Cell], dict], log=print, progress: bool = True) -> dict:
    """Run the cells not yet finished (metrics.json absent), with a progress bar; -> {cell dir: metrics}."""
    from tqdm import tqdm

    done = {}
    bar = tqdm(cells, desc="evaluate all", unit="cell", disable=not progress, dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(cell.name)
        if cell.metrics_path.is_file():
            done[str(cell.directory)] = json.loads(cell.metrics_path.read_text())
            log(f"{cell.name}: finished earlier, kept ({cell.metrics_path})")
            continue
        cell.directory.mkdir(parents=True, exist_ok=True)
        metrics = run_cell(cell)
        if not cell.metrics_path.is_file():   # downstream cells write their own
            atomic_write_json(cell.metrics_path, metrics)
        done[str(cell.directory)] = json.loads(cell.metrics_path.read_text())
    return done


def summarise(cells: list[Cell], results: dict, fractions: tuple[str, ...]) -> list[dict]:
    """One entry per column: {"header", "task", "dataset", "values": [{"label", "mean", "std", "n_seeds"}]}."""
    rows = []
    for column in COLUMNS:
        mine = [c for c in cells if (c.task, c.dataset) == (column.task, column.dataset)]
        if not mine:
            continue
        per_seed = [column_values(column, results[str(c.directory)], fractions) for c in mine]
        values = []
        for i, (label, _) in enumerate(per_seed[0]):
            mean, std = mean_std([entry[i][1] for entry in per_seed])
            values.append({"label": label, "mean": mean, "std": std, "n_seeds": len(per_seed)})
        rows.append({"header": column.header, "task": column.task, "dataset": column.dataset,
                     "percent": column.percent, "values": values})
    return rows


def _show(value: dict, percent: bool) -> str:
    if value["mean"] is None:
        return "n/a"
    scale, digits = (100, 1) if percent else (1, 2)
    text = f"{scale * value['mean']:.{digits}f}"
    return text + (f" ± {scale * value['std']:.{digits}f}" if value["std"] is not None else "")


def markdown(rows: list[dict], method: str) -> str:
    """A one-row table: '| method | CheXpert AUC | ... |' with cells 'a/b/c' (mean ± std)."""
    header = "| method | " + " | ".join(r["header"] for r in rows) + " |"
    rule = "|---|" + "---|" * len(rows)
    cells = " | ".join(" / ".join(_show(v, r["percent"]) for v in r["values"]) for r in rows)
    labels = " | ".join("/".join(v["label"] for v in r["values"]) for r in rows)
    return "\n".join([header, rule, f"| (shown) | {labels} |", f"| {method} | {cells} |"]) + "\n"


def csv_text(rows: list[dict], method: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "column", "task", "dataset", "value", "mean", "std", "n_seeds"])
    for r in rows:
        for v in r["values"]:
            writer.writerow([method, r["header"], r["task"], r["dataset"], v["label"],
                             "" if v["mean"] is None else f"{v['mean']:.6f}",
                             "" if v["std"] is None else f"{v['std']:.6f}", v["n_seeds"]])
    return out.getvalue()


def plot(rows: list[dict], path: Path, method: str) -> Path:
    """One panel per column: a bar per value with its standard deviation."""
    from cgns.viz.plots import panel_figure, save_panels

    figure, axes = panel_figure(len(rows), columns=4, width=3.2, height=2.6)
    for ax, r in zip(axes, rows):
        scale = 100 if r["percent"] else 1
        means = [scale * (v["mean"] or 0.0) for v in r["values"]]
        errors = [scale * (v["std"] or 0.0) for v in r["values"]]
        ax.bar(range(len(means)), means, yerr=errors, color="tab:blue", capsize=3)
        ax.set_xticks(range(len(means)), [v["label"] for v in r["values"]], fontsize=7)
        ax.set_title(r["header"], fontsize=8)
    return save_panels(figure, axes, len(rows), path, method)


def write_table(output_dir: Path, rows: list[dict], method: str) -> dict:
    """table.md, table.csv, table.png and table.json under output_dir -> their paths."""
    paths = {"markdown": output_dir / "table.md", "csv": output_dir / "table.csv", "plot": output_dir / "table.png",
             "json": output_dir / "table.json"}
    atomic_write_text(paths["markdown"], markdown(rows, method))
    atomic_write_text(paths["csv"], csv_text(rows, method))
    atomic_write_json(paths["json"], {"method": method, "columns": rows})
    plot(rows, paths["plot"], method)
    return {k: str(v) for k, v in paths.items()}
