"""The loaders on real public chest X-rays (../shared/realdata, skipped when absent): real files in every PNG/JPEG
mode and size are arranged into official layouts (COVIDx, Object-CXR, SIIM with DICOMs and run-length masks) and
read back through the same code path as the data sets."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cgns.data.cache import Cache, read_image
from cgns.data.datasets import build
from cgns.data.rle import rle_encode
from cgns.data.transforms import mask_resize_pad, resize_pad
from cgns.preprocess import prepare

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="real data folder not present")


def covidx_label(finding: str) -> str | None:
    """The COVIDx-style 3-way label of a covid-chestxray finding (None: neither pneumonia nor normal)."""
    if "COVID-19" in finding:
        return "COVID-19"
    if finding == "No Finding":
        return "normal"
    return None if finding in ("ARDS", "Lipoid") else "pneumonia"


@pytest.fixture(scope="module")
def covidx_root(tmp_path_factory):
    """A COVIDx layout (lists + train/ test/) of the real covid-chestxray images, linked not copied."""
    root = tmp_path_factory.mktemp("real") / "covidx"
    images = REAL / "covid_chestxray" / "images"
    with open(REAL / "covid_chestxray" / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if (images / r["filename"]).is_file() and r["view"] != "L"
                and covidx_label(r["finding"])]
    rows = list({r["filename"]: r for r in reversed(rows)}.values())  # a few files are listed twice
    lines = {"train": [], "test": []}
    for row in rows:
        split = "test" if sum(map(ord, row["patientid"])) % 4 == 0 else "train"
        (root / split).mkdir(parents=True, exist_ok=True)
        os.symlink(images / row["filename"], root / split / row["filename"])
        lines[split].append(f"{row['patientid']} {row['filename']} {covidx_label(row['finding'])} cohen")
    for split, text in lines.items():
        (root / f"{split}_COVIDx9A.txt").write_text("\n".join(text) + "\n")
    return root, rows


def test_real_images_every_mode_and_size(covidx_root, tmp_path):
    root, rows = covidx_root
    cache = Cache(prepare("covidx", root, out=tmp_path / "cache"))
    assert cache.summary["skipped"]["counts"] == {}
    assert len(cache.records) == len(rows) > 100
    modes = set()
    for row, record in enumerate(cache.records):
        with Image.open(root / record["path"]) as image:
            modes.add((image.format, image.mode))
            assert (record["height"], record["width"]) == (image.height, image.width)
        if row % 10 == 0:
            # JPEG decoding may use DCT scaling for speed: compare with a full decode within a small tolerance.
            full = resize_pad(read_image(root / record["path"]), 256)[0].astype(int)
            assert np.abs(cache.images[row].astype(int) - full).mean() < 4
    assert {("PNG", "RGBA"), ("PNG", "RGB"), ("JPEG", "RGB"), ("JPEG", "L")} <= modes  # palette: JSRT below
    sizes = [max(r["height"], r["width"]) for r in cache.records]
    assert min(sizes) < 200 and max(sizes) > 2500
    names = ("normal", "pneumonia", "COVID-19")
    expected = {r["filename"]: covidx_label(r["finding"]) for r in rows}
    assert all(names[r["label"]] == expected[r["path"].split("/", 1)[1]] for r in cache.records)


def test_real_boxes_through_object_cxr_layout(tmp_path):
    """NIH ChestX-ray14 Mass/Nodule boxes written as Object-CXR annotations (rectangles, ellipses, and the
    rectangle as a 4-vertex polygon) come back scaled onto the returned image."""
    source = REAL / "nih_cxr14_boxes"
    images = source / "raw_data" / "50_chest_xrays_raw_data_in_jpg"
    boxes: dict[str, list] = {}
    with open(source / "annotated_data" / "CSV" / "50_chest_xrays_annotated_data_in_csv_format.csv") as f:
        for row in csv.DictReader(f):
            boxes.setdefault(row["image_file"], []).append([float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")])
    root = tmp_path / "object_cxr"
    rows = {"train": [], "dev": []}
    for i, (name, items) in enumerate(sorted(boxes.items())):
        split = "dev" if i % 5 == 0 else "train"
        (root / split).mkdir(parents=True, exist_ok=True)
        os.symlink(images / name, root / split / name)
        parts = []
        for j, (x1, y1, x2, y2) in enumerate(items):
            kind = (i + j) % 3
            coords = [x1, y1, x2, y2] if kind < 2 else [x1, y1, x2, y1, x2, y2, x1, y2]
            parts.append(f"{kind} " + " ".join(f"{c:g}" for c in coords))
        rows[split].append(f"{name},{';'.join(parts)}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("image_name,annotation\n" + "\n".join(lines) + "\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CGNS_CACHE_DIR", str(tmp_path / "caches"))
        dataset = build("detection", "object_cxr", "test", data_root=root, image_size=224)
    assert len(dataset) == len(rows["dev"])
    for i in range(len(dataset)):
        record = dataset.record(i)
        name = record["path"].split("/", 1)[1]
        scale = 224 / max(record["height"], record["width"])
        assert np.allclose(dataset[i]["boxes"].numpy(), np.array(boxes[name]) * scale, atol=1e-3)


def test_real_masks_through_siim_layout(tmp_path):
    """JSRT radiographs (2048 px palette PNGs) as DICOMs and their SCR lung masks (1024 px, upsampled to the image)
    as two run-length rows per image: the decoded union equals the masks (left and right lungs are not mirror
    images, so a row-major/column-major mix-up would show)."""
    from cgns.data.sources import siim
    from cgns.synthetic.files import write_dicom

    root = tmp_path / "siim"
    lines, truth = ["ImageId, EncodedPixels"], {}
    for name in ("JPCLN001", "JPCNN002"):
        pixels = read_image(REAL / "jsrt_scr" / "images" / f"{name}.IMG.png")
        folder = root / "dicom-images-train" / f"study.{name}" / f"series.{name}"
        folder.mkdir(parents=True)
        write_dicom(folder / f"1.2.{name}.dcm", pixels, patient_id=name, sop_uid=f"1.2.{len(name)}",
                    study_uid="1.2.3", series_uid="1.2.4")
        union = np.zeros(pixels.shape, np.uint8)
        for organ in ("left_lung", "right_lung"):
            half = np.asarray(Image.open(REAL / "jsrt_scr" / "masks" / organ / f"{name}.png")) > 127
            full = half.repeat(2, axis=0).repeat(2, axis=1).astype(np.uint8)
            lines.append(f"1.2.{name}, {rle_encode(full)}")
            union |= full
        truth[f"1.2.{name}"] = union
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    cache = Cache(prepare("siim", root, out=tmp_path / "cache"))
    for row, record in enumerate(cache.records):
        gt = truth[record["id"]]
        assert np.array_equal(siim.mask(record, *gt.shape), gt)
        assert not np.array_equal(gt, gt.T)
        assert np.array_equal(cache.masks[row], mask_resize_pad(gt, 256))
        assert (record["height"], record["width"]) == (2048, 2048)
        image = resize_pad(read_image(REAL / "jsrt_scr" / "images" / f"{record['id'][4:]}.IMG.png"), 256)[0]
        assert np.array_equal(cache.images[row], image)
        # Lungs are dark on a correctly oriented radiograph.
        assert cache.images[row][cache.masks[row] > 0].mean() < cache.images[row][cache.masks[row] == 0].mean()
    summary = json.loads((tmp_path / "cache" / "summary.json").read_text())
    assert summary["images"] == 2
