"""Images from disk into the model API: any chest X-ray file (JPEG, PNG, DICOM) decoded the way the cache does."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from cgns.data.cache import read_image


def open_grey(path: str | Path) -> Image.Image:
    """The file as an 8-bit grey PIL image (DICOM windowing and photometry as in cgns.data.cache)."""
    return Image.fromarray(read_image(path), mode="L")


def encode_files(model, paths: list, batch_size: int = 64, progress=None) -> torch.Tensor:
    """[N, D] global image embeddings of the files, decoded and preprocessed in chunks of batch_size."""
    chunks = []
    for start in range(0, len(paths), batch_size):
        chunks.append(model.encode_images([open_grey(p) for p in paths[start:start + batch_size]]).float())
        if progress is not None:
            progress(min(start + batch_size, len(paths)), len(paths))
    if not chunks:
        raise ValueError("no images to encode")
    return torch.cat(chunks)
