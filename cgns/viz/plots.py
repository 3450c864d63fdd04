"""Training curves from log.jsonl: losses per term and stage, learning rate, retrieval R@k, CGNS statistics.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing needs a display and no global
figure state leaks between calls. Each function returns the PNG path, or None when the log has nothing to plot.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cgns.viz.runlog import RunLog

STAGE_COLOURS = {1: "tab:blue", 2: "tab:orange"}


def _figure(rows: int, cols: int, width: float = 4.2, height: float = 3.0) -> Figure:
    figure = Figure(figsize=(cols * width, rows * height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _panel_grid(count: int, max_cols: int = 3) -> tuple[Figure, list]:
    """A figure with `count` panels, up to max_cols per row -> (figure, axes in reading order)."""
    cols = min(max_cols, count)
    rows = math.ceil(count / cols)
    figure = _figure(rows, cols)
    return figure, [figure.add_subplot(rows, cols, i + 1) for i in range(count)]


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def panel_figure(count: int, columns: int = 4, width: float = 3.4, height: float = 2.7) -> tuple[Figure, list]:
    """A figure of `count` panels in rows of `columns` (all rows full: the spare panels are switched off by
    save_panels) -> (figure, axes in reading order). No pyplot: no global figure state, no backend switch."""
    lines = max(1, math.ceil(count / columns))
    figure = _figure(lines, columns, width, height)
    return figure, [figure.add_subplot(lines, columns, i + 1) for i in range(lines * columns)]


def save_panels(figure: Figure, axes: list, used: int, path: Path, title: str) -> Path:
    """Switch off the panels after the first `used`, title the figure, write the PNG -> path."""
    for ax in axes[used:]:
        ax.axis("off")
    figure.suptitle(title, fontsize=9)
    return _save(figure, Path(path))


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (same length), so noisy per-step losses show their trend."""
    if window <= 1 or len(values) < 3:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(len(values)):
        start = max(0, i + 1 - window)
        out[i] = (cumulative[i + 1] - cumulative[start]) / (i + 1 - start)
    return out


def _stage_starts(log: RunLog) -> list[int]:
    """Steps at which a stage after the first begins (drawn as vertical lines)."""
    starts, previous = [], None
    for record in log.train:
        stage = record.get("stage")
        if previous is not None and stage != previous and "step" in record:
            starts.append(record["step"])
        previous = stage
    return starts


def _mark_stages(axis, starts: list[int]) -> None:
    for step in starts:
        axis.axvline(step, color="grey", linestyle="--", linewidth=0.8)


