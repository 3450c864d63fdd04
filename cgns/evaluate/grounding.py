"""Phrase grounding on MS-CXR (or the generated world's copy of its table): each row's phrase against its image's
similarity map, scored inside against outside its box (CNR) and by mIoU over thresholds (cgns.eval.grounding).

The table is MS-CXR's local-alignment CSV, columns as its authors publish them: dicom_id, category_name,
label_text, path (the JPG under the MIMIC-CXR-JPG root), x, y, w, h (box, original pixels), image_width,
image_height. Boxes are moved into the model input through the pretraining eval transform: resize the long side
to the cache size and zero-pad to a square, resize to image_size / (7/8), centre-crop image_size.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch

from cgns.data.sources import SchemaError, read_table
from cgns.data.transforms import placement_for
from cgns.eval.grounding import box_mask, cnr, mean_iou, upsample_map
from cgns.evaluate.images import open_grey
from cgns.viz.truth import box_in_model_input

COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")
FILE_NAMES = ("MS_CXR_Local_Alignment_v1.1.0.csv", "MS_CXR_Local_Alignment_v1.0.0.csv")


def read_ms_cxr(path: Path) -> list[dict]:
    """Rows with numbers parsed; SchemaError naming file, row and field for a missing column or a bad value."""
    rows = []
    for line, row in read_table(path, COLUMNS):
        where = f"{path}: row {line}"
        entry = {key: row[key].strip() for key in ("dicom_id", "category_name", "label_text", "path")}
        for key in ("x", "y", "w", "h", "image_width", "image_height"):
            try:
                entry[key] = float(row[key])
            except ValueError:
                raise SchemaError(f"{where}: field {key!r} is not a number ({row[key]!r})") from None
        if entry["w"] <= 0 or entry["h"] <= 0 or entry["image_width"] <= 0 or entry["image_height"] <= 0:
            raise SchemaError(f"{where}: fields 'w', 'h', 'image_width', 'image_height' must be positive")
        if not entry["label_text"]:
            raise SchemaError(f"{where}: field 'label_text' is empty")
        rows.append(entry)
    if not rows:
        raise SchemaError(f"{path}: no rows")
    return rows


def find_ms_cxr(root: Path, output_dir: Path, log=print) -> Path:
    """The table under the MIMIC-CXR root; for a generated world without one, written from its ground truth into
    output_dir. FileNotFoundError naming what was looked for otherwise."""
    for name in FILE_NAMES:
        if (root / name).is_file():
            return root / name
    if (root / "ground_truth.json").is_file():
        from cgns.synthetic.ms_cxr import write_ms_cxr

        path = write_ms_cxr(root, output_dir / FILE_NAMES[1])
        log(f"{root}: a generated world without the MS-CXR table; written from its ground truth to {path}")
        return path
    raise FileNotFoundError(f"{root}: none of {', '.join(FILE_NAMES)} found; pass --csv (MS-CXR from PhysioNet, "
                            f"the paths in it relative to this MIMIC-CXR-JPG root)")


def box_in_input(row: dict, cache_size: int, image_size: int) -> tuple[tuple, tuple]:
    """(phrase box, image area) as (x1, y1, x2, y2) in model-input pixels."""
    placement, _ = placement_for(int(row["image_height"]), int(row["image_width"]), cache_size)
    record = {"scale": placement.scale, "top": placement.top, "left": placement.left}
    box = (row["x"], row["y"], row["x"] + row["w"], row["y"] + row["h"])
    area = (0.0, 0.0, row["image_width"], row["image_height"])
    return (box_in_model_input(box, record, cache_size, image_size),
            box_in_model_input(area, record, cache_size, image_size))


def score_map(similarity: torch.Tensor, box, area, image_size: int) -> dict:
    """CNR and mIoU of one [gh, gw] map against a box, within the image area (model-input pixels)."""
    values = upsample_map(similarity, image_size)
    inside, valid = box_mask(box, image_size), box_mask(area, image_size)
    return {"cnr": cnr(values, inside, valid), "miou": mean_iou(values, inside, valid)}


def _mean(values: list[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def evaluate_grounding(model, root: Path, output_dir: Path, *, csv_path: Path | None = None, cache_size: int = 256,
                       batch_size: int = 32, log=print) -> dict:
    """{"test": {"cnr", "miou", "n", "per_category": {name: {"cnr", "miou", "n"}}}, "csv": path}."""
    csv_path = csv_path or find_ms_cxr(root, output_dir, log)
    rows = read_ms_cxr(csv_path)
    image_size = int(model.image_size)
    scores = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = []
        for row in chunk:
            image = open_grey(root / row["path"])
            if (image.height, image.width) != (int(row["image_height"]), int(row["image_width"])):
                raise SchemaError(f"{csv_path}: dicom_id {row['dicom_id']}: the table says {int(row['image_width'])}"
                                  f" x {int(row['image_height'])} px, {root / row['path']} is {image.width} x "
                                  f"{image.height}")
            images.append(image)
        maps = model.similarity_maps(images, [row["label_text"] for row in chunk])  # [B, gh, gw]
        for row, similarity in zip(chunk, maps):
            box, area = box_in_input(row, cache_size, image_size)
            scores.append((row["category_name"], score_map(similarity, box, area, image_size)))
    by_category = defaultdict(list)
    for category, score in scores:
        by_category[category].append(score)
    per_category = {name: {"cnr": _mean([s["cnr"] for s in items]), "miou": _mean([s["miou"] for s in items]),
                           "n": len(items)} for name, items in sorted(by_category.items())}
    result = {"test": {"cnr": _mean([s["cnr"] for _, s in scores]), "miou": _mean([s["miou"] for _, s in scores]),
                       "n": len(scores), "per_category": per_category}, "csv": str(csv_path)}
    log(f"phrase grounding ({len(scores)} phrases, {csv_path.name}): CNR {result['test']['cnr']:.3f} mIoU "
        f"{result['test']['miou']:.3f}; " + ", ".join(f"{n} {v['cnr']:.2f}" for n, v in per_category.items()
                                                          if v["cnr"] is not None))
    return result
