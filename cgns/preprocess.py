"""`python -m cgns.preprocess DATASET --data-root DIR [--out DIR] [--strict]`: official layout -> split tables and
the fast image cache. Training scripts call prepare() on first use, so running this by hand is optional.

The cache is built in a temporary sibling directory and renamed into place only when complete, so an interrupted
or failed run leaves nothing a later run would trust; a complete cache whose fingerprint (data set, cache size,
format, label-file sizes and times) matches is reused as is.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cgns.data.cache import COMPLETE, write_cache, write_tables
from cgns.data.roots import REPO_ROOT
from cgns.data.sources import DATASETS, Issues, SampleError, SchemaError, get_source

CACHE_ROOT = REPO_ROOT / "data" / "cache"
FORMAT_VERSION = 2


def default_cache_dir(dataset: str, data_root: str | os.PathLike, cache_size: int = 256) -> Path:
    """<cache root>/<dataset>-<short hash of the resolved data root>[-s<cache_size>]; the cache root is
    data/cache under the repository, or $CGNS_CACHE_DIR when set (e.g. a scratch disk, or a test's tmp dir)."""
    digest = hashlib.sha1(str(Path(data_root).resolve()).encode("utf-8")).hexdigest()[:10]
    suffix = "" if cache_size == 256 else f"-s{cache_size}"
    return Path(os.environ.get("CGNS_CACHE_DIR") or CACHE_ROOT) / f"{dataset}-{digest}{suffix}"


def fingerprint(dataset: str, root: Path, cache_size: int, options: dict) -> dict:
    """What a cache was built from; a cache is reused only when this matches exactly."""
    source = get_source(dataset)
    files = {}
    for path in source.table_files(root, **options):
        stat = path.stat() if path.exists() else None
        files[str(path.relative_to(root)) if path.is_relative_to(root) else str(path)] = (
            [stat.st_size, stat.st_mtime_ns] if stat else None)
    return {"dataset": dataset, "format": FORMAT_VERSION, "cache_size": cache_size, "files": files,
            "options": {k: str(v) for k, v in sorted(options.items())}}


def is_complete(cache_dir: Path, expected: dict | None = None) -> bool:
    """True when cache_dir holds a finished cache (and, if given, one built from `expected`)."""
    marker = cache_dir / COMPLETE
    if not marker.is_file():
        return False
    if expected is None:
        return True
    try:
        return json.loads(marker.read_text()) == json.loads(json.dumps(expected))
    except json.JSONDecodeError:
        return False


def _built_with_options(cache_dir: Path, expected: dict) -> bool:
    """True when cache_dir is complete and differs from `expected` only by source options: a cache prepared by
    hand with e.g. --reports-root is reused by training scripts, which pass no options."""
    marker = cache_dir / COMPLETE
    if not marker.is_file():
        return False
    try:
        found = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    return {**found, "options": {}} == json.loads(json.dumps({**expected, "options": {}}))


def prepare(dataset: str, data_root: str | os.PathLike, out: str | os.PathLike | None = None,
            strict: bool = False, cache_size: int = 256, workers: int | None = None, verbose: bool = False,
            **options) -> Path:
    """Build (or reuse) the cache of `dataset` from its official layout under `data_root`; returns the cache dir.

    options: source-specific, e.g. reports_root for mimic_cxr. Schema faults raise SchemaError; per-sample faults
    are skipped and summarised (SampleError when strict). workers: image decoding processes; None = in this process
    for small sets (< 256 images), else min(8, CPUs).
    """
    root = Path(data_root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"--data-root {root}: no such directory")
    options = {k: v for k, v in options.items() if v is not None}
    cache_dir = Path(out) if out is not None else default_cache_dir(dataset, root, cache_size)
    expected = fingerprint(dataset, root, cache_size, options)
    if is_complete(cache_dir, expected) or (not options and _built_with_options(cache_dir, expected)):
        if verbose:
            print(f"reusing the complete cache {cache_dir}")
        return cache_dir
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time (e.g. every rank of a torchrun job calls prepare); the others wait, then reuse.
    with open(cache_dir.parent / f".{cache_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(cache_dir, expected):
            return cache_dir
        tmp = Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=f".{cache_dir.name}.tmp-"))
        try:
            summary = _build(dataset, root, tmp, strict, cache_size, workers, verbose, options)
            (tmp / COMPLETE).write_text(json.dumps(expected))
            _publish(tmp, cache_dir, expected)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if verbose:
        print(format_summary(summary))
    return cache_dir


