"""The generated world is FAITHFUL in format: each layout parses as its real counterpart (DATASETS.md) would, and
agrees with the generator's ground truth. Readers here are written independently of cgns.data."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cgns.synthetic import DATASETS, ensure_demo, generate, main

CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
                    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
LABEL_CELLS = {"", "1.0", "0.0", "-1.0"}


def _truth(world: Path, dataset: str) -> dict:
    return json.loads((world / dataset / "ground_truth.json").read_text())


def _csv_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def test_mimic_cxr_layout(test_world):
    root = test_world / "mimic_cxr"
    meta = _csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    split = _csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz")
    labels = _csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert list(meta[0])[:5] == ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                                 "ViewPosition"]
    assert list(split[0]) == ["dicom_id", "study_id", "subject_id", "split"]
    assert list(labels[0])[:2] == ["subject_id", "study_id"] and len(labels[0]) == 16
    assert {r["split"] for r in split} == {"train", "validate", "test"}
    views = [r["ViewPosition"] for r in meta]
    assert "LATERAL" in views and "PA" in views and "AP" in views
    per_study = {}
    for r in meta:
        subject, study = r["subject_id"], r["study_id"]
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{r['dicom_id']}.jpg"
        assert path.is_file(), path
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "L"
            assert (img.height, img.width) == (int(r["Rows"]), int(r["Columns"]))
        per_study[r["study_id"]] = per_study.get(r["study_id"], 0) + 1
    assert max(per_study.values()) > 1, "some studies must hold several images"
    for r in labels:
        sid = r["subject_id"]
        report = root / "reports" / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{r['study_id']}.txt"
        assert "FINAL REPORT" in report.read_text()
        assert set(list(r.values())[2:]) <= LABEL_CELLS
    truth = _truth(test_world, "mimic_cxr")
    assert set(truth["images"]) == {r["dicom_id"] for r in meta}
    layouts = {v["report_layout"] for v in truth["images"].values()}
    assert len(layouts) >= 4, layouts  # irregular reports are part of the world


def test_mimic_ground_truth_sentences_come_from_the_report(test_world):
    """Each expected sentence's words appear, in order, in the report text; regions lie inside the image."""
    root = test_world / "mimic_cxr"
    truth = _truth(test_world, "mimic_cxr")
    with_region = 0
    for entry in truth["images"].values():
        words = " ".join("".join(c if c.isalpha() else " " for c in (root / entry["report"]).read_text().lower())
                         .split())
        for s in entry["sentences"]:
            assert s["text"] in words, (s["text"], entry["report"])
            assert len(s["text"].split()) > 1
            if s["region"] is not None:
                x1, y1, x2, y2 = s["region"]
                assert 0 <= x1 < x2 <= entry["width"] and 0 <= y1 < y2 <= entry["height"]
                with_region += 1
    assert with_region > 5


