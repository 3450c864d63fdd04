"""The 5xN evaluation sets: images (CheXpert) or studies (MIMIC-CXR) positive for exactly one of the five
competition labels, N per class, drawn with a fixed seed; written once as a CSV and read back on later runs.

A user's file (PRIOR's or MedCLIP's CheXpert 5x200) is read the same way: a path column ('Path', 'path' or
'imgpath') and either a 'label' column (the class name) or the five label columns one-hot.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cgns.data.sources import SchemaError, find_table, read_table
from cgns.data.sources.chexpert import CLASS_NAMES, FOLDERS, table_files as chexpert_tables

DEFAULT_N = 200
SELECTION_SEED = 0
PATH_COLUMNS = ("Path", "path", "imgpath")
POSITIVE = ("1", "1.0")
NEGATIVE = ("", "0", "0.0")
MIMIC_LABELS = "mimic-cxr-2.0.0-chexpert.csv"


def single_positive(row: dict, where: str) -> int | None:
    """Index into CLASS_NAMES of the one competition label that is positive (1) while the other four are negative
    or blank; None for any other row (none or several positive, or an uncertain -1 among the others)."""
    positive = []
    for c, name in enumerate(CLASS_NAMES):
        value = row[name].strip()
        if value in POSITIVE:
            positive.append(c)
        elif value not in NEGATIVE and value not in ("-1", "-1.0"):
            raise SchemaError(f"{where}: field {name!r} has unknown label value {value!r} (expected 1, 0, -1 or "
                              f"blank)")
    if len(positive) != 1:
        return None
    others = [row[n].strip() for c, n in enumerate(CLASS_NAMES) if c != positive[0]]
    return positive[0] if all(v in NEGATIVE for v in others) else None


def draw_balanced(candidates: list[tuple[str, int]], n: int | None, seed: int = SELECTION_SEED,
                  log=print) -> list[tuple[str, int]]:
    """n items per class from (key, class index) candidates, each class shuffled by its own seeded generator.
    n None: DEFAULT_N, or the largest n every class can give when a class has fewer (printed through `log`)."""
    by_class = {c: sorted(k for k, label in candidates if label == c) for c in range(len(CLASS_NAMES))}
    available = min(len(keys) for keys in by_class.values())
    if available == 0:
        empty = [CLASS_NAMES[c] for c, keys in by_class.items() if not keys]
        raise ValueError(f"no candidate positive for exactly one label for class(es) {empty}")
    wanted = DEFAULT_N if n is None else int(n)
    if wanted > available:
        if n is not None:
            raise ValueError(f"{wanted} per class asked, but the smallest class has {available} candidates "
                             f"({', '.join(f'{CLASS_NAMES[c]} {len(k)}' for c, k in by_class.items())})")
        log(f"5x{DEFAULT_N}: the data has at most {available} per class "
            f"({', '.join(f'{CLASS_NAMES[c]} {len(k)}' for c, k in by_class.items())}); using 5x{available}")
        wanted = available
    chosen = []
    for c, keys in by_class.items():
        order = np.random.default_rng([seed, c]).permutation(len(keys))
        chosen.extend((keys[i], c) for i in sorted(order[:wanted]))
    return chosen


def write_selection(path: Path, items: list[tuple[str, int]], key: str) -> None:
    """CSV with columns `key`, label (class name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([key, "label"])
        writer.writerows([k, CLASS_NAMES[c]] for k, c in items)
    tmp.replace(path)


def read_selection(path: Path, keys=PATH_COLUMNS) -> list[tuple[str, int]]:
    """[(key, class index)] from a selection CSV (ours or a user's); SchemaError naming file, row and field."""
    if not path.is_file():
        raise SchemaError(f"{path}: split file not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = [h.strip() for h in next(csv.reader(handle), [])]
    key = next((k for k in keys if k in header), None)
    if key is None:
        raise SchemaError(f"{path}: missing column: one of {', '.join(repr(k) for k in keys)} "
                          f"(header has {', '.join(repr(h) for h in header)})")
    one_hot = all(name in header for name in CLASS_NAMES)
    if "label" not in header and not one_hot:
        raise SchemaError(f"{path}: missing column 'label' (a class name) or the five label columns "
                          f"{', '.join(CLASS_NAMES)}")
    items = []
    for line, row in read_table(path, (key,)):
        where = f"{path}: row {line}"
        if "label" in header:
            label = row["label"].strip()
            if label not in CLASS_NAMES:
                raise SchemaError(f"{where}: field 'label' has unknown value {label!r} (expected one of "
                                  f"{', '.join(CLASS_NAMES)})")
            items.append((row[key].strip(), CLASS_NAMES.index(label)))
        else:
            c = single_positive(row, where)
            if c is None:
                raise SchemaError(f"{where}: not positive for exactly one of {', '.join(CLASS_NAMES)}")
            items.append((row[key].strip(), c))
    if not items:
        raise SchemaError(f"{path}: no rows")
    return items


def chexpert_relative(path: str) -> str:
    """A user file's image path -> the CSV form 'CheXpert-v1.0/...' (prefixes such as './data/' dropped)."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part in FOLDERS:
            return str(Path(*parts[i:]))
    return path


def chexpert_5xn(root: Path, split_file: Path, n: int | None = None, seed: int = SELECTION_SEED,
                 log=print) -> list[tuple[str, int]]:
    """[(path relative to the folder holding CheXpert-v1.0/, class index)]: read from split_file when it exists,
    else drawn from the frontal images of train.csv and written there."""
    if split_file.is_file():
        items = [(chexpert_relative(p), c) for p, c in read_selection(split_file)]
        log(f"chexpert 5xN: {len(items)} images read from {split_file}")
        return items
    train_csv = chexpert_tables(root)[0]
    candidates = []
    for line, row in read_table(train_csv, ("Path", "Frontal/Lateral", *CLASS_NAMES)):
        if row["Frontal/Lateral"].strip() != "Frontal":
            continue
        c = single_positive(row, f"{train_csv}: row {line}")
        if c is not None:
            candidates.append((row["Path"].strip(), c))
    items = draw_balanced(candidates, n, seed, log)
    write_selection(split_file, items, "Path")
    log(f"chexpert 5x{len(items) // len(CLASS_NAMES)}: drawn with seed {seed}, written to {split_file}")
    return items


def mimic_study_labels(root: Path) -> dict[str, int]:
    """{study_id: class index} of the studies positive for exactly one label in mimic-cxr-2.0.0-chexpert.csv."""
    path = find_table(root, MIMIC_LABELS)
    out = {}
    for line, row in read_table(path, ("study_id", *CLASS_NAMES)):
        c = single_positive(row, f"{path}: row {line}")
        if c is not None:
            out[row["study_id"].strip()] = c
    return out


def mimic_5xn(records: list[dict], root: Path, split_file: Path, n: int | None = None, split: str = "test",
              seed: int = SELECTION_SEED, log=print) -> list[tuple[dict, int]]:
    """[(record, class index)], one frontal image per study (the first in metadata order) of `split` studies
    positive for exactly one label; the study ids are read from / written to split_file."""
    first = {}
    for record in records:
        if record["split"] == split:
            first.setdefault(record["study"], record)
    if split_file.is_file():
        chosen = read_selection(split_file, ("study_id",))
        missing = [s for s, _ in chosen if s not in first]
        if missing:
            raise SchemaError(f"{split_file}: study_id {missing[0]} is not a {split} study with a PA/AP image and a "
                              f"report ({len(missing)} such rows)")
        log(f"mimic_cxr 5xN: {len(chosen)} studies read from {split_file}")
    else:
        labels = mimic_study_labels(root)
        chosen = draw_balanced([(s, labels[s]) for s in first if s in labels], n, seed, log)
        write_selection(split_file, chosen, "study_id")
        log(f"mimic_cxr 5x{len(chosen) // len(CLASS_NAMES)}: {split} studies drawn with seed {seed}, written to "
            f"{split_file}")
    return [(first[s], c) for s, c in chosen]
