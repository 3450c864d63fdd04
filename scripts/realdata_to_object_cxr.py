"""Write a COCO box file and its images in the Object-CXR layout, to run real images through train_detect.py.

    python scripts/realdata_to_object_cxr.py --coco lung_boxes_coco.json --images images/ --out /tmp/object_cxr_lungs
    python train_detect.py --dataset object_cxr --data-root /tmp/object_cxr_lungs --image-weights ... --epochs 30

Output: train.csv and dev.csv (image_name, annotation = `0 x1 y1 x2 y2;0 ...`, all categories as one class, as
Object-CXR has), train/ and dev/ with every image re-encoded as a grayscale JPG at its original size (so the boxes
stay in its pixels). Images whose file size differs from the COCO record are skipped (listed). Only images that
have at least one box are written: an image absent from a box file is not known to be empty. Images of one
patient (COCO image metadata 'patientid' when present) stay in one split.
Never write the output inside the repository's data folders: these are other people's images.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
from collections import defaultdict
from pathlib import Path

from PIL import Image


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("COCO boxes -> Object-CXR layout", add_help=True)
    parser.add_argument("--coco", required=True, help="COCO json with images[] and annotations[] (bbox x,y,w,h)")
    parser.add_argument("--images", required=True, help="folder holding the images named by file_name")
    parser.add_argument("--out", required=True, help="output folder (created; must not hold a previous conversion)")
    parser.add_argument("--dev-fraction", type=float, default=0.2, help="share of patients put in dev (the test set)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def annotation_text(boxes: list[list[float]]) -> str:
    """[[x, y, w, h], ...] -> '0 x1 y1 x2 y2;0 ...' (TYPE 0 = rectangle)."""
    return ";".join(f"0 {x:.1f} {y:.1f} {x + w:.1f} {y + h:.1f}" for x, y, w, h in boxes)


def convert(coco_path: Path, image_dir: Path, out: Path, dev_fraction: float = 0.2, seed: int = 0) -> dict:
    coco = json.loads(Path(coco_path).read_text())
    boxes = defaultdict(list)
    for number, ann in enumerate(coco.get("annotations", [])):
        bbox = ann.get("bbox")
        if not bbox or len(bbox) != 4:
            raise ValueError(f"{coco_path}: annotations[{number}]: field 'bbox' must be [x, y, w, h], got {bbox!r}")
        if bbox[2] > 0 and bbox[3] > 0:
            boxes[ann["image_id"]].append([float(v) for v in bbox])
    images = [img for img in coco.get("images", []) if img["id"] in boxes]
    if not images:
        raise ValueError(f"{coco_path}: no image has a box")
    patient = {img["id"]: str((img.get("metadata") or {}).get("patientid", img["id"])) for img in images}
    patients = sorted(set(patient.values()))
    random.Random(seed).shuffle(patients)
    dev_patients = set(patients[:max(1, round(dev_fraction * len(patients)))])
    if (out / "train.csv").exists() or (out / "dev.csv").exists():
        raise FileExistsError(f"{out}: already holds train.csv / dev.csv; choose an empty folder")
    rows, skipped = {"train": [], "dev": []}, []
    for img in images:
        split = "dev" if patient[img["id"]] in dev_patients else "train"
        source = Path(image_dir) / img["file_name"]
        if not source.is_file():
            raise FileNotFoundError(f"{coco_path}: image {img['file_name']!r} (id {img['id']}) not found in "
                                    f"{image_dir}")
        name = Path(img["file_name"]).stem + ".jpg"
        (out / split).mkdir(parents=True, exist_ok=True)
        with Image.open(source) as opened:
            recorded = (img.get("width", opened.width), img.get("height", opened.height))
            if opened.size != recorded:
                # the boxes were drawn on another version of the file (resized or cropped: unknowable) -> leave out
                skipped.append(f"{img['file_name']} (file {opened.size[0]}x{opened.size[1]}, "
                               f"boxes drawn on {recorded[0]}x{recorded[1]})")
                continue
            opened.convert("L").save(out / split / name, quality=95)
        rows[split].append({"image_name": name, "annotation": annotation_text(boxes[img["id"]])})
    for split, table in rows.items():
        with open(out / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image_name", "annotation"])
            writer.writeheader()
            writer.writerows(table)
    return {**{split: len(table) for split, table in rows.items()}, "skipped": skipped}


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    counts = convert(Path(args.coco), Path(args.images), Path(args.out), args.dev_fraction, args.seed)
    print(f"wrote {args.out}: {counts['train']} train and {counts['dev']} dev images")
    for reason in counts["skipped"]:
        print(f"  skipped {reason}")
    return counts


if __name__ == "__main__":
    main()