def test_chexpert_layout(test_world):
    root = test_world / "chexpert"
    for split in ("train", "valid"):
        with open(root / "CheXpert-v1.0" / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == CHEXPERT_COLUMNS
        for r in rows:
            assert r["Path"].startswith(f"CheXpert-v1.0/{split}/") and (root / r["Path"]).is_file()
            assert r["Sex"] in ("Male", "Female") and r["Age"].isdigit()
            assert r["Frontal/Lateral"] in ("Frontal", "Lateral")
            assert (r["AP/PA"] == "") == (r["Frontal/Lateral"] == "Lateral")
            cells = {r[c] for c in CHEXPERT_COLUMNS[5:]}
            assert cells <= (LABEL_CELLS if split == "train" else {"0.0", "1.0"})
        assert any(r["Frontal/Lateral"] == "Lateral" for r in rows)
    assert sum(1 for _ in open(root / "CheXpert-v1.0" / "valid.csv")) - 1 == 16


def _dicom_as_displayed(ds) -> np.ndarray:
    """Pixel values scaled to [0, 1] with high = dense (white), whatever the photometric interpretation."""
    pixels = ds.pixel_array.astype(np.float32) / (2 ** int(ds.BitsStored) - 1)
    return 1 - pixels if ds.PhotometricInterpretation == "MONOCHROME1" else pixels


def test_rsna_layout_and_dicoms(test_world):
    root = test_world / "rsna"
    truth = _truth(test_world, "rsna")["images"]
    with open(root / "stage_2_train_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["patientId", "x", "y", "width", "height", "Target"]
    boxes = {}
    for r in rows:
        if r["Target"] == "0":
            assert r["x"] == r["y"] == r["width"] == r["height"] == ""
            boxes.setdefault(r["patientId"], [])
        else:
            x, y, w, h = (float(r[k]) for k in ("x", "y", "width", "height"))
            boxes.setdefault(r["patientId"], []).append([x, y, x + w, y + h])
    assert any(len(b) > 1 for b in boxes.values()), "several rows per positive patient"
    assert set(boxes) == set(truth)
    photometrics, bits = set(), set()
    for pid, entry in truth.items():
        assert boxes[pid] == [[float(v) for v in b] for b in entry["boxes"]]
        ds = pydicom.dcmread(root / "stage_2_train_images" / f"{pid}.dcm")
        assert ds.Modality == "CR" and ds.PatientID == pid
        assert (ds.Rows, ds.Columns) == (entry["height"], entry["width"]) == ds.pixel_array.shape
        assert ds.PhotometricInterpretation == entry["photometric"]
        photometrics.add(ds.PhotometricInterpretation)
        bits.add(int(ds.BitsStored))
        image = _dicom_as_displayed(ds)
        h, w = image.shape
        # outside the body (air) is dark, the spine column is bright, once the photometric is honoured
        assert image[: h // 8, : w // 10].mean() < image[:, w // 2 - 2: w // 2 + 2].mean() - 0.2, pid
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"} and bits == {8, 12}
    sops = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
            for p in sorted((root / "stage_2_train_images").iterdir())]
    assert len(set(sops)) == len(sops)


def _decode_relative_rle(rle: str, height: int, width: int) -> np.ndarray:
    """SIIM's relative column-major run-length code -> bool [height, width] (written here from the spec)."""
    mask = np.zeros(height * width, bool)
    values = [int(v) for v in rle.split()]
    position = 0
    for gap, length in zip(values[0::2], values[1::2]):
        position += gap
        mask[position:position + length] = True
        position += length
    return mask.reshape(width, height).T


def test_siim_rle_decodes_to_the_truth_mask(test_world):
    root = test_world / "siim"
    truth = _truth(test_world, "siim")["images"]
    masks = np.load(root / "ground_truth_masks.npz")
    lines = (root / "train-rle.csv").read_text().splitlines()
    assert lines[0] == "ImageId, EncodedPixels"
    rows: dict[str, list[str]] = {}
    for line in lines[1:]:
        image_id, encoded = line.split(",", 1)
        assert encoded.startswith(" ")
        rows.setdefault(image_id, []).append(encoded)
    assert set(rows) == set(truth)
    assert any(len(v) > 1 for v in rows.values()), "multi-part masks have several rows"
    assert any(v == [" -1"] for v in rows.values())
    for image_id, entry in truth.items():
        files = list((root / "dicom-images-train").glob(f"*/*/{image_id}.dcm"))
        assert len(files) == 1, image_id
        ds = pydicom.dcmread(files[0])
        assert ds.SOPInstanceUID == image_id and ds.pixel_array.shape == (entry["height"], entry["width"])
        decoded = np.zeros((entry["height"], entry["width"]), bool)
        for encoded in rows[image_id]:
            if encoded.strip() != "-1":
                decoded |= _decode_relative_rle(encoded, entry["height"], entry["width"])
        assert np.array_equal(decoded, masks[image_id]), image_id
        assert decoded.any() == entry["positive"]


def test_covidx_layout(test_world):
    root = test_world / "covidx"
    truth = _truth(test_world, "covidx")["images"]
    seen = set()
    for split in ("train", "test"):
        for line in (root / f"{split}_COVIDx9A.txt").read_text().splitlines():
            patient, filename, label, source = line.split(" ")
            assert label in ("normal", "pneumonia", "COVID-19")
            assert (root / split / filename).is_file()
            assert truth[filename]["label"] == label and truth[filename]["split"] == split
            seen.add(label)
    assert seen == {"normal", "pneumonia", "COVID-19"}
    assert len(truth) == 36 + 18


def test_object_cxr_annotations_match_the_truth(test_world):
    root = test_world / "object_cxr"
    truth = _truth(test_world, "object_cxr")["images"]
    types, sizes, blanks = set(), set(), 0
    for split in ("train", "dev"):
        with open(root / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["image_name", "annotation"]
        for r in rows:
            with Image.open(root / split / r["image_name"]) as img:
                sizes.add(img.size)
                assert img.size == (truth[r["image_name"]]["width"], truth[r["image_name"]]["height"])
            boxes = []
            if not r["annotation"]:
                blanks += 1
            for part in filter(None, r["annotation"].split(";")):
                values = [int(v) for v in part.split()]
                kind, coords = values[0], values[1:]
                types.add(kind)
                assert kind in (0, 1, 2) and (len(coords) == 4 if kind < 2 else len(coords) >= 6)
                boxes.append([min(coords[0::2]), min(coords[1::2]), max(coords[0::2]), max(coords[1::2])])
            assert boxes == truth[r["image_name"]]["boxes"]
    assert types == {0, 1, 2} and blanks > 0 and len(sizes) > 5


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_different_world(tmp_path, test_world):
    small = {"mimic_cxr": 6, "chexpert": 6, "chexpert_valid": 3, "rsna": 6, "covidx": 4, "covidx_test": 2,
             "siim": 8, "object_cxr": 6, "object_cxr_dev": 2}
    a = generate(tmp_path / "a", seed=0, preset="test", counts=small)
    b = generate(tmp_path / "b", seed=0, preset="test", counts=small, workers=2)  # parallel: same bytes
    c = generate(tmp_path / "c", seed=1, preset="test", counts=small)
    for dataset in DATASETS:
        da, db, dc = (_tree_digest(x / dataset) for x in (a, b, c))
        assert da == db, f"{dataset}: same seed gave different bytes"
        common = set(da) & set(dc)
        differ = [k for k in common if da[k] != dc[k]]
        assert set(da) != set(dc) or len(differ) > len(common) // 2, f"{dataset}: seed 1 repeats seed 0"
    # a data set does not depend on which others were generated with it
    alone = generate(tmp_path / "alone", ["siim"], seed=0, preset="test", counts=small)
    assert _tree_digest(alone / "siim") == _tree_digest(a / "siim")


def test_cli_and_bad_arguments(tmp_path, capsys):
    summary = main(["--out", str(tmp_path), "--datasets", "covidx", "--preset", "test", "--n-covidx", "5",
                    "--n-covidx-test", "2", "--image-size", "48"])
    assert summary["covidx"]["images"] == 7
    assert "covidx" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown data set"):
        generate(tmp_path, ["mnist"], preset="test")
    with pytest.raises(ValueError, match="count"):
        generate(tmp_path, ["siim"], preset="test", counts={"siim": 0})


def test_ensure_demo_reuses_a_complete_world(tmp_path, monkeypatch):
    """ensure_demo generates only what is missing and returns the data set folder without regenerating."""
    import cgns.synthetic as synthetic

    calls = []

    def fake_generate(root, missing, *, seed, preset, **kw):
        calls.append(list(missing))
        header = {"generator_version": synthetic.GENERATOR_VERSION, "preset": preset, "seed": seed,
                  "image_size": synthetic.PRESETS[preset]["image_size"],
                  "counts": synthetic.resolve_counts(preset, None)}
        for dataset in missing:
            (Path(root) / dataset).mkdir(parents=True, exist_ok=True)
            (Path(root) / dataset / "ground_truth.json").write_text(json.dumps(header))

    monkeypatch.setattr(synthetic, "generate", fake_generate)
    path = ensure_demo("siim", tmp_path)
    assert path == tmp_path / "siim" and calls == [list(DATASETS)]
    assert ensure_demo("rsna", tmp_path) == tmp_path / "rsna" and len(calls) == 1


def test_ensure_demo_regenerates_a_stale_world(tmp_path, monkeypatch, capsys):
    """A data set written with other counts (an older checkout's demo world) is regenerated, and says why;
    the up-to-date ones are kept."""
    import cgns.synthetic as synthetic

    calls = []

    def fake_generate(root, missing, *, seed, preset, **kw):
        calls.append(list(missing))
        for dataset in missing:
            counts = synthetic.resolve_counts(preset, None)
            if len(calls) == 1 and dataset == "mimic_cxr":
                counts["mimic_cxr"] = 1500                       # as the previous demo preset wrote it
            header = {"generator_version": synthetic.GENERATOR_VERSION, "preset": preset, "seed": seed,
                      "image_size": synthetic.PRESETS[preset]["image_size"], "counts": counts}
            (Path(root) / dataset).mkdir(parents=True, exist_ok=True)
            (Path(root) / dataset / "ground_truth.json").write_text(json.dumps(header))

    monkeypatch.setattr(synthetic, "generate", fake_generate)
    ensure_demo("siim", tmp_path)                                # the first world: mimic_cxr comes out stale
    assert synthetic.world_mismatch(tmp_path / "mimic_cxr", preset="demo", seed=0).startswith("counts")
    assert ensure_demo("siim", tmp_path) == tmp_path / "siim" and len(calls) == 1   # siim itself is fine
    capsys.readouterr()
    ensure_demo("mimic_cxr", tmp_path)
    assert calls[1] == ["mimic_cxr"]
    assert "stale demo data (counts" in capsys.readouterr().err
    assert synthetic.world_mismatch(tmp_path / "mimic_cxr", preset="demo", seed=0) is None


def test_ensure_demo_is_safe_when_two_processes_race(tmp_path):
    """Two processes asking for the demo world at once: it is generated once, and both get a complete copy."""
    code = ("import sys; from cgns.synthetic import ensure_demo; "
            "print(ensure_demo(sys.argv[1], sys.argv[2], preset='test'))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, dataset, str(tmp_path)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for dataset in ("siim", "rsna")]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum(err.count("generating the demo world") for _, err in outputs) == 1, outputs
    for dataset in DATASETS:
        assert json.loads((tmp_path / dataset / "ground_truth.json").read_text())["dataset"] == dataset
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".generate.lock"]


def test_reports_show_the_real_irregularities():
    """Across generated reports: anonymisation, misspelt and merged headers, IMPRESSION-only reports, numbered
    lists, and reports with neither FINDINGS nor IMPRESSION whose last paragraph holds the findings."""
    import re

    from cgns.synthetic.cases import sample_case
    from cgns.synthetic.reports import write_report

    texts, fallbacks = [], 0
    for seed in range(400):
        rng = np.random.default_rng(seed)
        report = write_report(sample_case(rng, "general"), rng)
        texts.append(report.text)
        if report.layout == "no_sections":
            assert not re.search(r"FINDINGS|IMPRESS", report.text)
            last = report.text.strip().split("\n \n")[-1]
            assert " ".join(last.split()) == " ".join(s.text for s in report.sections["findings"])
            fallbacks += 1
    joined = "\n".join(texts)
    for pattern in ("___", "IMPRESION:", "IMPRESSIONS:", "FINDINGS/IMPRESSION:", "FINDINGS AND IMPRESSION:",
                    "\n 1. ", "\n 2. ", "FINAL REPORT", "EXAMINATION:", "INDICATION:", "COMPARISON:",
                    "No pleural effusion.", "cannot be excluded", "possible"):
        assert pattern.lower() in joined.lower() if pattern.islower() else pattern in joined, pattern
    impression_only = sum(1 for t in texts if "IMPRESSION:" in t and not re.search(r"FINDINGS?", t))
    missing_comparison = sum(1 for t in texts if "COMPARISON:" not in t)
    assert fallbacks > 10 and impression_only > 10 and missing_comparison > 10
