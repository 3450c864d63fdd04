"""SIIM-ACR run-length codec: RELATIVE (offset, length) pairs over the column-major flattened mask.

Each offset counts from the end of the previous run (the first from pixel 0); pixels are numbered down the
columns, so decoding fills a (width, height) row-major buffer and transposes it. A negative image holds '-1'.
"""
from __future__ import annotations

import numpy as np


class RLEError(ValueError):
    """A malformed EncodedPixels string; the message names where it came from."""


NEGATIVE = "-1"


def is_negative(rle: str) -> bool:
    """True for the ' -1' (or empty) value that marks an image without pneumothorax."""
    return rle.strip() in ("", NEGATIVE)


def rle_decode(rle: str, height: int, width: int, where: str = "EncodedPixels") -> np.ndarray:
    """Decode one relative column-major RLE string -> uint8 mask [height, width] in {0, 1}.

    `where` names the file/row/field for error messages. ' -1' decodes to an all-zero mask.
    """
    mask = np.zeros(height * width, dtype=np.uint8)
    if is_negative(rle):
        return mask.reshape(height, width)
    fields = rle.split()
    if len(fields) % 2:
        raise RLEError(f"{where}: odd number of values ({len(fields)}) in run-length string, expected "
                       f"(offset, length) pairs")
    try:
        values = np.asarray([int(f) for f in fields], dtype=np.int64)
    except ValueError:
        bad = next(f for f in fields if not f.lstrip("-").isdigit())
        raise RLEError(f"{where}: non-integer value {bad!r} in run-length string") from None
    offsets, lengths = values[0::2], values[1::2]
    if (offsets < 0).any() or (lengths <= 0).any():
        raise RLEError(f"{where}: negative offset or non-positive length in run-length string")
    # Absolute start of run i = sum of all earlier offsets and lengths plus its own offset.
    starts = np.cumsum(offsets) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ends = starts + lengths
    if ends[-1] > mask.size:
        raise RLEError(f"{where}: runs end at pixel {int(ends[-1])}, beyond the {height}x{width} image")
    for start, end in zip(starts, ends):
        mask[start:end] = 1
    # Column-major flattening: the buffer is [width, height]; transpose to [height, width].
    return mask.reshape(width, height).T.copy()


def rle_decode_union(rles: list[str], height: int, width: int, where: str = "EncodedPixels") -> np.ndarray:
    """Union of several RLE rows of one image -> uint8 mask [height, width] in {0, 1}."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for i, rle in enumerate(rles):
        mask |= rle_decode(rle, height, width, where=f"{where} (mask {i + 1} of {len(rles)})")
    return mask


def rle_encode(mask: np.ndarray) -> str:
    """Encode a [height, width] binary mask as a relative column-major RLE string ('-1' when empty)."""
    flat = (np.asarray(mask) > 0).T.reshape(-1).astype(np.int8)
    if not flat.any():
        return NEGATIVE
    edges = np.diff(np.concatenate([[0], flat, [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    lengths = ends - starts
    previous_ends = np.concatenate([[0], ends[:-1]])
    offsets = starts - previous_ends
    return " ".join(f"{o} {n}" for o, n in zip(offsets, lengths))
