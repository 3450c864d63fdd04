"""Image geometry and tensor transforms: resize long side + zero-pad square, crops, normalisation, augmentation.

Two stages. Offline (cache building): `resize_pad` maps an original image of any size to a `cache_size` square
and returns the `Placement` that maps original pixel coordinates into it, so boxes and masks follow exactly.
Online (datasets): the classes below turn a cached uint8 square into the float tensor the encoders see
(3 identical grey channels, mean 0.5 / std 0.5 normalisation), with boxes and masks transformed alongside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Crop protocol of METHOD.md: resize to 256 then crop 224, i.e. the crop keeps 7/8 of the side.
CROP_FRACTION = 224 / 256
MEAN, STD = 0.5, 0.5


@dataclass(frozen=True)
class Placement:
    """Where an original [height, width] image sits inside its padded square: x' = x * scale + left."""
    scale: float
    top: int
    left: int

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        """[n, 4] xyxy in original pixels -> [n, 4] xyxy in pixels of the padded square."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        offset = np.array([self.left, self.top, self.left, self.top], dtype=np.float64)
        return boxes * self.scale + offset


def placement_for(height: int, width: int, size: int) -> tuple[Placement, tuple[int, int]]:
    """The placement of a [height, width] image in a `size` square and its resized (height, width)."""
    scale = size / max(height, width)
    new_h = min(size, max(1, round(height * scale)))
    new_w = min(size, max(1, round(width * scale)))
    # Centred padding, as the reference implementations do; the placement makes the choice explicit.
    return Placement(scale, (size - new_h) // 2, (size - new_w) // 2), (new_h, new_w)


def resize_pad(image: np.ndarray, size: int, original_shape: tuple[int, int] | None = None
               ) -> tuple[np.ndarray, Placement]:
    """uint8 [H, W] grey -> (uint8 [size, size] with the long side resized to `size`, zero-padded; placement).

    original_shape: the (H, W) the placement refers to when `image` was decoded at reduced resolution (JPEG DCT
    scaling); boxes and masks are given in that frame.
    """
    height, width = original_shape if original_shape is not None else image.shape[:2]
    placement, (new_h, new_w) = placement_for(height, width, size)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    out = np.zeros((size, size), dtype=np.uint8)
    out[placement.top:placement.top + new_h, placement.left:placement.left + new_w] = resized
    return out, placement


def mask_resize_pad(mask: np.ndarray, size: int) -> np.ndarray:
    """uint8 {0,1} [H, W] mask -> uint8 {0,1} [size, size] with the same geometry as `resize_pad`.

    Area-averaged then thresholded at 0.5, so thin structures shrink the way the image does.
    """
    placement, (new_h, new_w) = placement_for(mask.shape[0], mask.shape[1], size)
    soft = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((new_w, new_h), Image.BOX))
    out = np.zeros((size, size), dtype=np.uint8)
    out[placement.top:placement.top + new_h, placement.left:placement.left + new_w] = soft >= 0.5
    return out


def boxes_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Filled xyxy boxes (pixels) -> uint8 {0,1} [height, width] (RSNA segmentation masks)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        c1, r1 = max(0, int(math.floor(x1))), max(0, int(math.floor(y1)))
        c2, r2 = min(width, int(math.ceil(x2))), min(height, int(math.ceil(y2)))
        mask[r1:r2, c1:c2] = 1
    return mask


def to_model_input(image: torch.Tensor) -> torch.Tensor:
    """uint8 or float [S, S] grey in 0..255 -> float [3, S, S] normalised with mean 0.5, std 0.5."""
    grey = image.float().div(255.0).sub(MEAN).div(STD)
    return grey.unsqueeze(0).expand(3, -1, -1).contiguous()


def resize_square(image: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """[S, S] -> [size, size] (float for 'bilinear', same dtype for 'nearest')."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    batch = image[None, None].float()
    if mode == "bilinear":
        return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    return F.interpolate(batch, size=(size, size), mode="nearest")[0, 0].to(image.dtype)


class CropTransform:
    """Pretraining / classification: resize the cached square to image_size / (7/8), then random crop
    (train) or centre crop (eval) to image_size; returns float [3, image_size, image_size]."""

    def __init__(self, image_size: int, train: bool):
        self.image_size = image_size
        self.base_size = int(round(image_size / CROP_FRACTION))
        self.train = train

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        base = resize_square(image, self.base_size)  # [B, B]
        margin = self.base_size - self.image_size
        if self.train:
            top, left = (int(v) for v in torch.randint(0, margin + 1, (2,)))
        else:
            top = left = margin // 2
        crop = base[top:top + self.image_size, left:left + self.image_size]
        return to_model_input(crop)


class DetectionTransform:
    """Detection: resize the cached square to image_size; boxes [n, 4] xyxy (cache pixels) scale the same way."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.image_size / image.shape[-1]
        return to_model_input(resize_square(image, self.image_size)), boxes * factor


class SegmentationTransform:
    """Segmentation: resize image and mask to image_size; in training, with probability 0.5 a random scale
    (+-10%) and rotation (+-10 degrees) about the centre, zero border, applied identically to both (the
    ShiftScaleRotate(shift 0, scale 0.1, rotate 10) of the MGCA protocol).

    Returns (float [3, S, S] image, float [1, S, S] mask in {0, 1}).
    """

    def __init__(self, image_size: int, train: bool, p: float = 0.5, scale_limit: float = 0.1,
                 rotate_limit_deg: float = 10.0):
        self.image_size = image_size
        self.train = train
        self.p = p
        self.scale_limit = scale_limit
        self.rotate_limit_deg = rotate_limit_deg

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = resize_square(image, self.image_size)  # float [S, S]
        mask = resize_square(mask, self.image_size, mode="nearest").float()  # [S, S]
        if self.train and float(torch.rand(())) < self.p:
            scale = 1.0 + float(torch.empty(()).uniform_(-self.scale_limit, self.scale_limit))
            angle = math.radians(float(torch.empty(()).uniform_(-self.rotate_limit_deg, self.rotate_limit_deg)))
            image, mask = affine_pair(image, mask, scale, angle)
        return to_model_input(image), (mask > 0.5).float().unsqueeze(0)


def affine_pair(image: torch.Tensor, mask: torch.Tensor, scale: float, angle: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale by `scale` and rotate by `angle` radians about the centre: image bilinear, mask nearest, zeros outside.

    image, mask: float [S, S]. The same sampling grid is used for both so they stay aligned.
    """
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    # affine_grid maps output coordinates to input coordinates, hence the inverse (1/scale, -angle) matrix.
    theta = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0]], dtype=torch.float32)[None]  # [1, 2, 3]
    grid = F.affine_grid(theta, [1, 1, *image.shape], align_corners=False)  # [1, S, S, 2]
    warped = F.grid_sample(image[None, None].float(), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)[0, 0]
    warped_mask = F.grid_sample(mask[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                                align_corners=False)[0, 0]
    return warped, warped_mask
