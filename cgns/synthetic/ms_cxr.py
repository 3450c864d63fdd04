"""MS-CXR's local-alignment CSV for a generated MIMIC-CXR world, from its ground truth.

One row per (frontal image, sentence that names a located finding) of the validation and test studies, in the
columns MS-CXR publishes: dicom_id, category_name, label_text (the sentence), path (the JPG under the MIMIC-CXR
root), x, y, w, h (the finding's box, original pixels), image_width, image_height. Kinds without an MS-CXR
category (nodules, devices) are left out.

    python -m cgns.synthetic.ms_cxr data/demo/mimic_cxr --out /tmp/ms_cxr.csv   # an existing world, no rendering
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cgns.synthetic.files import write_csv

FILE_NAME = "MS_CXR_Local_Alignment_v1.0.0.csv"
COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")
SPLITS = ("validate", "test")
CATEGORIES = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "consolidation": "Consolidation",
              "edema": "Edema", "covid": "Lung Opacity", "effusion": "Pleural Effusion",
              "pneumothorax": "Pneumothorax"}


def category_of(kind: str, text: str) -> str | None:
    """MS-CXR's category of a sentence about finding `kind` (a consolidation called pneumonia is Pneumonia)."""
    if kind == "consolidation" and "pneumonia" in text.split():
        return "Pneumonia"
    return CATEGORIES.get(kind)


def ms_cxr_rows(images: dict) -> list[list]:
    """The CSV rows from a MIMIC-CXR ground-truth "images" table (cgns.synthetic's ground_truth.json)."""
    rows = []
    for dicom_id in sorted(images):
        image = images[dicom_id]
        if image["split"] not in SPLITS or image["view"] == "LATERAL":
            continue
        seen = set()
        for sentence in image["sentences"]:
            category = category_of(sentence["kind"] or "", sentence["text"])
            region = sentence["region"]
            if sentence["negated"] or region is None or category is None or sentence["text"] in seen:
                continue
            seen.add(sentence["text"])
            x1, y1, x2, y2 = region
            rows.append([dicom_id, category, sentence["text"], image["file"], x1, y1, x2 - x1, y2 - y1,
                         image["width"], image["height"]])
    return rows


def write_ms_cxr(mimic_root: str | Path, out: str | Path | None = None, truth: dict | None = None) -> Path:
    """Write the CSV (default <mimic_root>/MS_CXR_Local_Alignment_v1.0.0.csv) from the world's ground truth
    (`truth`, or <mimic_root>/ground_truth.json). Returns its path."""
    mimic_root = Path(mimic_root)
    if truth is None:
        path = mimic_root / "ground_truth.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (only a generated MIMIC-CXR world has a ground truth)")
        truth = json.loads(path.read_text())
    if "images" not in truth:
        raise ValueError(f"{mimic_root}: the ground truth has no 'images' table")
    out = Path(out) if out is not None else mimic_root / FILE_NAME
    write_csv(out, list(COLUMNS), ms_cxr_rows(truth["images"]))
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser("python -m cgns.synthetic.ms_cxr", description=__doc__.split("\n")[0])
    parser.add_argument("mimic_root", help="a generated MIMIC-CXR folder (with ground_truth.json)")
    parser.add_argument("--out", default=None, help=f"output CSV (default: <mimic_root>/{FILE_NAME})")
    out = write_ms_cxr(**vars(parser.parse_args(argv)))
    print(out)
    return out


if __name__ == "__main__":
    main()
