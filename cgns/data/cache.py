"""The fast image cache: every image decoded once, stored at `cache_size` (long side resized, zero-padded square,
uint8 grey) in one memory-mapped .npy array, with a JSON-lines table of records and the split tables.

Layout of a cache directory:
    images.npy      uint8 [N, S, S]         (np.load(..., mmap_mode='r'))
    masks.npy       uint8 [N, S, S] {0,1}   (only for data sets with pixel masks, e.g. SIIM)
    records.jsonl   one JSON object per image: id, path, group, height, width, scale, top, left, + labels
    splits.json     {split name: [row indices into images.npy]}
    summary.json    counts, skipped samples and why
    COMPLETE        the fingerprint, written last: a directory without it is never trusted
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cgns.data.dicom import DicomError, read_dicom
from cgns.data.sources import Issues
from cgns.data.transforms import mask_resize_pad, resize_pad

COMPLETE = "COMPLETE"


class ImageError(ValueError):
    """An image file that is missing, truncated or cannot be decoded."""


def read_image(path: str | os.PathLike, min_size: int | None = None) -> np.ndarray:
    """Decode any chest X-ray file -> uint8 [H, W] grey (see read_image_sized)."""
    return read_image_sized(path, min_size)[0]


def read_image_sized(path: str | os.PathLike, min_size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode any chest X-ray file -> uint8 [H, W] grey.

    PNG (L, P, RGB, RGBA, LA, I;16), JPEG and DICOM (.dcm). Colour is converted to luminance; alpha is
    composited onto black (X-ray background). 16-bit images are min-max scaled to 8 bits. `min_size` lets JPEG
    decoding skip resolution the caller will throw away (DCT scaling keeps both sides >= min_size), so the array
    may be smaller than the file: the second value is always the file's own (height, width), the frame that
    boxes and masks refer to. Raises ImageError (DicomError for DICOM) naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    if path.suffix.lower() == ".dcm":
        image = read_dicom(path)
        return image, image.shape
    try:
        with Image.open(path) as image:
            size = (image.height, image.width)
            if min_size is not None and image.format == "JPEG":
                image.draft("L", (min_size, min_size))
            image.load()
            return _to_grey(image), size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from None


def _to_grey(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        return np.rint(scaled).astype(np.uint8)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _decode_one(task: tuple[str, int]):
    """Worker: (path, cache_size) -> ((cached square, placement, original (H, W)) or None, fault kind, message)."""
    path, cache_size = task
    try:
        image, size = read_image_sized(path, min_size=cache_size)
    except DicomError as error:
        return None, "unreadable DICOM", str(error)
    except ImageError as error:
        kind = "missing image" if "not found" in str(error) else "truncated or unreadable image"
        return None, kind, str(error)
    square, placement = resize_pad(image, cache_size, original_shape=size)
    return (square, placement, size), None, None


def write_cache(out_dir: Path, root: Path, records: list[dict], source, cache_size: int, issues: Issues,
                workers: int = 0, progress: bool = False) -> list[dict]:
    """Decode, resize-pad and store every record's image (and mask) in `out_dir`; returns the kept records.

    Records whose image cannot be read are skipped through `issues`. Each kept record gains height, width (the
    original size) and scale, top, left (its placement in the cached square).
    """
    n = len(records)
    images = np.lib.format.open_memmap(out_dir / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(n, cache_size, cache_size))
    has_masks = hasattr(source, "mask")
    masks = (np.lib.format.open_memmap(out_dir / "masks.npy", mode="w+", dtype=np.uint8,
                                       shape=(n, cache_size, cache_size)) if has_masks else None)
    tasks = [(str(root / r["path"]), cache_size) for r in records]
    kept: list[dict] = []
    decoded = _decode_all(tasks, workers)
    if progress:
        from tqdm import tqdm

        decoded = tqdm(decoded, total=n, desc="caching images", unit="img")
    for record, (result, kind, message) in zip(records, decoded):
        if result is None:
            issues.skip(kind, message)
            continue
        square, placement, (height, width) = result
        row = len(kept)
        images[row] = square
        if masks is not None:
            masks[row] = mask_resize_pad(source.mask(record, height, width), cache_size)
        kept.append({**record, "height": int(height), "width": int(width),
                     "scale": placement.scale, "top": placement.top, "left": placement.left})
    images.flush()
    del images
    _truncate_rows(out_dir / "images.npy", len(kept))
    if masks is not None:
        masks.flush()
        del masks
        _truncate_rows(out_dir / "masks.npy", len(kept))
    return kept


def _decode_all(tasks: list[tuple[str, int]], workers: int):
    if workers <= 0:
        return map(_decode_one, tasks)
    executor = ProcessPoolExecutor(max_workers=workers)
    # Results come back in order; a generous chunk keeps inter-process overhead small next to decoding.
    return _closing(executor, executor.map(_decode_one, tasks, chunksize=16))


def _closing(executor, results):
    try:
        yield from results
    finally:
        executor.shutdown(cancel_futures=True)


def _truncate_rows(path: Path, rows: int) -> None:
    """Rewrite a [N, S, S] .npy with only its first `rows` rows (after skipped samples)."""
    full = np.load(path, mmap_mode="r")
    if full.shape[0] == rows:
        return
    shorter = path.with_suffix(".short.npy")
    out = np.lib.format.open_memmap(shorter, mode="w+", dtype=full.dtype, shape=(rows, *full.shape[1:]))
    for start in range(0, rows, 1024):
        stop = min(rows, start + 1024)
        out[start:stop] = full[start:stop]
    out.flush()
    del out, full
    os.replace(shorter, path)


def write_tables(out_dir: Path, records: list[dict], splits: dict[str, list[int]], summary: dict) -> None:
    with open(out_dir / "records.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
    (out_dir / "splits.json").write_text(json.dumps(splits))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))


class Cache:
    """Read side of a cache directory; arrays are opened lazily so DataLoader workers each map their own."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / COMPLETE).is_file():
            raise FileNotFoundError(f"{self.path}: not a complete cache (no {COMPLETE} marker); run "
                                    f"`python -m cgns.preprocess` again")
        with open(self.path / "records.jsonl", encoding="utf-8") as handle:
            self.records = [json.loads(line) for line in handle]
        self.splits: dict[str, list[int]] = json.loads((self.path / "splits.json").read_text())
        self.summary = json.loads((self.path / "summary.json").read_text())
        self.has_masks = (self.path / "masks.npy").is_file()
        self._images = None
        self._masks = None

    @property
    def images(self) -> np.ndarray:
        """uint8 [N, S, S] memory map."""
        if self._images is None:
            self._images = np.load(self.path / "images.npy", mmap_mode="r")
        return self._images

    @property
    def masks(self) -> np.ndarray:
        """uint8 [N, S, S] memory map of pixel masks (KeyError-like FileNotFoundError when absent)."""
        if self._masks is None:
            self._masks = np.load(self.path / "masks.npy", mmap_mode="r")
        return self._masks

    @property
    def cache_size(self) -> int:
        return int(self.images.shape[-1])

    def __getstate__(self):
        # Memory maps are reopened in each worker process instead of being pickled.
        state = dict(self.__dict__)
        state["_images"] = state["_masks"] = None
        return state
