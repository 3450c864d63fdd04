"""The expected CPU time of the runs a benchmark has left, and how each figure was obtained.

Pretraining: the mean wall time of this method's runs already finished in this output folder (fresh runs, not
resumed ones), else of any method's, else (demo preset only) DEMO_PRETRAIN_SECONDS. Evaluation: the cells of
`evaluate all` not yet finished, each at its measured demo time (DEMO_CELL_SECONDS), times the speed this output
folder has shown (its finished evaluations' wall time over their demo-table prediction; 1 before any has
finished). Without a demo figure (the paper preset) and without a finished run here, no estimate is printed.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from cgns.benchmark.plan import Job

# Measured on the 2-core CPU machine this project is developed on (torch 2.13.0 CPU wheel), demo preset.
# Pretraining: README command 1 (`python train_pretrain.py`, CM-CGNS's demo, 10.8 min, with its closing probe and
# report, which the benchmark turns off). The peers' demo presets are sized to the same number of steps (issue 26),
# so they are estimated alike until a run of theirs has finished here.
DEMO_PRETRAIN_SECONDS = 648.0
# `evaluate all --seeds 0` on README command 1's checkpoint, seconds per cell (one head seed; the text cells once,
# the first with the model's loading), measured cell by cell while two other pretraining runs shared the 2 cores
# (1188 s in all; segmentation of RSNA is two thirds of it).
DEMO_CELL_SECONDS = {
    ("linear", "chexpert"): 4.9, ("linear", "rsna"): 1.8, ("linear", "covidx"): 1.8,
    ("segmentation", "siim"): 176.9, ("segmentation", "rsna"): 807.2,
    ("detection", "rsna"): 114.3, ("detection", "object_cxr"): 67.1,
    ("zeroshot", "chexpert"): 3.0, ("zeroshot", "rsna"): 0.6, ("zeroshot", "covidx"): 0.7,
    ("retrieval", "mimic_cxr"): 3.5, ("grounding", "mimic_cxr"): 5.0,
}


@dataclass
class Estimate:
    seconds: float | None          # None: some run has no estimate
    lines: list[str]               # how it was obtained, one line per kind of run


def remaining_cells(job: Job) -> list:
    """The `evaluate all` cells of an evaluation job without a metrics.json yet."""
    from cgns.evaluate.table import plan_cells

    cells = plan_cells(job.directory, job.tasks, job.head_seeds, has_text=True, seeded_text=job.random_init)
    return [c for c in cells if not c.metrics_path.is_file()]


def demo_cell_seconds(job: Job) -> float:
    """The demo table's prediction for the evaluation job's unfinished cells."""
    return sum(DEMO_CELL_SECONDS.get((c.task, c.dataset), 0.0) for c in remaining_cells(job))


def _records(jobs: list[Job], kind: str) -> list[tuple[Job, dict]]:
    out = []
    for job in jobs:
        record = job.record() if job.kind == kind else None
        if record and record.get("seconds") is not None:
            out.append((job, record))
    return out


def pretrain_seconds(job: Job, jobs: list[Job], preset: str) -> tuple[float | None, str]:
    history = [(j, r) for j, r in _records(jobs, "pretrain") if not r.get("resumed")]
    mine = [r["seconds"] for j, r in history if j.method == job.method]
    if mine:
        return statistics.fmean(mine), f"{job.method}'s {len(mine)} finished run(s) here"
    if history:
        return statistics.fmean(r["seconds"] for _, r in history), f"other methods' {len(history)} run(s) here"
    if preset == "demo":
        return DEMO_PRETRAIN_SECONDS, "the measured CM-CGNS demo (README command 1, 2 CPU cores)"
    return None, f"nothing measured for the {preset} preset yet"


def evaluation_speed(jobs: list[Job]) -> tuple[float, str]:
    """(this folder's wall time over the demo table's prediction, its source)."""
    pairs = [(r["seconds"], r["demo_seconds"]) for _, r in _records(jobs, "evaluate") if r.get("demo_seconds")]
    if not pairs:
        return 1.0, "per-cell demo times measured on 2 CPU cores"
    speed = sum(s for s, _ in pairs) / sum(d for _, d in pairs)
    return speed, f"per-cell demo times x {speed:.2f}, the speed of {len(pairs)} finished evaluation(s) here"


def estimate(jobs: list[Job], preset: str, extra_flags: bool = False) -> Estimate:
    """The expected CPU time of the jobs not finished. extra_flags: the runs take flags of the user's
    (--pretrain-args / --eval-args), which the demo figures do not know of."""
    left = [j for j in jobs if j.state() != "finished"]
    total: float | None = 0.0
    lines = [f"{len(jobs) - len(left)} of {len(jobs)} runs finished (reused)"]
    by_source: dict[str, list[float | None]] = {}
    for job in (j for j in left if j.kind == "pretrain"):
        seconds, source = pretrain_seconds(job, jobs, preset)
        by_source.setdefault(source, []).append(seconds)
    for source, values in by_source.items():
        if None in values:
            total = None
            lines.append(f"pretraining: {len(values)} run(s), unknown ({source})")
            continue
        lines.append(f"pretraining: {len(values)} run(s), {format_seconds(sum(values))} (from {source})")
        total = None if total is None else total + sum(values)
    evaluations = [j for j in left if j.kind == "evaluate"]
    if evaluations:
        cells = sum(len(remaining_cells(j)) for j in evaluations)
        speed, source = evaluation_speed(jobs)
        measured_here = source.startswith("per-cell demo times x")
        if preset != "demo" and not measured_here:
            total = None
            lines.append(f"evaluation: {len(evaluations)} run(s), {cells} cells, unknown (nothing measured for the "
                         f"{preset} preset yet)")
        else:
            seconds = speed * sum(demo_cell_seconds(j) for j in evaluations)
            lines.append(f"evaluation: {len(evaluations)} run(s), {cells} cells, {format_seconds(seconds)} "
                         f"(from {source})")
            if total is not None:
                total += seconds
    if extra_flags and any("demo" in line for line in lines):
        lines.append("the demo figures do not know the extra --pretrain-args / --eval-args (a --max-steps or "
                     "--epochs there changes the time)")
    return Estimate(total, lines)


def format_seconds(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def describe(estimate_: Estimate) -> str:
    head = ("expected CPU time: unknown (see below); it is printed once a run of each kind has finished here"
            if estimate_.seconds is None else f"expected CPU time: {format_seconds(estimate_.seconds)}")
    return "\n".join([head] + [f"  {line}" for line in estimate_.lines])
