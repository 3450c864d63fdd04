"""RSNA Pneumonia Detection (stage 2) -> one record per patient: Target label and [x1, y1, x2, y2] boxes.

Layout: stage_2_train_labels.csv (patientId, x, y, width, height, Target; one row per box, negatives have empty
box fields) and stage_2_train_images/<patientId>.dcm. Splits: classification / segmentation 70/15/15 by patient
(train / valid / test); detection keeps 5,337 validation + 5,337 test patients out of 26,684, the same fractions
for smaller copies (det_train / det_valid / det_test). Segmentation masks are the filled boxes.
"""
from __future__ import annotations

from pathlib import Path

from cgns.data.sources import Issues, SchemaError, check_image_exists, read_table
from cgns.data.splits import split_counts, split_groups

TASKS = ("classification", "detection", "segmentation")
CLASS_NAMES = ("Pneumonia",)
LABELS = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"
FULL_SIZE, DETECTION_HELD_OUT = 26684, 5337


def table_files(root: Path) -> list[Path]:
    return [root / LABELS]


def _number(row: dict, field: str, where: str) -> float:
    try:
        return float(row[field])
    except ValueError:
        raise SchemaError(f"{where}: field {field!r} is not a number ({row[field]!r}) on a Target=1 row") from None


def read_records(root: Path, issues: Issues) -> list[dict]:
    path = root / LABELS
    patients: dict[str, dict] = {}
    for line, row in read_table(path, ("patientId", "x", "y", "width", "height", "Target")):
        where = f"{path}: row {line}"
        patient = row["patientId"].strip()
        if not patient:
            raise SchemaError(f"{where}: field 'patientId' is empty")
        target = row["Target"].strip()
        if target not in ("0", "1"):
            raise SchemaError(f"{where}: field 'Target' has unknown value {row['Target']!r} (expected 0 or 1)")
        record = patients.setdefault(patient, {"id": patient, "path": f"{IMAGES}/{patient}.dcm", "group": patient,
                                               "label": [float(target)], "boxes": [], "line": line})
        if record["label"][0] != float(target):
            raise SchemaError(f"{where}: field 'Target' is {target} but row {record['line']} of the same patient "
                              f"{patient} says {int(record['label'][0])}")
        if target == "1":
            x, y = _number(row, "x", where), _number(row, "y", where)
            w, h = _number(row, "width", where), _number(row, "height", where)
            if w <= 0 or h <= 0:
                raise SchemaError(f"{where}: fields 'width'/'height' must be positive, got {w} x {h}")
            record["boxes"].append([x, y, x + w, y + h])
    records = []
    for record in patients.values():
        record.pop("line")
        if check_image_exists(root, record, issues):
            records.append(record)
    return records


def make_splits(records: list[dict]) -> dict[str, list[int]]:
    groups = [r["group"] for r in records]
    splits = split_groups(groups, {"train": 0.7, "valid": 0.15, "test": 0.15})
    held_out = int(round(len(records) * DETECTION_HELD_OUT / FULL_SIZE))
    # A different seed than the classification split: detection is its own protocol.
    detection = split_counts(groups, {"det_valid": held_out, "det_test": held_out}, rest="det_train",
                             seed="cgns-rsna-detection-v1")
    return {**splits, **detection}
