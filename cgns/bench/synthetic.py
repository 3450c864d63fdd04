"""Benchmark of the generated world: images/s to draw and write each layout at 256 px, on one core.

The baseline is the issue's target (1,000 images at 256 px in under a minute = 16.7 images/s); ratio > 1 means
the generator is faster than that target. Speed is measured in images per CPU-second of this process (the
generator is single-threaded), so a machine shared with other jobs does not distort it; wall time is in the note.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_IMAGES_PER_S = 1000 / 60


def _time_layout(dataset: str, count_key: str, n: int, size: int) -> tuple[float, int]:
    from cgns.synthetic import count_files, generate

    counts = {"chexpert_valid": 1, "covidx_test": 1, "object_cxr_dev": 1, count_key: n}
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), time.process_time()
        generate(tmp, [dataset], seed=0, preset="demo", image_size=size, counts=counts)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        images = count_files(Path(tmp) / dataset)
    return elapsed, cpu, images


def run(quick: bool = False) -> list[dict]:
    from cgns.synthetic.cases import sample_case
    from cgns.synthetic.reports import write_report

    n = 100 if quick else 1000
    rows = []
    for dataset, key, what in (("chexpert", "chexpert", "JPEG + CSV"), ("rsna", "rsna", "DICOM + CSV"),
                               ("mimic_cxr", "mimic_cxr", "JPEG + reports + CSV.gz")):
        count = n if dataset != "mimic_cxr" else max(n // 2, 10)
        elapsed, cpu, images = _time_layout(dataset, key, count, 256)
        ours = images / cpu
        rows.append({"section": "synthetic", "name": f"generate {dataset} 256px ({what})", "ours": round(ours, 1),
                     "baseline": round(TARGET_IMAGES_PER_S, 1), "unit": "images/cpu-s",
                     "ratio": round(ours / TARGET_IMAGES_PER_S, 2),
                     "note": f"{images} images, {cpu:.1f}s cpu / {elapsed:.1f}s wall; baseline = 1000 images/min"})
    cpu_start = time.process_time()
    n_reports = 500 if quick else 5000
    for i in range(n_reports):
        rng = np.random.default_rng(i)
        write_report(sample_case(rng, "general"), rng)
    cpu = time.process_time() - cpu_start
    rows.append({"section": "synthetic", "name": "write report text + labels", "ours": round(n_reports / cpu),
                 "baseline": None, "unit": "reports/cpu-s", "ratio": None, "note": f"{n_reports} reports"})
    return rows
