"""Lay out JSRT radiographs + SCR lung masks as a SIIM-ACR folder, to validate segmentation on real images.

    python -m scripts.jsrt_to_siim --jsrt DIR_WITH_images_AND_masks --out data/jsrt_siim [--size 1024]
    python train_seg.py --dataset siim --data-root data/jsrt_siim --random-init --finetune ...

Input: <jsrt>/images/<id>.IMG.png (2048x2048, palette grey) and <jsrt>/masks/{left_lung,right_lung}/<id>.png
(1024x1024, 0/255) — the masks are at HALF the image resolution, so the image is resized to the mask grid (both then
cover the same field of view pixel for pixel), never the mask stretched by guesswork.
Output (the official SIIM layout the project reads): <out>/train-rle.csv with header 'ImageId, EncodedPixels'
(relative column-major RLE of the union of both lungs) and <out>/dicom-images-train/<study>/<series>/<id>.dcm
(8-bit MONOCHROME2). The output is data: keep it out of the repository.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from cgns.data.rle import rle_encode

ORGANS = ("left_lung", "right_lung")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("JSRT + SCR lung masks -> SIIM-ACR layout")
    parser.add_argument("--jsrt", required=True, help="folder with images/ and masks/<organ>/")
    parser.add_argument("--out", required=True, help="output folder (SIIM layout)")
    parser.add_argument("--size", type=int, default=None,
                        help="side of the written images and masks (default: the mask resolution)")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N images (file order)")
    return parser


def write_dicom(path: Path, image: np.ndarray, image_id: str) -> None:
    """uint8 [H, W] -> an 8-bit MONOCHROME2 secondary-capture DICOM file."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality, ds.ImageComments = image_id, "CR", "JSRT via scripts/jsrt_to_siim.py"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def lung_mask(jsrt: Path, image_id: str) -> np.ndarray:
    """Union of the left and right lung masks -> uint8 {0, 1} [h, w] (the masks' own resolution)."""
    masks = []
    for organ in ORGANS:
        path = jsrt / "masks" / organ / f"{image_id}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: lung mask missing for image {image_id}")
        masks.append(np.asarray(Image.open(path).convert("L")) > 127)
    if masks[0].shape != masks[1].shape:
        raise ValueError(f"{image_id}: left/right lung masks differ in size {masks[0].shape} vs {masks[1].shape}")
    return (masks[0] | masks[1]).astype(np.uint8)


def convert(jsrt: Path, out: Path, size: int | None = None, limit: int | None = None) -> int:
    """Write the SIIM layout; returns the number of images."""
    images = sorted((jsrt / "images").glob("*.png"))[:limit]
    if not images:
        raise FileNotFoundError(f"{jsrt / 'images'}: no PNG radiographs")
    rows = []
    for n, image_path in enumerate(images):
        image_id = image_path.name.split(".")[0]  # JPCLN001.IMG.png -> JPCLN001
        mask = lung_mask(jsrt, image_id)
        side = size or mask.shape[0]
        # the image is twice the mask's resolution: resample it onto the mask grid (same field of view)
        grey = Image.open(image_path).convert("L").resize((side, side), Image.LANCZOS)
        if mask.shape != (side, side):
            mask = (np.asarray(Image.fromarray(mask * 255).resize((side, side), Image.NEAREST)) > 127).astype(
                np.uint8)
        write_dicom(out / "dicom-images-train" / f"study{n:03d}" / f"series{n:03d}" / f"{image_id}.dcm",
                    np.asarray(grey), image_id)
        rows.append((image_id, " " + rle_encode(mask)))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train-rle.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", " EncodedPixels"])
        writer.writerows(rows)
    return len(rows)


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    count = convert(Path(args.jsrt), Path(args.out), args.size, args.limit)
    print(f"wrote {count} images in the SIIM layout under {args.out}")


if __name__ == "__main__":
    main()
