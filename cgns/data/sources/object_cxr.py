"""Object-CXR (foreign objects) -> images with [x1, y1, x2, y2] boxes.

Layout: train.csv, dev.csv (columns image_name, annotation), images in train/ and dev/. An annotation is
`TYPE x1 y1 x2 y2;TYPE ...` with TYPE 0 = rectangle, 1 = ellipse (given by its bounding box) and
2 = polygon (`2 x1 y1 x2 y2 ... xn yn`); blank = no object. A polygon's box is its extent (min/max of its
vertices), the tightest box that holds it. Validation = 10% of train (by image), test = dev.
"""
from __future__ import annotations

from pathlib import Path

from cgns.data.sources import Issues, SchemaError, check_image_exists, read_table
from cgns.data.splits import hold_out_validation

TASKS = ("detection",)
TABLES = {"train": "train.csv", "dev": "dev.csv"}


def table_files(root: Path) -> list[Path]:
    return [root / name for name in TABLES.values()]


def parse_annotation(text: str, where: str) -> list[list[float]]:
    """'0 10 20 30 40;2 5 5 9 5 7 9' -> [[10, 20, 30, 40], [5, 5, 9, 9]]; SchemaError naming `where` if malformed."""
    boxes = []
    for number, part in enumerate(text.split(";"), start=1):
        fields = part.split()
        if not fields:
            continue  # blank annotation or a trailing ';'
        try:
            kind = int(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise SchemaError(f"{where}: field 'annotation', object {number}: non-numeric value in {part.strip()!r}"
                              ) from None
        if kind in (0, 1):
            if len(values) != 4:
                raise SchemaError(f"{where}: field 'annotation', object {number}: TYPE {kind} needs 4 coordinates "
                                  f"x1 y1 x2 y2, got {len(values)}")
            x1, y1, x2, y2 = values
            box = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
        elif kind == 2:
            if len(values) < 6 or len(values) % 2:
                raise SchemaError(f"{where}: field 'annotation', object {number}: a polygon needs an even number "
                                  f">= 6 of coordinates, got {len(values)}")
            xs, ys = values[0::2], values[1::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        else:
            raise SchemaError(f"{where}: field 'annotation', object {number}: unknown TYPE {fields[0]!r} "
                              f"(expected 0 rectangle, 1 ellipse, 2 polygon)")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise SchemaError(f"{where}: field 'annotation', object {number}: empty box {box}")
        boxes.append(box)
    return boxes


def read_records(root: Path, issues: Issues) -> list[dict]:
    records = []
    for official, name in TABLES.items():
        path = root / name
        for line, row in read_table(path, ("image_name", "annotation")):
            where = f"{path}: row {line}"
            image_name = row["image_name"].strip()
            if not image_name:
                raise SchemaError(f"{where}: field 'image_name' is empty")
            record = {"id": f"{official}/{image_name}", "path": f"{official}/{image_name}",
                      "group": f"{official}/{image_name}", "official": official,
                      "boxes": parse_annotation(row["annotation"], where)}
            if check_image_exists(root, record, issues):
                records.append(record)
    return records


def make_splits(records: list[dict]) -> dict[str, list[int]]:
    return hold_out_validation(records, 0.1, "dev")
