"""COVIDx (the 9A lists) -> 3-class labels normal / pneumonia / COVID-19.

Layout: train_COVIDx9A.txt, test_COVIDx9A.txt (space-separated `patient_id filename label source`), images in
train/ and test/. Validation = 20% of the training patients; test = the official test list.
"""
from __future__ import annotations

from pathlib import Path

from cgns.data.sources import Issues, SchemaError, check_image_exists
from cgns.data.splits import hold_out_validation

TASKS = ("classification",)
CLASS_NAMES = ("normal", "pneumonia", "COVID-19")
LISTS = {"train": "train_COVIDx9A.txt", "test": "test_COVIDx9A.txt"}


def table_files(root: Path) -> list[Path]:
    return [root / name for name in LISTS.values()]


def read_list(path: Path) -> list[tuple[int, str, str, int]]:
    """-> [(line number, patient_id, filename, class index)]; SchemaError naming file, line and field."""
    if not path.is_file():
        raise SchemaError(f"{path}: file not found (expected by the official COVIDx layout)")
    rows = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = text.split()
        if not fields:
            continue
        if len(fields) < 3:
            raise SchemaError(f"{path}: line {line}: {len(fields)} field(s), expected "
                              f"'patient_id filename label source'")
        # Four fields officially; the label is the third, the source (if any) is ignored.
        patient, filename, label = fields[0], fields[1], fields[2]
        if label not in CLASS_NAMES:
            raise SchemaError(f"{path}: line {line}: field 'label' has unknown value {label!r} "
                              f"(expected one of {', '.join(CLASS_NAMES)})")
        rows.append((line, patient, filename, CLASS_NAMES.index(label)))
    return rows


def read_records(root: Path, issues: Issues) -> list[dict]:
    records = []
    for official, name in LISTS.items():
        for _line, patient, filename, label in read_list(root / name):
            record = {"id": f"{official}/{filename}", "path": f"{official}/{filename}", "group": patient,
                      "official": official, "label": label}
            if check_image_exists(root, record, issues):
                records.append(record)
    return records


def make_splits(records: list[dict]) -> dict[str, list[int]]:
    return hold_out_validation(records, 0.2, "test")
