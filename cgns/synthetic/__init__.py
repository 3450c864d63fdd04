"""The generated chest X-ray world: one seeded generator, one ground truth, six official on-disk layouts.

Real data sets need credentialed downloads, so the demo, the tests and the benchmarks run on this world. It is
faithful in FORMAT (the exact layouts of DATASETS.md, read by the same loaders as real data) and LEARNABLE in
CONTENT (findings drawn with location and severity, described by MIMIC-style reports).

    python -m cgns.synthetic --out data/demo --preset demo
    python -m cgns.synthetic --out /tmp/w --datasets chexpert siim --preset test --n-chexpert 200

Each data set folder also holds ground_truth.json (and ground_truth_masks.npz where masks exist): the generator's
truth, which loaders ignore and tests compare against. Its "images" table is keyed by the data set's own id
(mimic_cxr: dicom_id, chexpert: Path, rsna: patientId, covidx: filename, siim: ImageId, object_cxr: image_name);
each entry has "file" (relative to the data set folder), "height", "width" (pixels of the written image) and
  - "findings": [{kind, side ('left'/'right' = the PATIENT's side; patient left is image right), zone, severity,
    certain, box [x1, y1, x2, y2] in written pixels}] (frontal views),
  - "present" (CheXpert column -> 0/1 as drawn) and, for mimic_cxr/chexpert, "labels" (the CSV's 1/0/-1/None),
  - mimic_cxr: subject_id, study_id, split, view, report, report_layout, kept (>= 3 tokens) and "sentences":
    the report's expected parse (IMPRESSION then FINDINGS, lower-case word tokens joined by spaces, sentences of
    > 1 token) with per sentence {text, kind, negated, finding (index), region (box of that finding or None)},
  - rsna: target, boxes, photometric, bits_stored, mask; covidx: label, split, patient_id;
    siim: positive, parts, photometric, mask; object_cxr: objects [{type, coords, box}], boxes.
mimic_cxr also holds MS_CXR_Local_Alignment_v1.0.0.csv, MS-CXR's phrase-grounding table of its validation and
test studies (cgns.synthetic.ms_cxr; for a world written before it: python -m cgns.synthetic.ms_cxr FOLDER).
Masks (bool [height, width]) are np.load(ground_truth_masks.npz)[mask id].

Pieces: cases (what a patient has), render (drawing), reports (report text and
labels), writers (the six layouts), files (byte-deterministic file formats).
"""
from __future__ import annotations

import argparse
import fcntl
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cgns.synthetic.writers import WRITERS

DATASETS = ("mimic_cxr", "chexpert", "rsna", "covidx", "siim", "object_cxr")
GENERATOR_VERSION = 2  # 2: fainter pneumothorax and consolidation

# What each count counts (presets and --n-<key> flags).
COUNT_UNITS = {"mimic_cxr": "studies (1-3 images each)", "chexpert": "train.csv rows",
               "chexpert_valid": "valid.csv rows", "rsna": "patients", "covidx": "train images",
               "covidx_test": "test images", "siim": "images", "object_cxr": "train images",
               "object_cxr_dev": "dev images"}
PRESETS = {
    "test": {"image_size": 64,
             "counts": {"mimic_cxr": 40, "chexpert": 40, "chexpert_valid": 16, "rsna": 40, "covidx": 36,
                        "covidx_test": 18, "siim": 32, "object_cxr": 32, "object_cxr_dev": 12}},
    "demo": {"image_size": 256,
             "counts": {"mimic_cxr": 3000, "chexpert": 1000, "chexpert_valid": 234, "rsna": 800, "covidx": 600,
                        "covidx_test": 200, "siim": 400, "object_cxr": 400, "object_cxr_dev": 100}},
}


def resolve_counts(preset: str, counts: dict | None) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    merged = dict(PRESETS[preset]["counts"])
    for key, value in (counts or {}).items():
        if key not in merged:
            raise ValueError(f"unknown count {key!r}; known: {sorted(merged)}")
        if int(value) < 1:
            raise ValueError(f"count {key}={value} must be at least 1")
        merged[key] = int(value)
    return merged


def save_masks(path: Path, masks: dict[str, np.ndarray]) -> None:
    """An .npz (readable by np.load) of bool masks keyed by id, with fixed zip timestamps (np.savez stamps now)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(masks):
            buf = io.BytesIO()
            np.save(buf, np.asarray(masks[key], dtype=bool), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def generate_dataset(out_dir: Path, dataset: str, seed: int, preset: str, image_size: int, counts: dict) -> Path:
    """Write one data set to out_dir/<dataset> atomically (temp folder + rename); returns its folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / dataset
    tmp = out_dir / f".{dataset}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        truth, masks = WRITERS[dataset](tmp, counts, seed, image_size)
        if dataset == "mimic_cxr":  # a file of its own: the world's other files do not change
            from cgns.synthetic.ms_cxr import write_ms_cxr

            write_ms_cxr(tmp, truth=truth)
        if masks:
            save_masks(tmp / "ground_truth_masks.npz", masks)
        header = {"dataset": dataset, "seed": seed, "preset": preset, "image_size": image_size,
                  "generator_version": GENERATOR_VERSION, "counts": counts}
        (tmp / "ground_truth.json").write_text(json.dumps({**header, **truth}, indent=1, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def generate(out_dir, datasets=None, seed: int = 0, preset: str = "test", image_size: int | None = None,
             counts: dict | None = None, *, workers: int = 1) -> Path:
    """Write <out_dir>/<dataset>/ for each data set (all six by default) in its official layout, plus its
    ground_truth.json (+ ground_truth_masks.npz for rsna and siim). Returns out_dir.

    workers > 1 writes data sets in parallel processes; the bytes do not depend on it (each data set and each
    image has its own seeded generator)."""
    out_dir = Path(out_dir)
    datasets = list(DATASETS if datasets is None else datasets)
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown data set(s) {unknown}; choose from {list(DATASETS)}")
    counts = resolve_counts(preset, counts)
    size = int(image_size or PRESETS[preset]["image_size"])
    if size < 32:
        raise ValueError(f"image_size {size} too small (min 32)")
    if workers > 1 and len(datasets) > 1:
        # spawn, not fork: the caller may hold torch/OpenMP threads, which do not survive a fork
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(datasets)), mp_context=context) as pool:
            jobs = [pool.submit(generate_dataset, out_dir, d, seed, preset, size, counts) for d in datasets]
            for job in jobs:
                job.result()
    else:
        for dataset in datasets:
            generate_dataset(out_dir, dataset, seed, preset, size, counts)
    return out_dir


