"""MIMIC-CXR-JPG 2.0.0 + MIMIC-CXR reports -> image/report pairs for pretraining.

Layout: files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg, mimic-cxr-2.0.0-{metadata,split}.csv(.gz), reports under
<reports_root>/files/pXX/pSUBJECT/sSTUDY.txt (default <root>/reports, or <root> when the reports were unzipped
into the image tree). PA and AP views only, one record per image,
the official split (train / validate / test -> train / valid / test). Report text = IMPRESSION + FINDINGS (last
paragraph fallback), split into sentences and filtered as in METHOD.md; a study whose report is missing or empty
after parsing is dropped and counted.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from cgns.data.reports import report_sentences
from cgns.data.sources import Issues, SchemaError, find_table, read_table

TASKS = ("pretrain",)
VIEWS = ("PA", "AP")
_DICOM_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]*")
_NUMBER = re.compile(r"[0-9]+")
OFFICIAL_SPLITS = {"train": "train", "validate": "valid", "test": "test"}
METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"


class Records(list):
    """The records plus `notes`: how many studies were kept and dropped, and why."""
    notes: dict


def table_files(root: Path, reports_root: str | None = None) -> list[Path]:
    return [find_table(root, METADATA), find_table(root, SPLIT)]


def study_folder(subject_id: str, study_id: str) -> str:
    """files/pXX/pSUBJECT/sSTUDY: pXX is 'p' + the first two digits of the subject id."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}"


def default_reports_root(root: Path) -> Path:
    """<root>/reports when it exists; otherwise <root> itself (reports unzipped into the same files/ tree)."""
    return root / "reports" if (root / "reports").is_dir() else root


def read_records(root: Path, issues: Issues, reports_root: str | None = None) -> Records:
    reports_root = Path(reports_root) if reports_root is not None else default_reports_root(root)
    metadata_path, split_path = table_files(root)
    metadata = read_table(metadata_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    split_of = {}
    for line, row in read_table(split_path, ("dicom_id", "split")):
        value = row["split"].strip()
        if value not in OFFICIAL_SPLITS:
            raise SchemaError(f"{split_path}: row {line}: field 'split' has unknown value {value!r} "
                              f"(expected one of {', '.join(OFFICIAL_SPLITS)})")
        split_of[row["dicom_id"].strip()] = OFFICIAL_SPLITS[value]

    studies: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    other_view_studies = set()
    for line, row in metadata:
        for field, pattern in (("dicom_id", _DICOM_ID), ("subject_id", _NUMBER), ("study_id", _NUMBER)):
            if not pattern.fullmatch(row[field].strip()):
                raise SchemaError(f"{metadata_path}: row {line}: field {field!r} is empty or malformed "
                                  f"({row[field]!r})")
        key = (row["subject_id"].strip(), row["study_id"].strip())
        if row["ViewPosition"].strip() in VIEWS:
            studies.setdefault(key, []).append((line, row))
        else:
            other_view_studies.add(key)

    records, dropped = Records(), Counter()
    for (subject_id, study_id), rows in studies.items():
        report_path = reports_root / f"{study_folder(subject_id, study_id)}.txt"
        if not report_path.is_file():
            issues.skip("missing report", f"{report_path}: report not found for study {study_id}")
            dropped["report file missing"] += 1
            continue
        sentences = report_sentences(report_path.read_text(encoding="utf-8", errors="replace"))
        if not sentences:
            issues.skip("empty report after parsing",
                        f"{report_path}: fewer than 3 word tokens in IMPRESSION + FINDINGS (or last paragraph)")
            dropped["report empty after parsing"] += 1
            continue
        kept_images = 0
        for line, row in rows:
            dicom_id = row["dicom_id"].strip()
            if dicom_id not in split_of:
                raise SchemaError(f"{split_path}: no row for dicom_id {dicom_id!r} "
                                  f"(listed in {metadata_path.name} row {line})")
            records.append({"id": dicom_id, "path": f"{study_folder(subject_id, study_id)}/{dicom_id}.jpg",
                            "group": subject_id, "study": study_id, "split": split_of[dicom_id],
                            "view": row["ViewPosition"].strip(), "sentences": sentences})
            kept_images += 1
    only_other = len(other_view_studies - set(studies))
    records.notes = {
        "studies with a PA/AP image": len(studies),
        "studies dropped": dict(dropped) | {"no PA/AP image (lateral only)": only_other},
    }
    return records


def notes_after_cache(notes: dict, records: list[dict]) -> dict:
    """Add the studies that survived the image checks (a study whose every image is unreadable is dropped)."""
    kept = {r["study"] for r in records}
    before = notes["studies with a PA/AP image"] - sum(v for k, v in notes["studies dropped"].items()
                                                      if k != "no PA/AP image (lateral only)")
    dropped = dict(notes["studies dropped"])
    if before - len(kept):
        dropped["all images missing or unreadable"] = before - len(kept)
    return {**notes, "studies dropped": dropped, "studies kept": len(kept)}


def make_splits(records: list[dict]) -> dict[str, list[int]]:
    splits: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    for index, record in enumerate(records):
        splits[record["split"]].append(index)
    return splits