def _plot_by_stage(axis, steps, values, stages, label_prefix: str = "train") -> None:
    steps, values, stages = np.asarray(steps), np.asarray(values), np.asarray(stages)
    window = max(1, len(values) // 50)
    for stage in sorted(set(stages.tolist())):
        keep = stages == stage
        colour = STAGE_COLOURS.get(stage, None)
        axis.plot(steps[keep], values[keep], color=colour, alpha=0.25, linewidth=0.8)
        axis.plot(steps[keep], _smooth(values[keep], window), color=colour, linewidth=1.5,
                  label=f"{label_prefix} stage {stage}")


def plot_losses(log: RunLog, out_dir: Path) -> Path | None:
    """One panel per loss term: train (per stage, raw + moving average) and validation points."""
    train_terms = [k[len("loss/"):] for k in log.keys("train", "loss/")]
    val_terms = [k[len("val/loss/"):] for k in log.keys("val", "val/loss/")]
    terms = sorted(set(train_terms) | set(val_terms), key=lambda t: (t != "total", t))
    if not terms:
        return None
    figure, axes = _panel_grid(len(terms))
    starts = _stage_starts(log)
    for axis, term in zip(axes, terms):
        steps, values, stages = log.series("train", f"loss/{term}")
        if steps:
            _plot_by_stage(axis, steps, values, stages)
        val_steps, val_values, _ = log.series("val", f"val/loss/{term}")
        if val_steps:
            axis.plot(val_steps, val_values, "o-", color="black", markersize=3, linewidth=1, label="validation")
        _mark_stages(axis, starts)
        axis.set_title(term)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(figure, out_dir / "losses.png")


def plot_learning_rate(log: RunLog, out_dir: Path) -> Path | None:
    steps, values, stages = log.series("train", "lr")
    if not steps:
        return None
    figure = _figure(1, 1, width=6.0)
    axis = figure.add_subplot(1, 1, 1)
    _plot_by_stage(axis, steps, values, stages, label_prefix="lr")
    _mark_stages(axis, _stage_starts(log))
    axis.set_xlabel("step")
    axis.set_ylabel("learning rate")
    axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _save(figure, out_dir / "learning_rate.png")


def plot_retrieval(log: RunLog, out_dir: Path) -> Path | None:
    """Image-to-text and text-to-image R@k over validation steps, one line per k; chance R@k dashed."""
    titles = {"i2t": "image -> report", "t2i": "report -> image"}
    keys = [k for k in log.keys("val", "retrieval/") if k.split("/")[1].split("_")[0] in titles]
    if not keys:
        return None
    directions = [d for d in titles if any(k.startswith(f"retrieval/{d}_") for k in keys)]
    figure = _figure(1, len(directions), width=5.0)
    starts = _stage_starts(log)
    for i, direction in enumerate(directions):
        axis = figure.add_subplot(1, len(directions), i + 1)
        for key in keys:
            if not key.startswith(f"retrieval/{direction}_"):
                continue
            steps, values, _ = log.series("val", key)
            line = axis.plot(steps, values, "o-", markersize=3, label=key.split("_", 1)[1])[0]
            chance_steps, chance, _ = log.series("val", "retrieval/chance_" + key.split("_", 1)[1])
            if chance_steps:
                axis.plot(chance_steps, chance, "--", color=line.get_color(), linewidth=0.8)
        _mark_stages(axis, starts)
        axis.set_title(titles[direction] + " (dashed: chance)")
        axis.set_xlabel("step")
        axis.set_ylabel("recall")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(figure, out_dir / "retrieval_recall.png")


def cluster_size_matrix(log: RunLog):
    """(steps, sizes [T, K] sorted large to small per step) from the train records holding cgns/cluster_sizes."""
    steps, rows = [], []
    for record in log.train:
        sizes = record.get("cgns/cluster_sizes")
        if isinstance(sizes, list) and sizes and "step" in record and any(sizes):
            steps.append(record["step"])
            rows.append(sorted((float(s) for s in sizes), reverse=True))
    if not rows:
        return [], np.zeros((0, 0))
    width = max(len(r) for r in rows)
    matrix = np.zeros((len(rows), width))
    for i, row in enumerate(rows):
        matrix[i, :len(row)] = row
    return steps, matrix


def plot_cluster_sizes(log: RunLog, out_dir: Path) -> Path | None:
    """Sorted cluster sizes over time (heat map) and how many clusters are in use."""
    steps, sizes = cluster_size_matrix(log)
    if not steps:
        return None
    figure = _figure(1, 2, width=5.5)
    axis = figure.add_subplot(1, 2, 1)
    image = axis.imshow(np.log1p(sizes.T), aspect="auto", origin="upper", cmap="viridis",
                        extent=(steps[0], steps[-1] if len(steps) > 1 else steps[0] + 1, sizes.shape[1], 0))
    figure.colorbar(image, ax=axis, label="log(1 + members)")
    axis.set_xlabel("step")
    axis.set_ylabel("cluster rank (largest first)")
    axis.set_title("cluster sizes per step")
    axis = figure.add_subplot(1, 2, 2)
    used = (sizes > 0).sum(axis=1)
    total = np.maximum(sizes.sum(axis=1), 1)
    axis.plot(steps, used, color="tab:green", label="clusters with members")
    axis.set_xlabel("step")
    axis.set_ylabel("clusters in use")
    twin = axis.twinx()
    twin.plot(steps, sizes[:, 0] / total, color="tab:red", label="share of largest")
    twin.set_ylabel("share of the largest cluster")
    twin.set_ylim(0, 1.05)
    axis.set_title("cluster usage")
    axis.grid(alpha=0.3)
    lines = axis.get_lines() + twin.get_lines()
    axis.legend(lines, [line.get_label() for line in lines], fontsize=7)
    return _save(figure, out_dir / "cluster_sizes.png")


def plot_cgns_stats(log: RunLog, out_dir: Path) -> Path | None:
    """Scalar cgns/* statistics over training (hard-negative similarity, false-negative pairs, ...)."""
    keys = []
    for key in log.keys("train", "cgns/"):
        steps, _, _ = log.series("train", key)
        if steps and key != "cgns/kmeans_started_step":
            keys.append(key)
    if not keys:
        return None
    figure, axes = _panel_grid(len(keys))
    starts = _stage_starts(log)
    started = [v for _, v, _ in [log.series("train", "cgns/kmeans_started_step")] for v in v if v >= 0]
    for i, (axis, key) in enumerate(zip(axes, keys)):
        steps, values, stages = log.series("train", key)
        _plot_by_stage(axis, steps, values, stages)
        _mark_stages(axis, starts)
        if started:
            axis.axvline(started[-1], color="tab:purple", linestyle=":", linewidth=1, label="k-means starts")
        axis.set_title(key[len("cgns/"):])
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if i == 0:
            axis.legend(fontsize=7)
    return _save(figure, out_dir / "cgns_stats.png")


def plot_training_curves(log: RunLog, out_dir: Path) -> dict[str, Path]:
    """Every log-derived figure that has data, keyed by a short name."""
    figures = {"losses": plot_losses(log, out_dir), "learning_rate": plot_learning_rate(log, out_dir),
               "retrieval_recall": plot_retrieval(log, out_dir), "cluster_sizes": plot_cluster_sizes(log, out_dir),
               "cgns_stats": plot_cgns_stats(log, out_dir)}
    return {name: path for name, path in figures.items() if path is not None}
