"""One module per data set turns its official layout into records and split tables.

Module interface (each of mimic_cxr, chexpert, rsna, covidx, siim, object_cxr):
    TASKS: tuple of tasks it serves; CLASS_NAMES (classification sources)
    table_files(root) -> list[Path]             the label/metadata files (checked to exist, fingerprinted)
    read_records(root, issues, **options) -> list[dict]   one record per image: 'id', 'path' (relative to root),
        'group' (patient / ImageId), plus 'label' / 'boxes' (xyxy, original pixels) / 'rles' / 'sentences'
    make_splits(records) -> {split name: [record index]}
    mask(record, height, width) -> uint8 [H, W]   (only sources with pixel masks)

The bad-input policy lives here: schema faults raise SchemaError at once; per-sample faults go to Issues.
"""
from __future__ import annotations

import csv
import gzip
import importlib
import io
from collections import Counter
from pathlib import Path

DATASETS = ("mimic_cxr", "chexpert", "rsna", "covidx", "siim", "object_cxr")


class SchemaError(ValueError):
    """The label/metadata files do not have the documented format; the message names file, row and field."""


class SampleError(RuntimeError):
    """A per-sample fault raised because --strict was given."""


class Issues:
    """Per-sample faults (missing image, unreadable DICOM, empty report, ...): skipped and counted, or raised
    as SampleError when strict."""

    def __init__(self, strict: bool = False, examples: int = 3):
        self.strict = strict
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._max_examples = examples

    def skip(self, kind: str, message: str) -> None:
        """Record one skipped sample of fault `kind` ('missing image', ...), or raise when strict."""
        if self.strict:
            raise SampleError(f"{message} [{kind}; --strict turns skipped samples into errors]")
        self.counts[kind] += 1
        bucket = self.examples.setdefault(kind, [])
        if len(bucket) < self._max_examples:
            bucket.append(message)

    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """Human-readable summary, one line per fault kind with an example."""
        if not self.counts:
            return "no samples skipped"
        lines = [f"skipped {self.total()} sample(s):"]
        for kind, count in sorted(self.counts.items()):
            lines.append(f"  {count} x {kind} (e.g. {self.examples[kind][0]})")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": self.examples}


def get_source(dataset: str):
    """The source module of `dataset` (one of DATASETS)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; expected one of {', '.join(DATASETS)}")
    return importlib.import_module(f"cgns.data.sources.{dataset}")


def read_table(path: Path, required: tuple[str, ...], delimiter: str = ",") -> list[tuple[int, dict]]:
    """Read a CSV (optionally .gz) -> [(line number, row dict)]; header names are stripped of spaces.

    Raises SchemaError naming the file and the missing column(s).
    """
    if not path.is_file():
        raise SchemaError(f"{path}: file not found (expected by the official layout)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        text = handle.read()
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise SchemaError(f"{path}: empty file, expected a header with columns {', '.join(required)}") from None
    missing = [name for name in required if name not in header]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {', '.join(repr(m) for m in missing)} "
                          f"(header has {', '.join(repr(h) for h in header)})")
    rows = []
    for line_number, values in enumerate(reader, start=2):
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise SchemaError(f"{path}: row {line_number}: {len(values)} fields, header has {len(header)}")
        rows.append((line_number, dict(zip(header, values))))
    return rows


def find_table(root: Path, name: str) -> Path:
    """`name` or `name`.gz under root (the MIMIC tables come gzipped or not)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return root / f"{name}.gz"


def check_image_exists(root: Path, record: dict, issues: Issues) -> bool:
    """True when the record's image file exists; otherwise a 'missing image' skip."""
    if (root / record["path"]).is_file():
        return True
    issues.skip("missing image", f"{root / record['path']}: image file not found (id {record['id']})")
    return False
