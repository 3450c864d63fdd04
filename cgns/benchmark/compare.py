"""The comparison table: every task and fraction of `evaluate all` (rows, in its published order) by method
(columns), mean ± standard deviation over pretraining seeds, and each method's paired difference against the
reference method (ConVIRT by default; at the same weight variants where those are benchmarked) with its 95%
t-interval over the seed pairs; and, where CM-CGNS's ablations are benchmarked beside it, the full method's paired
difference against each ablation (does the clustering-guided sampling pay? does CM-MIR?); and whether each method
learns at every pretraining seed: its CheXpert probe AUC at 10% of the training data beats random init's at the
same seed by at least 0.05 (LEARNING_ROW, LEARNING_MARGIN).

A method's value at one pretraining seed is what its `evaluate all` table shows: the mean over the head seeds
(--eval-seeds) of that checkpoint. Pairs are formed by pretraining seed.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from cgns.benchmark.methods import RANDOM_INIT
from cgns.benchmark.plan import Job
from cgns.benchmark.stats import mean_std, paired_difference
from cgns.io import atomic_write_json, atomic_write_text


def seed_values(jobs: list[Job]) -> tuple[list[dict], dict]:
    """(rows: [{"header", "label", "task", "dataset", "percent"}] in table order, values: {method: {seed: {(header,
    label): value or None}}}) from the table.json of each finished evaluation."""
    rows, seen, values = [], set(), {}
    for job in jobs:
        table = job.directory / "table.json"
        if job.kind != "evaluate" or not table.is_file():
            continue
        mine = values.setdefault(job.method, {}).setdefault(job.seed, {})
        for column in json.loads(table.read_text())["columns"]:
            for value in column["values"]:
                key = (column["header"], value["label"])
                mine[key] = value["mean"]
                if key not in seen:
                    seen.add(key)
                    rows.append({"header": column["header"], "label": value["label"], "task": column["task"],
                                 "dataset": column["dataset"], "percent": column.get("percent", True)})
    order = {}
    for column_index, header in enumerate(_column_order()):
        order.setdefault(header, column_index)
    rows.sort(key=lambda r: order.get(r["header"], len(order)))        # stable: labels keep their order
    return rows, values


def _column_order() -> list[str]:
    from cgns.evaluate.table import COLUMNS

    return [c.header for c in COLUMNS]


def paired_with(method: str, reference: str | None, methods: list[str]) -> str | None:
    """The method a row is paired against: the reference at the same weight variants when that is benchmarked
    ('cgns@w3=0.5' against 'cgns-no-cgns@w3=0.5' for --reference cgns-no-cgns), else the reference itself; None for
    the reference, or when the reference is not benchmarked."""
    if reference not in methods:
        return None
    _, at, variants = method.partition("@")
    same_weights = f"{reference}@{variants}" if at else None
    partner = same_weights if same_weights in methods and same_weights != method else reference
    return None if partner == method else partner


def ablation_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """(full method, ablation) for every benchmarked CM-CGNS ablation whose full method is benchmarked at the same
    weight variants: ('cgns', 'cgns-no-cgns'), ('cgns@w3=0.5', 'cgns-no-cgns@w3=0.5'), ..."""
    pairs = []
    for method in methods:
        name, at, variants = method.partition("@")
        full = "cgns" + (f"@{variants}" if at else "")
        if name.startswith("cgns-no-") and full in methods:
            pairs.append((full, method))
    return pairs


LEARNING_ROW = ("CheXpert AUC", "10%")    # (header, label) of the row that says whether a method learns
LEARNING_MARGIN = 0.05                     # ... by beating random init at the same seed by at least this


def learning_check(values: dict, methods: list[str]) -> dict:
    """{method: {"gains": {seed: value - random init's value at that seed}, "min": the smallest gain, "learns":
    every gain >= LEARNING_MARGIN}} on LEARNING_ROW (values: seed_values'); {} without random init or without the
    row. A method with a seed lacking the row or random init's value there does not pass."""
    row, baseline = LEARNING_ROW, values.get(RANDOM_INIT, {})
    if not any(entry.get(row) is not None for entry in baseline.values()):
        return {}
    out = {}
    for method in methods:
        if method == RANDOM_INIT or method not in values:
            continue
        gains = {}
        for seed, entry in sorted(values[method].items()):
            value, base = entry.get(row), baseline.get(seed, {}).get(row)
            gains[str(seed)] = None if value is None or base is None else value - base
        known = [g for g in gains.values() if g is not None]
        out[method] = {"gains": gains, "min": min(known) if known else None,
                       "learns": bool(known) and len(known) == len(gains) and min(known) >= LEARNING_MARGIN}
    return out


def compare(jobs: list[Job], methods: list[str], reference: str | None) -> dict:
    """{"methods", "reference", "partners", "ablations": [[full, ablation]], "rows": [row + {"methods": {method:
    {"mean", "std", "n", "seeds", "difference"}}, "ablations": {"full − ablation": difference}}], "learning":
    learning_check(...)}. "difference" (paired by pretraining seed against paired_with(method)) is None where
    there is no partner."""
    rows, values = seed_values(jobs)
    partners = {m: paired_with(m, reference, methods) for m in methods}
    ablations = ablation_pairs(methods)
    out = []
    for row in rows:
        key = (row["header"], row["label"])

        def per_seed(method):
            return {seed: entry.get(key) for seed, entry in sorted(values.get(method, {}).items())}

        per_method = {}
        for method in methods:
            seeds = per_seed(method)
            partner = partners[method]
            difference = None if partner is None else {**paired_difference(seeds, per_seed(partner)),
                                                       "against": partner}
            per_method[method] = {**mean_std(list(seeds.values())), "seeds": {str(s): v for s, v in seeds.items()},
                                  "difference": difference}
        against = {f"{full} − {ablation}": {**paired_difference(per_seed(full), per_seed(ablation)),
                                            "against": ablation} for full, ablation in ablations}
        out.append({**row, "methods": per_method, "ablations": against})
    return {"methods": list(methods), "reference": reference if reference in methods else None,
            "partners": partners, "ablations": [list(pair) for pair in ablations], "rows": out,
            "learning": learning_check(values, methods)}


def _scale(row: dict) -> tuple[int, int]:
    return (100, 1) if row["percent"] else (1, 2)


def show_mean_std(row: dict, entry: dict) -> str:
    if entry["mean"] is None:
        return "n/a"
    scale, digits = _scale(row)
    text = f"{scale * entry['mean']:.{digits}f}"
    return text + (f" ± {scale * entry['std']:.{digits}f}" if entry["std"] is not None else "")


def show_difference(row: dict, difference: dict) -> str:
    if difference is None or difference["mean"] is None:
        return "n/a"
    scale, digits = _scale(row)
    text = f"{scale * difference['mean']:+.{digits}f}"
    if difference["low"] is None:
        return text + " [n/a]"
    return text + f" [{scale * difference['low']:+.{digits}f}, {scale * difference['high']:+.{digits}f}]"


def markdown(comparison: dict, title: str) -> str:
    methods, reference = comparison["methods"], comparison["reference"]
    lines = [f"# {title}", "", "Mean ± standard deviation over pretraining seeds (percent, except CNR and mIoU); "
             "each seed's value is its checkpoint's mean over the head seeds.", "",
             "| column | value | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for row in comparison["rows"]:
        cells = " | ".join(show_mean_std(row, row["methods"][m]) for m in methods)
        lines.append(f"| {row['header']} | {row['label']} | {cells} |")
    others = [m for m in methods if comparison["partners"][m] is not None]
    if reference is None:
        lines += ["", "No paired differences: the reference method is not among the methods benchmarked."]
    elif others:
        lines += ["", f"Paired difference against {reference} (at the same weight variants where those are "
                      f"benchmarked), by pretraining seed: mean [95% t-interval over the seed pairs; n/a with one "
                      f"pair].", "",
                  "| column | value | " + " | ".join(f"{m} − {comparison['partners'][m]}" for m in others) + " |",
                  "|---|---|" + "---|" * len(others)]
        for row in comparison["rows"]:
            cells = " | ".join(show_difference(row, row["methods"][m]["difference"]) for m in others)
            lines.append(f"| {row['header']} | {row['label']} | {cells} |")
    pairs = [f"{full} − {ablation}" for full, ablation in comparison.get("ablations", [])]
    if pairs:
        lines += ["", "CM-CGNS against its ablations: the full method's paired difference, by pretraining seed: mean "
                      "[95% t-interval over the seed pairs] (above 0: the part ablated helps).", "",
                  "| column | value | " + " | ".join(pairs) + " |", "|---|---|" + "---|" * len(pairs)]
        for row in comparison["rows"]:
            cells = " | ".join(show_difference(row, row["ablations"][pair]) for pair in pairs)
            lines.append(f"| {row['header']} | {row['label']} | {cells} |")
    return "\n".join(lines + learning_markdown(comparison.get("learning") or {})) + "\n"


def learning_markdown(learning: dict) -> list[str]:
    """The learning check's lines: a method's gain over random init by pretraining seed, its smallest, the verdict."""
    if not learning:
        return []
    seeds = list(dict.fromkeys(s for entry in learning.values() for s in entry["gains"]))
    header, label = LEARNING_ROW
    lines = ["", f"Does each method learn? Its {header} at {label} minus random init's at the same pretraining seed "
                 f"(points); it learns where every seed gains at least {100 * LEARNING_MARGIN:.1f}.", "",
             "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | smallest | learns |",
             "|---|" + "---|" * (len(seeds) + 2)]
    for method, entry in learning.items():
        cells = [_points(entry["gains"].get(s)) for s in seeds] + [_points(entry["min"])]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {'yes' if entry['learns'] else 'no'} |")
    return lines


def _points(value) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def _number(value) -> str:
    return "" if value is None else f"{value:.6f}"


def csv_text(comparison: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "column", "task", "dataset", "value", "n_seeds", "mean", "std", "per_seed",
                     "paired_against", "difference_mean", "difference_low", "difference_high", "n_pairs"])

    def line(row: dict, method: str, difference: dict | None) -> None:
        entry, difference = row["methods"][method], difference or {}
        per_seed = ";".join(f"{s}:{_number(v)}" for s, v in entry["seeds"].items())
        writer.writerow([method, row["header"], row["task"], row["dataset"], row["label"], entry["n"],
                         _number(entry["mean"]), _number(entry["std"]), per_seed,
                         difference.get("against", ""), _number(difference.get("mean")),
                         _number(difference.get("low")), _number(difference.get("high")), difference.get("n", "")])

    for row in comparison["rows"]:
        for method, entry in row["methods"].items():
            line(row, method, entry["difference"])
        for pair, difference in row.get("ablations", {}).items():     # the full method against an ablation
            line(row, pair.split(" − ")[0], difference)
    return out.getvalue()


def plot(comparison: dict, path: Path, title: str) -> Path:
    """One panel per column: grouped bars (one per method) for each value, with the standard deviation."""
    from cgns.viz.plots import panel_figure, save_panels

    headers = list(dict.fromkeys(r["header"] for r in comparison["rows"]))
    methods = comparison["methods"]
    figure, axes = panel_figure(len(headers), columns=4, width=3.6, height=2.8)
    width = 0.8 / max(1, len(methods))
    for ax, header in zip(axes, headers):
        rows = [r for r in comparison["rows"] if r["header"] == header]
        for i, method in enumerate(methods):
            scale = _scale(rows[0])[0]
            means = [scale * (r["methods"][method]["mean"] or 0.0) for r in rows]
            errors = [scale * (r["methods"][method]["std"] or 0.0) for r in rows]
            positions = [k + (i - (len(methods) - 1) / 2) * width for k in range(len(rows))]
            ax.bar(positions, means, width, yerr=errors, capsize=2, label=method, color=f"C{i}")
        ax.set_xticks(range(len(rows)), [r["label"] for r in rows], fontsize=7)
        ax.set_title(header, fontsize=8)
    if headers:
        axes[0].legend(fontsize=6)
    return save_panels(figure, axes, len(headers), path, title)


def write_comparison(output_dir: Path, comparison: dict, title: str, with_plot: bool = True) -> dict:
    """benchmark.md, benchmark.csv, benchmark.json and (with_plot) benchmark.png under output_dir -> their paths."""
    paths = {"markdown": output_dir / "benchmark.md", "csv": output_dir / "benchmark.csv",
             "plot": output_dir / "benchmark.png", "json": output_dir / "benchmark.json"}
    atomic_write_text(paths["markdown"], markdown(comparison, title))
    atomic_write_text(paths["csv"], csv_text(comparison))
    atomic_write_json(paths["json"], {"title": title, **comparison})
    if with_plot:
        plot(comparison, paths["plot"], title)
    return {k: str(v) for k, v in paths.items()}
