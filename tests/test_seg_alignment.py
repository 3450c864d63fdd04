"""Masks stay aligned with their images through the whole SIIM path: RLE decode -> cache -> resize -> warp.

The generator draws the pneumothorax as air without lung markings (darker than the collapsed lung and chest wall
around it), so an aligned mask sits on the darkest rim: averaged over augmented draws, the image under the returned
mask must be darkest at zero shift and clearly brighter when the mask is moved sideways by 2+ pixels (the rim is
narrow sideways; along the chest wall a 1-pixel shift barely changes what it covers), and darker than a ring around it.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cgns.data.datasets import build
from cgns.eval.metrics import dice_per_image

SIZE = 64  # the test world's native size, so unaugmented masks must equal the generator's truth


def _ring(mask: torch.Tensor, width: int = 3) -> torch.Tensor:
    """bool [H, W]: pixels within `width` of the mask but outside it."""
    grown = F.max_pool2d(mask[None, None], 2 * width + 1, stride=1, padding=width)[0, 0]
    return (grown > 0) & (mask <= 0)


def _contrast(image: torch.Tensor, mask: torch.Tensor) -> float:
    return float(image[_ring(mask)].mean() - image[mask > 0].mean())


@pytest.fixture(scope="module")
def siim(test_world):
    root = test_world / "siim"
    return root, np.load(root / "ground_truth_masks.npz")


@pytest.mark.parametrize("dataset", ["siim", "rsna"])  # RLE masks, and RSNA boxes filled as masks
def test_unaugmented_masks_equal_the_generator_truth(test_world, dataset):
    root = test_world / dataset
    truth = np.load(root / "ground_truth_masks.npz")
    positives = 0
    for split in ("train", "valid", "test"):
        data = build("segmentation", dataset, split, data_root=root, image_size=SIZE)
        for i in range(len(data)):
            expected = torch.from_numpy(truth[data.record(i)["id"]]).float()[None, None]  # [1, 1, H, W]
            positives += int(expected.sum() > 0)
            assert dice_per_image(data[i]["mask"][None], expected).item() > 0.98, data.record(i)["id"]
    assert positives >= 5  # not only empty-vs-empty agreements


def test_warped_mask_still_covers_the_drawn_pneumothorax(siim):
    root, _ = siim
    plain = build("segmentation", "siim", "train", data_root=root, image_size=SIZE)
    augmented = build("segmentation", "siim", "train", data_root=root, image_size=SIZE, augment=True)
    torch.manual_seed(0)
    shifts = range(-3, 4)
    contrast = 0.0  # ring minus inside of the unshifted mask
    darkness = np.zeros((len(shifts), len(shifts)))  # mean image value under the shifted mask
    samples = warped = 0
    for _ in range(4):  # several augmentation draws per image
        for i in range(len(augmented)):
            item = augmented[i]
            image, mask = item["image"][0], item["mask"][0]  # [S, S]
            warped += int(not torch.equal(mask, plain[i]["mask"][0]))
            if mask.sum() < 3:
                continue
            samples += 1
            contrast += _contrast(image, mask)
            for a, dy in enumerate(shifts):
                for b, dx in enumerate(shifts):
                    darkness[a, b] += float(image[torch.roll(mask, (dy, dx), dims=(0, 1)) > 0].mean())
    contrast /= samples
    darkness /= samples
    assert samples >= 10 and warped >= 5  # the warps really happened on positives
    assert contrast > 0.2  # the drawn air is clearly darker than its surroundings under the mask
    centre = darkness[3, 3]
    assert centre <= darkness.min() + 0.005  # the darkest pixels at zero shift
    sideways = np.concatenate([darkness[:, :2].ravel(), darkness[:, 5:].ravel()])
    assert sideways.min() - centre > 0.05  # and a 2-pixel misalignment is visible
