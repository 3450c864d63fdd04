"""DICOM -> 8-bit grey image: modality LUT, VOI LUT / window when present, MONOCHROME1 inverted."""
from __future__ import annotations

import os

import numpy as np


class DicomError(ValueError):
    """A DICOM file that cannot be read or holds no usable pixel data."""


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Read a DICOM file -> uint8 [H, W] with 0 = black (air) and 255 = white (bone).

    Order: stored values -> modality LUT (rescale slope/intercept) -> VOI LUT or window centre/width when the file
    has one (its output range 0 .. 2**BitsStored-1 maps to 0..255) -> otherwise 8-bit data are kept and wider data
    min-max scaled to 0..255 -> inverted for MONOCHROME1 (where high values are dark).
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(os.fspath(path))
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises many types for truncated or non-DICOM files
        raise DicomError(f"{path}: unreadable DICOM ({type(error).__name__}: {error})") from None
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 3:
        pixels = pixels.astype(np.float64).mean(axis=-1)
    elif pixels.ndim != 2:
        raise DicomError(f"{path}: expected one 2-D frame, got pixel array of shape {pixels.shape}")
    values = apply_modality_lut(pixels, ds)  # integer unless the file rescales (VOI LUT tables want integers)
    bits = int(getattr(ds, "BitsStored", 8))
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        # The VOI transform outputs 0 .. 2**BitsStored - 1; keep the window's own contrast.
        values = apply_voi_lut(values, ds, index=0).astype(np.float64)
        low, high = 0.0, float(2 ** bits - 1)
    elif bits == 8 and not _rescaled(ds):
        low, high = 0.0, 255.0  # already 8-bit display values: keep them as they are
    else:
        low, high = float(values.min()), float(values.max())
    values = np.asarray(values, dtype=np.float64)
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    image = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        image = 255 - image
    return image


def _rescaled(ds) -> bool:
    """True when the file carries a non-identity modality rescale (slope/intercept)."""
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return slope != 1 or intercept != 0
