"""SIIM-ACR Pneumothorax (stage 1) -> DICOM images with pneumothorax masks decoded from run-length strings.

Layout: train-rle.csv (header 'ImageId, EncodedPixels' -- note the space; negatives hold ' -1'; several rows of
one image are several masks, unioned) and dicom-images-train/**/<ImageId>.dcm. Split by ImageId 70/15/15; the
training split keeps every positive plus as many negatives (chosen in seeded order), valid/test stay whole.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cgns.data.rle import RLEError, is_negative, rle_decode_union
from cgns.data.sources import Issues, SchemaError, read_table
from cgns.data.splits import seeded_order, split_groups, SPLIT_SEED

TASKS = ("segmentation",)
LABELS = "train-rle.csv"
IMAGES = "dicom-images-train"


def table_files(root: Path) -> list[Path]:
    return [root / LABELS]


def check_rle(rle: str, where: str) -> None:
    """Syntax of one EncodedPixels value (pairs of non-negative integers, or -1); SchemaError naming `where`."""
    if is_negative(rle):
        return
    fields = rle.split()
    if len(fields) % 2 or not all(f.isdigit() for f in fields):
        raise SchemaError(f"{where}: field 'EncodedPixels' is not a run-length string of (offset, length) integer "
                          f"pairs: {rle[:40]!r}")


def read_records(root: Path, issues: Issues) -> list[dict]:
    path = root / LABELS
    images: dict[str, dict] = {}
    for line, row in read_table(path, ("ImageId", "EncodedPixels")):
        where = f"{path}: row {line}"
        image_id = row["ImageId"].strip()
        if not image_id:
            raise SchemaError(f"{where}: field 'ImageId' is empty")
        rle = row["EncodedPixels"].strip()
        check_rle(rle, where)
        record = images.setdefault(image_id, {"id": image_id, "group": image_id, "rles": [], "lines": []})
        if not is_negative(rle):
            record["rles"].append(rle)
            record["lines"].append(line)
    files = {p.stem: p for p in (root / IMAGES).rglob("*.dcm")}
    records = []
    for image_id, record in images.items():
        if image_id not in files:
            issues.skip("missing image", f"{root / IMAGES}/**/{image_id}.dcm: DICOM not found (row of {path.name})")
            continue
        record["path"] = str(files[image_id].relative_to(root))
        record["label"] = [1.0 if record["rles"] else 0.0]
        records.append(record)
    return records


def mask(record: dict, height: int, width: int) -> np.ndarray:
    """Union of the record's RLE rows -> uint8 [height, width]; a run past the image is a schema fault."""
    lines = ", ".join(str(n) for n in record["lines"])
    try:
        return rle_decode_union(record["rles"], height, width,
                                where=f"{LABELS}: row(s) {lines} (ImageId {record['id']}), field 'EncodedPixels'")
    except RLEError as error:
        raise SchemaError(str(error)) from None


def make_splits(records: list[dict]) -> dict[str, list[int]]:
    splits = split_groups([r["id"] for r in records], {"train": 0.7, "valid": 0.15, "test": 0.15})
    positives = [i for i in splits["train"] if records[i]["label"][0] > 0]
    negatives = {records[i]["id"]: i for i in splits["train"] if records[i]["label"][0] == 0}
    chosen = [negatives[k] for k in seeded_order(list(negatives), SPLIT_SEED)[:len(positives)]]
    return {"train": sorted(positives + chosen), "valid": splits["valid"], "test": splits["test"]}
