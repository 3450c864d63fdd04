"""The six official layouts (DATASETS.md), each written from generated cases, plus each data set's ground truth.

Every writer has the signature  write_<dataset>(root, counts, seed, image_size) -> (truth, masks)
where root is the data set folder, truth the JSON-able ground truth and masks {id: bool [H, W]} (may be empty).
Each image's randomness comes from its own Generator seeded by (seed, data set, index), so the world is the same
bytes for the same seed and independent across data sets.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from scipy import ndimage

from cgns.synthetic.cases import CHEXPERT_LABELS, Case, sample_case
from cgns.data.rle import rle_encode
from cgns.synthetic.files import label_cell, save_image, uid, write_csv, write_dicom
from cgns.synthetic.render import Rendered, render
from cgns.synthetic.reports import expected_sentences, tokens, write_report

DATASET_IDS = {"mimic_cxr": 1, "chexpert": 2, "rsna": 3, "covidx": 4, "siim": 5, "object_cxr": 6}
MIMIC_LABEL_ORDER = sorted(CHEXPERT_LABELS)


def _rng(seed: int, dataset: str, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed, DATASET_IDS[dataset], *index])


def _finding_truth(case: Case, rendered: Rendered) -> list[dict]:
    return [{"kind": f.kind, "side": f.side, "zone": f.zone, "severity": round(f.severity, 4), "certain": f.certain,
             "box": rendered.boxes.get(i)} for i, f in enumerate(case.findings)]


def _portrait(rng: np.random.Generator, size: int) -> tuple[int, int]:
    return size, int(round(size * rng.uniform(0.8, 1.0)))


# ----------------------------------------------------------------------------------------------------- MIMIC-CXR
def write_mimic_cxr(root: Path, counts: dict, seed: int, image_size: int):
    """files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg, the three .csv.gz tables and reports/files/.../sSTUDY.txt."""
    n_studies = counts["mimic_cxr"]
    world = _rng(seed, "mimic_cxr", 0)
    meta_rows, split_rows, label_rows, images = [], [], [], {}
    subject_id, study_id, made = 10000000 + int(world.integers(0, 900)), 50000000 + int(world.integers(0, 9000)), 0
    while made < n_studies:
        subject_id += int(world.integers(1, 4000))
        split = ("train", "validate", "test")[int(world.choice(3, p=[0.8, 0.1, 0.1]))]
        for _ in range(int(world.integers(1, 4))):
            if made >= n_studies:
                break
            study_id += int(world.integers(1, 90000))
            rng = _rng(seed, "mimic_cxr", made + 1)
            made += 1
            view = "PA" if rng.random() < 0.6 else "AP"
            case = sample_case(rng, "general", view=view)
            report = write_report(case, rng)
            folder = f"p{str(subject_id)[:2]}/p{subject_id}/s{study_id}"
            (root / "reports" / "files" / folder).parent.mkdir(parents=True, exist_ok=True)
            (root / "reports" / "files" / f"{folder}.txt").write_text(report.text)
            label_rows.append([subject_id, study_id] + [label_cell(report.labels[n]) for n in MIMIC_LABEL_ORDER])
            views = [view] + (["LATERAL"] if rng.random() < 0.35 else []) + (["AP"] if rng.random() < 0.08 else [])
            expected = expected_sentences(report)
            kept = sum(len(tokens(s.text)) for s in expected) >= 3
            date = f"21{int(rng.integers(10, 99))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
            for v in views:
                dicom_id = "-".join(f"{int(x):08x}" for x in rng.integers(0, 2 ** 32, 5))
                h, w = _portrait(rng, image_size)
                view_case = Case(case.anatomy, case.findings, view=v)
                rendered = render(view_case, h, w, rng)
                rel = f"files/{folder}/{dicom_id}.jpg"
                save_image(root / rel, rendered.image)
                proc = "CHEST (PA AND LAT)" if view == "PA" else "CHEST (PORTABLE AP)"
                code = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}[v]
                meta_rows.append([dicom_id, subject_id, study_id, proc, v, h, w, date,
                                  f"{int(rng.integers(0, 235959)):06d}.{int(rng.integers(0, 999)):03d}", proc, code,
                                  "Erect" if v != "AP" else "Recumbent"])
                split_rows.append([dicom_id, study_id, subject_id, split])
                frontal = v != "LATERAL"
                images[dicom_id] = {
                    "file": rel, "subject_id": subject_id, "study_id": study_id, "split": split, "view": v,
                    "height": h, "width": w, "report": f"reports/files/{folder}.txt", "report_layout": report.layout,
                    "labels": report.labels, "present": case.present(),
                    "findings": _finding_truth(case, rendered) if frontal else [],
                    "kept": kept,
                    "sentences": [{"text": " ".join(tokens(s.text)), "kind": s.kind, "negated": s.negated,
                                   "finding": s.finding,
                                   "region": rendered.boxes.get(s.finding) if (frontal and s.finding is not None)
                                   else None} for s in expected],
                }
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz",
              ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
               "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
               "PatientOrientationCodeSequence_CodeMeaning"], meta_rows)
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id"] + MIMIC_LABEL_ORDER, label_rows)
    return {"key": "dicom_id", "label_names": list(CHEXPERT_LABELS), "images": images}, {}


# ------------------------------------------------------------------------------------------------------ CheXpert
def write_chexpert(root: Path, counts: dict, seed: int, image_size: int):
    """CheXpert-v1.0/{train.csv, valid.csv, train/, valid/}; CSV paths start with CheXpert-v1.0/."""
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + list(CHEXPERT_LABELS)
    images = {}
    for split, n_rows, first_patient in (("train", counts["chexpert"], 1),
                                         ("valid", counts["chexpert_valid"], 64541)):
        rows, patient, index = [], first_patient - 1, 0
        split_rng = _rng(seed, "chexpert", 0, 0 if split == "train" else 1)
        while len(rows) < n_rows:
            patient += 1
            for study in range(1, int(split_rng.integers(1, 3)) + 1):
                if len(rows) >= n_rows:
                    break
                index += 1
                rng = _rng(seed, "chexpert", 1 if split == "train" else 2, index)
                view = "PA" if rng.random() < 0.4 else "AP"
                case = sample_case(rng, "general", view=view)
                report = write_report(case, rng)  # the labeller's output is the label source, as in CheXpert
                present = case.present()
                labels = report.labels if split == "train" else {n: float(present[n]) for n in CHEXPERT_LABELS}
                an = case.anatomy
                views = [("view1_frontal", view)]
                if rng.random() < 0.15 and len(rows) + 1 < n_rows:
                    views.append(("view2_lateral", "LATERAL"))
                for name, v in views:
                    h, w = _portrait(rng, image_size)
                    rendered = render(Case(an, case.findings, view=v), h, w, rng)
                    rel = f"CheXpert-v1.0/{split}/patient{patient:05d}/study{study}/{name}.jpg"
                    save_image(root / rel, rendered.image)
                    frontal = v != "LATERAL"
                    rows.append([rel, an.sex, an.age, "Frontal" if frontal else "Lateral", v if frontal else ""]
                                + [label_cell(labels[n]) for n in CHEXPERT_LABELS])
                    images[rel] = {"file": rel, "split": split, "view": v, "height": h, "width": w,
                                   "labels": labels, "present": present,
                                   "findings": _finding_truth(case, rendered) if frontal else []}
        write_csv(root / "CheXpert-v1.0" / f"{split}.csv", header, rows)
    return {"key": "Path", "label_names": list(CHEXPERT_LABELS), "images": images}, {}


# ---------------------------------------------------------------------------------------------------------- RSNA
def write_rsna(root: Path, counts: dict, seed: int, image_size: int):
    """stage_2_train_labels.csv (one row per box, empty box for negatives) + stage_2_train_images/<id>.dcm."""
    rows, images, masks = [], {}, {}
    for i in range(counts["rsna"]):
        rng = _rng(seed, "rsna", i + 1)
        patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        target = int(rng.random() < 0.35)
        view = "PA" if rng.random() < 0.5 else "AP"
        case = sample_case(rng, "rsna", view=view, target=target, n_boxes=1 + int(rng.random() < 0.4))
        rendered = render(case, image_size, image_size, rng)
        boxes = [rendered.boxes[k] for k, f in enumerate(case.findings)
                 if f.kind == "consolidation" and rendered.boxes.get(k) is not None]
        if target and not boxes:
            raise RuntimeError(f"rsna {patient_id}: a positive case drew no box")
        for x1, y1, x2, y2 in boxes:
            rows.append([patient_id, f"{x1:.1f}", f"{y1:.1f}", f"{x2 - x1:.1f}", f"{y2 - y1:.1f}", 1])
        if not target:
            rows.append([patient_id, "", "", "", "", 0])
        photometric = "MONOCHROME1" if rng.random() < 0.2 else "MONOCHROME2"
        bits = 12 if rng.random() < 0.2 else 8
        window = bool(rng.random() < 0.3)
        write_dicom(root / "stage_2_train_images" / f"{patient_id}.dcm", rendered.image, patient_id=patient_id,
                    sop_uid=uid(seed, "rsna", i, "sop"), study_uid=uid(seed, "rsna", i, "study"),
                    series_uid=uid(seed, "rsna", i, "series"), photometric=photometric, bits=bits, window=window,
                    view=view, sex=case.anatomy.sex[0], age=case.anatomy.age)
        mask = np.zeros((image_size, image_size), bool)
        for x1, y1, x2, y2 in boxes:
            mask[y1:y2, x1:x2] = True
        masks[patient_id] = mask
        images[patient_id] = {"file": f"stage_2_train_images/{patient_id}.dcm", "target": target, "boxes": boxes,
                              "height": image_size, "width": image_size, "view": view, "photometric": photometric,
                              "bits_stored": bits, "window": window, "present": case.present(),
                              "findings": _finding_truth(case, rendered), "mask": patient_id}
    write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)
    return {"key": "patientId", "images": images}, masks


# -------------------------------------------------------------------------------------------------------- COVIDx
COVIDX_LABELS = ("normal", "pneumonia", "COVID-19")


def write_covidx(root: Path, counts: dict, seed: int, image_size: int):
    """train_COVIDx9A.txt / test_COVIDx9A.txt (`patient_id filename label source`) + train/ and test/ images."""
    images = {}
    for split, n, part in (("train", counts["covidx"], 1), ("test", counts["covidx_test"], 2)):
        lines, i = [], 0
        while i < n:
            rng = _rng(seed, "covidx", part, i)
            label = COVIDX_LABELS[int(rng.choice(3, p=[0.4, 0.3, 0.3]))]
            source = "rsna" if label != "COVID-19" else ("cohen", "sirm", "ricord", "actmed")[int(rng.integers(4))]
            patient = f"{label[:3].upper()}{part}{i:05d}" if source != "rsna" else str(uuid.UUID(bytes=rng.bytes(16)))
            for view_index in range(1 + int(rng.random() < 0.15)):  # some patients have several images
                if i >= n:
                    break
                case = sample_case(rng, "covidx", label=label)
                size = int(round(image_size * rng.uniform(0.85, 1.25)))
                h, w = size, int(round(size * rng.uniform(0.85, 1.15)))
                rendered = render(case, h, w, rng)
                ext = ".png" if source in ("rsna", "ricord") else (".jpg" if rng.random() < 0.7 else ".jpeg")
                suffix = f"-{view_index}" if view_index else ""
                filename = f"{patient}{suffix}{ext}" if source == "rsna" else f"{source}-{patient}-{view_index}{ext}"
                save_image(root / split / filename, rendered.image)
                lines.append(f"{patient} {filename} {label} {source}")
                images[filename] = {"file": f"{split}/{filename}", "split": split, "label": label,
                                    "patient_id": patient, "height": h, "width": w, "present": case.present(),
                                    "findings": _finding_truth(case, rendered)}
                i += 1
        (root / f"{split}_COVIDx9A.txt").write_text("\n".join(lines) + "\n")
    return {"key": "filename", "label_names": list(COVIDX_LABELS), "images": images}, {}


# ---------------------------------------------------------------------------------------------------------- SIIM
SIIM_ROOT = "1.2.276.0.7230010.3.1"


def write_siim(root: Path, counts: dict, seed: int, image_size: int):
    """train-rle.csv (`ImageId, EncodedPixels`, ' -1' for negatives, one row per mask part) + nested DICOMs."""
    lines, images, masks = ["ImageId, EncodedPixels"], {}, {}
    for i in range(counts["siim"]):
        rng = _rng(seed, "siim", i + 1)
        serial = f"8323329.{int(rng.integers(1000, 32000))}.{1517875000 + int(rng.integers(0, 999))}"
        image_id = f"{SIIM_ROOT}.4.{serial}.{int(rng.integers(100000, 999999))}"
        study_uid = f"{SIIM_ROOT}.2.{serial}.{int(rng.integers(100000, 999999))}"
        series_uid = f"{SIIM_ROOT}.3.{serial}.{int(rng.integers(100000, 999999))}"
        positive = bool(rng.random() < 0.4)
        parts = 2 if (positive and rng.random() < 0.3) else 1
        case = sample_case(rng, "siim", positive=positive, parts=parts)
        rendered = render(case, image_size, image_size, rng)
        mask = rendered.ptx_mask if rendered.ptx_mask is not None else np.zeros((image_size, image_size), bool)
        if positive and not mask.any():
            raise RuntimeError(f"siim {image_id}: a positive case drew an empty mask")
        components, n_parts = ndimage.label(mask)
        if n_parts == 0:
            lines.append(f"{image_id}, -1")
        for part in range(1, n_parts + 1):
            lines.append(f"{image_id}, {rle_encode(components == part)}")
        photometric = "MONOCHROME1" if rng.random() < 0.15 else "MONOCHROME2"
        rel = f"dicom-images-train/{study_uid}/{series_uid}/{image_id}.dcm"
        write_dicom(root / rel, rendered.image, patient_id=uuid.UUID(bytes=rng.bytes(16)).hex, sop_uid=image_id,
                    study_uid=study_uid, series_uid=series_uid, photometric=photometric,
                    sex=case.anatomy.sex[0], age=case.anatomy.age)
        masks[image_id] = mask
        images[image_id] = {"file": rel, "positive": positive, "parts": int(n_parts), "height": image_size,
                            "width": image_size, "photometric": photometric, "mask": image_id,
                            "present": case.present(), "findings": _finding_truth(case, rendered)}
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    return {"key": "ImageId", "images": images}, masks


# ---------------------------------------------------------------------------------------------------- Object-CXR
def write_object_cxr(root: Path, counts: dict, seed: int, image_size: int):
    """train.csv / dev.csv (`image_name,annotation`; `TYPE coords;...`, blank for none) + train/ dev/ JPGs."""
    images = {}
    for split, n, part, first in (("train", counts["object_cxr"], 1, 1), ("dev", counts["object_cxr_dev"], 2, 8001)):
        rows = []
        for i in range(n):
            rng = _rng(seed, "object_cxr", part, i)
            n_objects = int(rng.integers(1, 5)) if rng.random() < 0.5 else 0
            case = sample_case(rng, "object", n_objects=n_objects)
            h = int(round(image_size * rng.uniform(0.8, 1.3)))
            w = int(round(image_size * rng.uniform(0.8, 1.3)))
            rendered = render(case, h, w, rng)
            name = f"{first + i:05d}.jpg"
            save_image(root / split / name, rendered.image)
            annotation = ";".join(f"{t} " + " ".join(str(c) for c in coords) for t, coords in rendered.objects)
            rows.append([name, annotation])
            # box = what a reader of the annotation gets: [min x, min y, max x, max y] of the given coordinates
            objects = [{"type": t, "coords": coords, "box": [min(coords[0::2]), min(coords[1::2]),
                                                              max(coords[0::2]), max(coords[1::2])]}
                       for t, coords in rendered.objects]
            images[name] = {"file": f"{split}/{name}", "split": split, "height": h, "width": w,
                            "objects": objects, "boxes": [o["box"] for o in objects]}
        write_csv(root / f"{split}.csv", ["image_name", "annotation"], rows)
    return {"key": "image_name", "images": images}, {}


WRITERS = {"mimic_cxr": write_mimic_cxr, "chexpert": write_chexpert, "rsna": write_rsna, "covidx": write_covidx,
           "siim": write_siim, "object_cxr": write_object_cxr}
