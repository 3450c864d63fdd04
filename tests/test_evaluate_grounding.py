"""MS-CXR's table: the generated world writes it with the published columns and boxes on the findings' regions;
the reader names bad input; the grounding evaluation ranks an oracle map above its mirror image."""
import csv
import json

import pytest
import torch

from cgns.data.sources import SchemaError
from cgns.evaluate.grounding import COLUMNS, box_in_input, evaluate_grounding, find_ms_cxr, read_ms_cxr
from cgns.synthetic.ms_cxr import CATEGORIES, FILE_NAME, write_ms_cxr
from cgns.viz.localisation import patches_in_box

PUBLISHED = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height"]


def test_the_generated_table_has_the_published_columns_and_boxes_on_the_regions(test_world):
    root = test_world / "mimic_cxr"
    table = root / FILE_NAME
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == PUBLISHED and tuple(PUBLISHED) == COLUMNS
    images = json.loads((root / "ground_truth.json").read_text())["images"]
    expected_rows = 0
    for image in images.values():
        if image["split"] in ("validate", "test") and image["view"] != "LATERAL":
            texts = {s["text"] for s in image["sentences"] if not s["negated"] and s["region"] is not None
                     and s["kind"] in CATEGORIES}
            expected_rows += len(texts)
    assert len(rows) == expected_rows > 0
    for row in rows:
        image = images[row["dicom_id"]]
        assert image["split"] in ("validate", "test") and row["path"] == image["file"]
        assert (int(row["image_width"]), int(row["image_height"])) == (image["width"], image["height"])
        box = [int(row["x"]), int(row["y"]), int(row["x"]) + int(row["w"]), int(row["y"]) + int(row["h"])]
        sentence = next(s for s in image["sentences"] if s["text"] == row["label_text"])
        finding = image["findings"][sentence["finding"]]
        assert box == finding["box"] == sentence["region"]          # the box of the finding the phrase names
        assert 0 <= box[0] < box[2] <= image["width"] and 0 <= box[1] < box[3] <= image["height"]
        assert row["category_name"] in (CATEGORIES[finding["kind"]], "Pneumonia")
    # the same rows from the ground truth alone (how a world written before the table gets one)
    again = write_ms_cxr(root, test_world / "again.csv")
    assert again.read_text() == table.read_text()


def test_bad_tables_are_named(tmp_path, test_world):
    good = (test_world / "mimic_cxr" / FILE_NAME).read_text().splitlines()
    bad = tmp_path / "ms.csv"
    bad.write_text(good[0].replace(",label_text", "") + "\n")
    with pytest.raises(SchemaError, match=r"ms.csv: missing column\(s\) 'label_text'"):
        read_ms_cxr(bad)
    fields = good[1].split(",")
    fields[6] = "wide"
    bad.write_text(good[0] + "\n" + ",".join(fields) + "\n")
    with pytest.raises(SchemaError, match="ms.csv: row 2: field 'w' is not a number"):
        read_ms_cxr(bad)
    with pytest.raises(FileNotFoundError, match="MS_CXR_Local_Alignment_v1.1.0.csv, MS_CXR_Local_Alignment_v1.0.0"):
        find_ms_cxr(tmp_path, tmp_path)


class OracleModel:
    """Maps that light up the patches inside each phrase's box (mirrored: the same boxes flipped left-right)."""
    image_size, patch_grid, cache_size = 64, (8, 8), 64

    def __init__(self, rows, mirrored):
        self.boxes = [box_in_input(row, self.cache_size, self.image_size)[0] for row in rows]
        self.mirrored, self.calls = mirrored, 0

    def similarity_maps(self, images, texts):
        maps = []
        for _ in texts:
            inside = patches_in_box(self.patch_grid, self.boxes[self.calls], self.image_size).float()
            maps.append(inside.flip(1) if self.mirrored else inside)
            self.calls += 1
        return torch.stack(maps)


def test_an_oracle_map_grounds_better_than_its_mirror(test_world, tmp_path):
    root = test_world / "mimic_cxr"
    rows = read_ms_cxr(root / FILE_NAME)
    oracle = evaluate_grounding(OracleModel(rows, False), root, tmp_path, csv_path=root / FILE_NAME, cache_size=64,
                                log=lambda *a: None)["test"]
    mirror = evaluate_grounding(OracleModel(rows, True), root, tmp_path, csv_path=root / FILE_NAME, cache_size=64,
                                log=lambda *a: None)["test"]
    assert oracle["n"] == len(rows) == sum(v["n"] for v in oracle["per_category"].values())
    assert oracle["cnr"] > mirror["cnr"] + 0.5
    assert oracle["miou"] > 0.4 > mirror["miou"] + 0.1
