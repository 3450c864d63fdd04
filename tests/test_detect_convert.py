"""scripts/realdata_to_object_cxr.py: a COCO box file becomes the Object-CXR layout that the loaders read back."""
import csv
import importlib.util
import json
from pathlib import Path

from PIL import Image

from cgns.data.sources.object_cxr import parse_annotation

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "realdata_to_object_cxr.py"


def load_script():
    spec = importlib.util.spec_from_file_location("realdata_to_object_cxr", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coco_boxes_round_trip_through_the_object_cxr_reader(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    records, annotations = [], []
    for i in range(6):
        name = f"case{i}.png"
        Image.new("RGBA" if i % 2 else "L", (40 + i, 30)).save(images / name)
        # image 5 says 99x99 but the file is 45x30: its boxes were drawn on another version -> skipped
        size = (99, 99) if i == 5 else (40 + i, 30)
        records.append(dict(id=i, file_name=name, width=size[0], height=size[1], metadata=dict(patientid=str(i // 2))))
        annotations.append(dict(id=2 * i, image_id=i, category_id=1, bbox=[1 + i, 2, 10, 5.5]))
        annotations.append(dict(id=2 * i + 1, image_id=i, category_id=2, bbox=[20, 3, 4, 20]))
    records.append(dict(id=9, file_name="unboxed.png", width=5, height=5))     # no box: not written at all
    coco = tmp_path / "boxes.json"
    coco.write_text(json.dumps(dict(images=records, annotations=annotations)))
    out = tmp_path / "object_cxr"
    counts = load_script().convert(coco, images, out, dev_fraction=0.34, seed=0)
    assert counts["train"] + counts["dev"] == 5 and counts["dev"] >= 1 and len(counts["skipped"]) == 1
    seen = {}
    for split in ("train", "dev"):
        with open(out / f"{split}.csv", newline="") as f:
            for row in csv.DictReader(f):
                assert Image.open(out / split / row["image_name"]).mode == "L"
                seen[row["image_name"]] = (split, parse_annotation(row["annotation"], row["image_name"]))
    for i in range(5):
        split, boxes = seen[f"case{i}.jpg"]
        assert boxes == [[1.0 + i, 2.0, 11.0 + i, 7.5], [20.0, 3.0, 24.0, 23.0]]
        # both images of a patient land in the same split
        assert split == seen[f"case{i - i % 2}.jpg"][0]
