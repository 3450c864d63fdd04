"""CheXpert v1.0 -> frontal images with the five competition labels.

Layout: <root>/CheXpert-v1.0/{train.csv, valid.csv, train/, valid/}; CSV paths start with 'CheXpert-v1.0/'
(the downsampled CheXpert-v1.0-small/ release is read the same way).
Labels: blank -> 0; uncertain (-1) -> 1 for Atelectasis, Edema, Pleural Effusion ("U-ones") and -> 0 for
Cardiomegaly, Consolidation ("U-zeros"). Test = the official valid.csv; validation = min(5,000, 10% of train)
images held out from train by patient, so validation and training share no patient.
"""
from __future__ import annotations

from pathlib import Path

from cgns.data.sources import Issues, SchemaError, check_image_exists, read_table
from cgns.data.splits import seeded_order, SPLIT_SEED

TASKS = ("classification",)
CLASS_NAMES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
UNCERTAIN_AS = {"Atelectasis": 1.0, "Cardiomegaly": 0.0, "Consolidation": 0.0, "Edema": 1.0, "Pleural Effusion": 1.0}
FOLDERS = ("CheXpert-v1.0", "CheXpert-v1.0-small")  # the full release and the popular downsampled copy
VALID_SIZE = 5000
LABEL_VALUES = {"": 0.0, "0": 0.0, "0.0": 0.0, "1": 1.0, "1.0": 1.0, "-1": None, "-1.0": None}


def _layout(root: Path) -> tuple[Path, str]:
    """(folder holding CheXpert-v1.0[-small]/, that folder's name); --data-root may also point at it directly."""
    for folder in FOLDERS:
        if (root / folder).is_dir():
            return root, folder
    if root.name in FOLDERS and (root / "train.csv").is_file():
        return root.parent, root.name
    return root, FOLDERS[0]


def table_files(root: Path) -> list[Path]:
    base, folder = _layout(root)
    return [base / folder / "train.csv", base / folder / "valid.csv"]


def patient_of(path: str) -> str:
    """'CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg' -> 'patient00001'."""
    parts = Path(path).parts
    return next((p for p in parts if p.startswith("patient")), parts[-3] if len(parts) >= 3 else path)


def parse_label(value: str, name: str, where: str) -> float:
    """One CheXpert cell -> 0/1 under the uncertainty policy; SchemaError naming `where` when unknown."""
    key = value.strip()
    if key not in LABEL_VALUES:
        raise SchemaError(f"{where}: field {name!r} has unknown label value {value!r} (expected 1, 0, -1 or blank)")
    mapped = LABEL_VALUES[key]
    return UNCERTAIN_AS[name] if mapped is None else mapped


def read_records(root: Path, issues: Issues) -> list[dict]:
    base, _ = _layout(root)
    records = []
    for official, csv_path in zip(("train", "test"), table_files(root)):
        for line, row in read_table(csv_path, ("Path", "Frontal/Lateral", *CLASS_NAMES)):
            where = f"{csv_path}: row {line}"
            view = row["Frontal/Lateral"].strip()
            if view not in ("Frontal", "Lateral"):
                raise SchemaError(f"{where}: field 'Frontal/Lateral' has unknown value {view!r}")
            label = [parse_label(row[name], name, where) for name in CLASS_NAMES]  # checked on every row
            if view != "Frontal":
                continue
            path = row["Path"].strip()
            if not path:
                raise SchemaError(f"{where}: field 'Path' is empty")
            # CSV paths are relative to the folder holding CheXpert-v1.0/, record paths to the data root.
            record = {"id": path, "path": path if base == root else str(Path("..") / path),
                      "group": patient_of(path), "official": official, "label": label}
            if check_image_exists(root, record, issues):
                records.append(record)
    return records


def make_splits(records: list[dict]) -> dict[str, list[int]]:
    train_rows = [i for i, r in enumerate(records) if r["official"] == "train"]
    test_rows = [i for i, r in enumerate(records) if r["official"] == "test"]
    target = min(VALID_SIZE, int(round(0.1 * len(train_rows))))
    by_patient: dict[str, list[int]] = {}
    for i in train_rows:
        by_patient.setdefault(records[i]["group"], []).append(i)
    valid: list[int] = []
    # Whole patients are moved to validation in seeded order until it holds `target` images.
    for patient in seeded_order(list(by_patient), SPLIT_SEED):
        if len(valid) >= target:
            break
        valid.extend(by_patient[patient])
    valid_set = set(valid)
    return {"train": [i for i in train_rows if i not in valid_set], "valid": sorted(valid), "test": test_rows}
