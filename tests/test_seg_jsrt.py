"""The JSRT -> SIIM converter round-trips real lung masks through the project's SIIM reader (skipped without the
real data: set CGNS_JSRT_DIR, or keep the shared folder beside the repository)."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cgns.data.datasets import build
from cgns.eval.metrics import dice_per_image
from scripts.jsrt_to_siim import convert

JSRT = Path(os.environ.get("CGNS_JSRT_DIR", Path(__file__).resolve().parents[2] / "shared" / "realdata" / "jsrt_scr"))
pytestmark = pytest.mark.skipif(not (JSRT / "images").is_dir(), reason=f"real JSRT data not present at {JSRT}")


def test_converted_lung_masks_read_back_through_the_siim_path(tmp_path):
    assert convert(JSRT, tmp_path, size=256, limit=8) == 8
    header = (tmp_path / "train-rle.csv").read_text().splitlines()[0]
    assert header == "ImageId, EncodedPixels"
    found = 0
    for split in ("train", "valid", "test"):
        data = build("segmentation", "siim", split, data_root=tmp_path, image_size=128)
        for i in range(len(data)):
            image_id = data.record(i)["id"]
            lungs = sum(np.asarray(Image.open(JSRT / "masks" / organ / f"{image_id}.png").convert("L")
                                   .resize((128, 128), Image.NEAREST), dtype=np.float32) / 255
                        for organ in ("left_lung", "right_lung"))
            expected = torch.from_numpy((lungs > 0.5).astype(np.float32))[None, None]
            assert dice_per_image(data[i]["mask"][None], expected).item() > 0.97, image_id
            image = data[i]["image"][0]
            # the lungs are the dark fields of the radiograph: the mask must sit on them
            assert image[data[i]["mask"][0] > 0].mean() < image[data[i]["mask"][0] == 0].mean()
            found += 1
    assert found == 8