def world_mismatch(folder: Path, *, preset: str, seed: int) -> str | None:
    """Why the generated data set in `folder` is not what this code's `preset` writes (None when it is): absent, or
    written by another generator version, preset, seed, image size or counts (its ground_truth.json header says)."""
    truth = folder / "ground_truth.json"
    if not truth.is_file():
        return "absent"
    try:
        header = json.loads(truth.read_text())
    except (OSError, ValueError) as error:
        return f"{truth} unreadable ({error})"
    if not isinstance(header, dict):
        return f"{truth} holds no header"
    expected = {"generator_version": GENERATOR_VERSION, "preset": preset, "seed": seed,
                "image_size": PRESETS[preset]["image_size"], "counts": resolve_counts(preset, None)}
    differ = [f"{key} {header.get(key)!r} (this code: {value!r})" for key, value in expected.items()
              if header.get(key) != value]
    return "; ".join(differ) or None


def ensure_demo(dataset: str, root="data/demo", *, preset: str = "demo", seed: int = 0) -> Path:
    """The demo copy of `dataset` under root/<dataset>; on first use generates the WHOLE demo world once.
    Safe when several processes race: one generates under a file lock, the others wait and reuse it.

    A data set written by another generator version, preset, seed or counts (an older checkout's world) is
    regenerated, with a message saying what differed: results from a stale world would not match the README's.
    Bump GENERATOR_VERSION whenever the drawing or the report text changes."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; choose from {list(DATASETS)}")
    root = Path(root)
    if world_mismatch(root / dataset, preset=preset, seed=seed) is None:
        return root / dataset
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        why = {d: world_mismatch(root / d, preset=preset, seed=seed) for d in DATASETS}
        missing = [d for d in DATASETS if why[d] is not None]
        for stale in root.glob(".*.tmp-*"):  # left by a generator that was killed; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        for d in missing:
            if why[d] != "absent":
                print(f"{root / d}: stale demo data ({why[d]}); regenerating it", file=sys.stderr, flush=True)
        if missing:
            start = time.perf_counter()
            print(f"generating the demo world ({', '.join(missing)}) under {root} ...", file=sys.stderr, flush=True)
            generate(root, missing, seed=seed, preset=preset, workers=min(2, os.cpu_count() or 1))
            print(f"demo world ready in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    return root / dataset


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix in (".jpg", ".jpeg", ".png", ".dcm"))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m cgns.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder; one sub-folder per data set")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--image-size", type=int, default=None,
                        help="image size in px (default: the preset's); MIMIC-CXR / CheXpert portraits have this "
                             "height, COVIDx and Object-CXR images vary around it")
    for key in PRESETS["demo"]["counts"]:
        parser.add_argument(f"--n-{key.replace('_', '-')}", dest=f"n_{key}", type=int, default=None, metavar="N",
                            help=f"{key}: number of {COUNT_UNITS[key]} (default: the preset's)")
    parser.add_argument("--workers", type=int, default=1, help="data sets written in parallel processes")
    return parser


def main(argv=None) -> dict:
    """Generate, then print per data set: images written, wall and CPU seconds (sequential runs only)."""
    args = get_args_parser().parse_args(argv)
    counts = {k: getattr(args, f"n_{k}") for k in PRESETS["demo"]["counts"] if getattr(args, f"n_{k}") is not None}
    out = Path(args.out)
    summary = {}
    if args.workers > 1:
        start = time.perf_counter()
        generate(out, args.datasets, seed=args.seed, preset=args.preset, image_size=args.image_size,
                 counts=counts, workers=args.workers)
        elapsed = time.perf_counter() - start
        summary = {d: {"images": count_files(out / d)} for d in args.datasets}
        total = sum(v["images"] for v in summary.values())
        print(f"{total} images in {elapsed:.1f}s wall with {args.workers} workers -> {out}")
        return summary
    for dataset in args.datasets:
        start, cpu_start = time.perf_counter(), time.process_time()
        generate(out, [dataset], seed=args.seed, preset=args.preset, image_size=args.image_size, counts=counts)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        n = count_files(out / dataset)
        summary[dataset] = {"images": n, "seconds": round(elapsed, 2), "cpu_seconds": round(cpu, 2)}
        print(f"{dataset:<11} {n:6d} images  {elapsed:7.1f}s wall  {cpu:7.1f}s cpu  "
              f"({n / max(cpu, 1e-9):.0f} images per cpu-second)", flush=True)
    wall = sum(v["seconds"] for v in summary.values())
    cpu = sum(v["cpu_seconds"] for v in summary.values())
    print(f"total       {sum(v['images'] for v in summary.values()):6d} images  {wall:7.1f}s wall  {cpu:7.1f}s cpu"
          f"  -> {out}")
    return summary