def _build(dataset: str, root: Path, tmp: Path, strict: bool, cache_size: int, workers: int, verbose: bool,
           options: dict) -> dict:
    source = get_source(dataset)
    issues = Issues(strict=strict)
    started = time.time()
    records = source.read_records(root, issues, **options)
    notes = records.notes if hasattr(records, "notes") else {}
    if workers is None:
        workers = 0 if len(records) < 256 else min(8, os.cpu_count() or 1)
    records = write_cache(tmp, root, list(records), source, cache_size, issues, workers=workers, progress=verbose)
    if hasattr(source, "notes_after_cache"):
        notes = source.notes_after_cache(notes, records)
    if not records:
        raise SchemaError(f"{root}: no usable {dataset} images were found ({issues.summary()})")
    splits = source.make_splits(records)
    summary = {"dataset": dataset, "data_root": str(root), "cache_size": cache_size, "images": len(records),
               "splits": {name: len(rows) for name, rows in splits.items()}, "skipped": issues.as_dict(),
               "notes": notes, "seconds": round(time.time() - started, 1)}
    write_tables(tmp, records, splits, summary)
    if dataset == "mimic_cxr":
        # The WordPiece vocabulary is trained on the training reports and lives beside the cache.
        from cgns.data.tokenizer import train_wordpiece

        train_wordpiece([" ".join(records[i]["sentences"]) for i in splits["train"]], tmp / "tokenizer")
    return summary


def _publish(tmp: Path, cache_dir: Path, expected: dict) -> None:
    """Rename the finished temporary directory into place; a stale or incomplete target is removed first."""
    if cache_dir.exists():
        stale = cache_dir.with_name(f".{cache_dir.name}.stale-{os.getpid()}")
        os.replace(cache_dir, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, cache_dir)
    except OSError:
        # Another process (e.g. a second rank) published the same cache first.
        if not is_complete(cache_dir, expected):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def format_summary(summary: dict) -> str:
    """A few lines: images per split, skipped samples by reason, source notes (e.g. MIMIC studies dropped)."""
    lines = [f"{summary['dataset']}: {summary['images']} images cached at {summary['cache_size']} px "
             f"in {summary['seconds']} s; splits: "
             + ", ".join(f"{name}={count}" for name, count in summary["splits"].items())]
    counts = summary["skipped"]["counts"]
    if counts:
        lines.append(f"skipped {sum(counts.values())} sample(s):")
        for kind, count in sorted(counts.items()):
            example = summary["skipped"]["examples"][kind][0]
            lines.append(f"  {count} x {kind} (e.g. {example})")
    else:
        lines.append("no samples skipped")
    for key, value in summary.get("notes", {}).items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--data-root", required=True, help="the data set folder in its official layout")
    parser.add_argument("--out", default=None, help="cache directory (default: data/cache/<dataset>-<hash>)")
    parser.add_argument("--strict", action="store_true", help="per-sample faults are errors instead of skips")
    parser.add_argument("--cache-size", type=int, default=256, help="long side of the cached images (px)")
    parser.add_argument("--workers", type=int, default=None,
                        help="image decoding processes (0 = in this process; default min(8, CPUs), 0 for < 256 images)")
    parser.add_argument("--reports-root", default=None,
                        help="mimic_cxr only: folder holding files/pXX/pSUBJECT/sSTUDY.txt (default DATA_ROOT/reports)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = get_args_parser().parse_args(argv)
    options = {"reports_root": args.reports_root} if args.dataset == "mimic_cxr" else {}
    try:
        cache_dir = prepare(args.dataset, args.data_root, out=args.out, strict=args.strict,
                            cache_size=args.cache_size, workers=args.workers, verbose=True, **options)
    except (SchemaError, SampleError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"cache: {cache_dir}")
    return cache_dir


if __name__ == "__main__":
    main()
