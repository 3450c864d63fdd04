"""Byte-deterministic file writers for the generated world: JPEG/PNG, gzipped CSV, DICOM, SIIM run-length codes.

Same inputs -> same bytes: fixed JPEG quality and no metadata, gzip without timestamp or file name, DICOM UIDs
derived from the seed, no wall-clock dates.
"""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

JPEG_QUALITY = 92
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def save_image(path: Path, image: np.ndarray) -> None:
    """uint8 [H, W] grey image -> .jpg/.jpeg (fixed quality) or .png, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(image, mode="L")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        pil.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        pil.save(path, format="PNG", compress_level=3)  # ~30% faster than the default 6, ~12% larger


def csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = csv_text(header, rows)
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(text.encode())
    else:
        path.write_text(text)


def label_cell(value: float | None) -> str:
    """CheXpert/MIMIC label cell: '1.0', '0.0', '-1.0' or blank."""
    return "" if value is None else f"{float(value):.1f}"


def uid(seed: int, *parts) -> str:
    """A DICOM UID derived from the seed and `parts` only (deterministic, unique per input)."""
    return generate_uid(entropy_srcs=[str(seed), *map(str, parts)])


def write_dicom(path: Path, image: np.ndarray, *, patient_id: str, sop_uid: str, study_uid: str, series_uid: str,
                photometric: str = "MONOCHROME2", bits: int = 8, window: bool = False, view: str = "PA",
                sex: str = "M", age: int = 50, pixel_spacing: float = 0.14) -> None:
    """Write uint8 [H, W] `image` as a CR chest DICOM. MONOCHROME1 stores inverted values (high = dark), as the
    standard says; bits=12 stores value * 16 in 16-bit words (BitsStored 12)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyDescription = "CHEST"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.PixelRepresentation = 0
    if bits == 8:
        stored = image if photometric == "MONOCHROME2" else 255 - image
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        max_value = 255
    elif bits == 12:
        stored = image.astype(np.uint16) * 16
        stored = stored if photometric == "MONOCHROME2" else 4095 - stored
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        max_value = 4095
    else:
        raise ValueError(f"bits must be 8 or 12, got {bits}")
    if window:
        ds.WindowCenter = f"{(max_value + 1) // 2}"
        ds.WindowWidth = f"{max_value + 1}"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds.save_as(path, enforce_file_format=True)
