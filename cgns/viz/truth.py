"""The generator's truth for MIMIC-CXR sentences, aligned with the dataset's sentences and moved into the pixels
of the model input.

ground_truth.json (written by cgns.synthetic beside a generated data set) holds, per dicom_id, the report's
expected sentences with the finding each names and that finding's region box in ORIGINAL image pixels. Real data
has no such file; then there is nothing to measure.
"""
from __future__ import annotations

import json
from pathlib import Path

from cgns.data.transforms import CROP_FRACTION

# generator kinds of normal statements ("the lungs are clear", "no acute osseous abnormality", ...)
NORMAL_KINDS = ("clear", "normal", "bones")


def load_truth(data_root: str | Path | None) -> dict | None:
    """{dicom_id: image truth} from <data_root>/ground_truth.json, or None when the data is not generated."""
    if data_root is None:
        return None
    path = Path(data_root) / "ground_truth.json"
    if not path.is_file():
        return None
    truth = json.loads(path.read_text())
    if "images" not in truth:
        raise ValueError(f"{path}: no 'images' table (not a MIMIC-CXR ground truth of cgns.synthetic)")
    return truth["images"]


def box_in_model_input(box, record: dict, cache_size: int, image_size: int) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) in original image pixels -> pixels of the validation model input.

    The validation pipeline (cgns.data.transforms): resize the long side to cache_size and zero-pad to a square
    (record's scale / top / left), resize that square to image_size / (7/8), then centre-crop image_size.
    """
    base = int(round(image_size / CROP_FRACTION))
    factor = base / cache_size
    offset = (base - image_size) // 2
    x1, y1, x2, y2 = (float(v) for v in box)
    left, top, scale = float(record["left"]), float(record["top"]), float(record["scale"])
    return ((x1 * scale + left) * factor - offset, (y1 * scale + top) * factor - offset,
            (x2 * scale + left) * factor - offset, (y2 * scale + top) * factor - offset)


def match_sentences(record: dict, truth: dict) -> list[dict | None]:
    """The generator's entry for each sentence of the dataset record (None when unmatched).

    Sentences are matched by their normalised text, in order, so repeated sentences pair up one to one.
    """
    image_truth = truth.get(record["id"])
    if image_truth is None:
        return [None] * len(record["sentences"])
    unused = list(image_truth.get("sentences", []))
    matches = []
    for sentence in record["sentences"]:
        match = next((s for s in unused if s["text"].lower() == sentence.lower()), None)
        if match is not None:
            unused.remove(match)
        matches.append(match)
    return matches


def sentence_label(match: dict | None) -> str:
    """A short name for what a sentence says: 'effusion', 'no pneumothorax', 'normal', or '?' when unmatched."""
    if match is None:
        return "?"
    kind = match.get("kind")
    if kind is None or kind in NORMAL_KINDS:
        return "normal"
    return f"no {kind}" if match.get("negated") else kind


def sentence_regions(record: dict, truth: dict, cache_size: int, image_size: int) -> list[tuple]:
    """For each sentence of the dataset record: (box in model-input pixels, finding kind), or (None, None) when
    the sentence names no located finding (normal statements, negations, lateral views, unmatched text)."""
    regions = []
    for match in match_sentences(record, truth):
        if match is None or match.get("region") is None or match.get("negated"):
            regions.append((None, None))
        else:
            regions.append((box_in_model_input(match["region"], record, cache_size, image_size), match.get("kind")))
    return regions
