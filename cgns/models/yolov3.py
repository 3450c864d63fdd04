"""A small YOLOv3 detector on top of any image encoder of cgns.models.encoders.

Three output scales at strides 8, 16 and 32. A ResNet-50 gives them directly (layer2, layer3, layer4); a ViT has
one stride (16), so a simple feature pyramid (a transposed conv up, a strided conv down) is built from its last
block. The head is the YOLOv3 neck: coarse-to-fine with upsample + concat, one prediction branch per scale.

Box parametrisation (per anchor a at grid cell (gx, gy) of a level with stride s):
    centre = (gx + fx, gy + fy) * s      fx, fy in [0, 1]   (predicted as sigmoid(tx), sigmoid(ty))
    size   = anchor_wh * exp(tw, th)
Boxes everywhere are xyxy in pixels of the network input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# The YOLOv3 COCO anchors, defined for a 416 px input; three per level, fine (stride 8) to coarse (stride 32).
YOLOV3_ANCHORS_416 = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
LEVEL_STRIDES = (8, 16, 32)
VIT_BLOCKS = ("last", "all")         # which of a ViT's maps the pyramid is built from (YOLOv3Config.vit_blocks)


@dataclass
class YOLOv3Config:
    image_size: int = 224
    num_classes: int = 1
    width: int = 256                   # channels of the coarsest neck block; halved at each finer level
    ignore_thresh: float = 0.5         # negatives whose prediction overlaps a box by more are not penalised
    anchors_416: tuple = field(default=YOLOV3_ANCHORS_416)
    max_detections: int = 100
    pre_nms_top_k: int = 3000
    # a ViT's maps the pyramid is built from: 'last' (its last block, ViTDet's choice) or 'all' (the encoder's
    # pyramid blocks, e.g. 2, 5, 8, 11 of 12, concatenated along channels, as frozen-feature probes often do)
    vit_blocks: str = "last"

    def __post_init__(self):
        if self.vit_blocks not in VIT_BLOCKS:
            raise ValueError(f"YOLOv3 vit_blocks must be one of {VIT_BLOCKS}, got {self.vit_blocks!r}")
        if self.image_size % 32:
            raise ValueError(f"YOLOv3 image_size must be a multiple of 32, got {self.image_size}")
        if len(self.anchors_416) != 9:
            raise ValueError(f"YOLOv3 needs 9 anchors (3 per level), got {len(self.anchors_416)}")

    def anchors(self) -> torch.Tensor:
        """[9, 2] anchor (w, h) in pixels of the input, scaled from the 416 px definitions."""
        return torch.tensor(self.anchors_416, dtype=torch.float32) * (self.image_size / 416.0)


# ----------------------------------------------------------------------------------------------- box geometry
def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair. boxes_a [..., N, 4], boxes_b [..., M, 4] xyxy (leading dims broadcast) -> [..., N, M]."""
    area_a = (boxes_a[..., 2] - boxes_a[..., 0]).clamp(min=0) * (boxes_a[..., 3] - boxes_a[..., 1]).clamp(min=0)
    area_b = (boxes_b[..., 2] - boxes_b[..., 0]).clamp(min=0) * (boxes_b[..., 3] - boxes_b[..., 1]).clamp(min=0)
    top_left = torch.maximum(boxes_a[..., :, None, :2], boxes_b[..., None, :, :2])       # [..., N, M, 2]
    bottom_right = torch.minimum(boxes_a[..., :, None, 2:], boxes_b[..., None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)                             # [..., N, M]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return inter / union.clamp(min=1e-9)


def encode_boxes(boxes: torch.Tensor, anchor_wh: torch.Tensor, stride: float, grid_size: tuple[int, int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes -> (cell, offsets) on a level of `stride`.

    boxes [N, 4] xyxy px, anchor_wh [N, 2] px -> cell long [N, 2] (gx, gy), offsets [N, 4] (fx, fy, tw, th)
    with fx, fy in [0, 1] the centre's position inside its cell and tw, th = log(size / anchor).
    grid_size (H, W) clamps centres lying on the far image border into the last cell.
    """
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride
    size = boxes[:, 2:] - boxes[:, :2]
    cell = centre.floor().long()
    if grid_size is not None:
        limit = torch.tensor([grid_size[1] - 1, grid_size[0] - 1], device=boxes.device)
        cell = torch.minimum(cell.clamp(min=0), limit)
    frac = centre - cell.to(centre.dtype)
    return cell, torch.cat([frac, torch.log(size / anchor_wh)], dim=-1)


def decode_boxes(cell: torch.Tensor, offsets: torch.Tensor, anchor_wh: torch.Tensor, stride: float) -> torch.Tensor:
    """Inverse of encode_boxes. cell [..., 2], offsets [..., 4], anchor_wh [..., 2] (broadcast) -> xyxy [..., 4]."""
    centre = (cell.to(offsets.dtype) + offsets[..., :2]) * stride
    half = anchor_wh * torch.exp(offsets[..., 2:]) / 2
    return torch.cat([centre - half, centre + half], dim=-1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy non-maximum suppression, vectorised. boxes [N, 4] xyxy, scores [N] -> kept indices long[K], best first.

    Instead of a Python loop over boxes, iterate keep_j = not any_{i before j}(keep_i and IoU_ij > t) on all boxes at
    once; its only fixed point is the greedy answer, reached after at most (longest suppression chain) rounds.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    suppresses = torch.triu(box_iou(sorted_boxes, sorted_boxes) > iou_thresh, diagonal=1)   # [N, N]: row i kills col j
    keep = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    for _ in range(len(order)):
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Class-aware NMS: boxes of different labels never suppress each other (shifted apart by label)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    shift = labels.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + shift, scores, iou_thresh)


# ----------------------------------------------------------------------------------------------------- modules
def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.1, inplace=True))


class SimpleFeaturePyramid(nn.Module):
    """One map at stride s -> maps at strides 8, 16, 32 (ViTDet-style: transposed convs up, strided convs down)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        if stride & (stride - 1) or stride < 1:
            raise ValueError(f"SimpleFeaturePyramid needs a power-of-two input stride, got {stride}")
        self.out_channels = []
        branches = []
        for target in LEVEL_STRIDES:
            steps, layers, c = int(round(math.log2(target / stride))), [], channels
            for _ in range(-steps):                                           # upsample x2 per step
                layers += [nn.ConvTranspose2d(c, c // 2, 2, stride=2), nn.BatchNorm2d(c // 2), nn.GELU()]
                c //= 2
            for _ in range(steps):                                            # downsample x2 per step
                layers += [nn.Conv2d(c, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.GELU()]
            branches.append(nn.Sequential(*layers) if layers else nn.Identity())
            self.out_channels.append(c)
        self.branches = nn.ModuleList(branches)

    def forward(self, feature: torch.Tensor) -> list[torch.Tensor]:
        """[B, C, S/s, S/s] -> [B, C_l, S/8, S/8], [.., S/16, S/16], [.., S/32, S/32]."""
        return [branch(feature) for branch in self.branches]


class YOLOv3Head(nn.Module):
    """The YOLOv3 neck + prediction branches. in_channels for strides (8, 16, 32)."""

    def __init__(self, in_channels: list[int], num_classes: int, width: int, num_anchors: int = 3):
        super().__init__()
        c8, c16, c32 = in_channels
        w32, w16, w8 = width, width // 2, width // 4
        # a single class needs no class channel: its probability is 1 wherever there is an object
        channels_per_anchor = 5 + (num_classes if num_classes > 1 else 0)
        outputs = num_anchors * channels_per_anchor
        self.block32 = nn.Sequential(conv_bn(c32, w32, 1), conv_bn(w32, 2 * w32, 3), conv_bn(2 * w32, w32, 1))
        self.lateral32 = conv_bn(w32, w16, 1)
        self.block16 = nn.Sequential(conv_bn(c16 + w16, w16, 1), conv_bn(w16, 2 * w16, 3), conv_bn(2 * w16, w16, 1))
        self.lateral16 = conv_bn(w16, w8, 1)
        self.block8 = nn.Sequential(conv_bn(c8 + w8, w8, 1), conv_bn(w8, 2 * w8, 3), conv_bn(2 * w8, w8, 1))
        self.predict = nn.ModuleList(nn.Sequential(conv_bn(w, 2 * w, 3), nn.Conv2d(2 * w, outputs, 1))
                                     for w in (w8, w16, w32))
        for branch in self.predict:
            # objectness prior of 1% so that thousands of empty cells do not swamp the first steps
            bias = branch[-1].bias.view(num_anchors, channels_per_anchor)
            nn.init.zeros_(bias)
            nn.init.constant_(bias[:, 4], -math.log(99.0))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features at strides 8, 16, 32 -> raw predictions [B, A*(5+K), H_l, W_l] per level, fine to coarse."""
        f8, f16, f32 = features
        x32 = self.block32(f32)
        x16 = self.block16(torch.cat([F.interpolate(self.lateral32(x32), size=f16.shape[-2:], mode="nearest"), f16], 1))
        x8 = self.block8(torch.cat([F.interpolate(self.lateral16(x16), size=f8.shape[-2:], mode="nearest"), f8], 1))
        return [branch(x) for branch, x in zip(self.predict, (x8, x16, x32))]


class YOLOv3(nn.Module):
    """Encoder (ResNet or ViT of cgns.models.encoders) + YOLOv3 head.

    forward(images [B,3,S,S]) -> list of 3 raw maps [B, A, H_l, W_l, 5+K'] (tx, ty, tw, th, objectness, class logits;
        K' = K for K > 1 classes, 0 for a single class).
    loss(raw, boxes_list, labels_list=None) -> dict of named loss terms (scalars).
    detect(images, conf_thresh, nms_thresh) -> per image dict(boxes [n,4] xyxy px, scores [n], labels [n]).
    """

    def __init__(self, encoder: nn.Module, config: YOLOv3Config, freeze_encoder: bool = True,
                 whitening: nn.Module | None = None):
        super().__init__()
        if whitening is not None and not freeze_encoder:
            raise ValueError("YOLOv3: feature whitening is fitted on frozen features; it cannot be combined with "
                             "fine-tuning")
        self.config = config
        self.encoder = encoder
        self.freeze_encoder = freeze_encoder
        self.whitening = whitening   # optional fixed MapWhitening of the encoded maps (cgns.models.whitening)
        if freeze_encoder:
            encoder.requires_grad_(False)
        strides = list(encoder.pyramid_strides)
        channels = list(encoder.pyramid_channels)
        if all(s in strides for s in LEVEL_STRIDES):
            # the last map at each stride (ResNet-50: layer2, layer3, layer4)
            self.level_index = [max(i for i, s in enumerate(strides) if s == t) for t in LEVEL_STRIDES]
            self.pyramid = None
            in_channels = [channels[i] for i in self.level_index]
        else:
            # ViT: every map has one stride; build the three levels from the last block (or all pyramid blocks)
            self.level_index = list(range(len(strides))) if config.vit_blocks == "all" else [len(strides) - 1]
            self.pyramid = SimpleFeaturePyramid(sum(channels[i] for i in self.level_index), strides[-1])
            in_channels = self.pyramid.out_channels
        self.encoded_channels = [channels[i] for i in self.level_index]   # channels of encode()'s maps
        self.head = YOLOv3Head(in_channels, config.num_classes, config.width)
        self.register_buffer("anchors", config.anchors(), persistent=False)               # [9, 2] px

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()   # frozen backbone: BatchNorm statistics stay those of pretraining
        return self

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [B,3,S,S] -> the encoder maps the head reads: ResNet [layer2, layer3, layer4] at strides 8/16/32,
        ViT [last block map] (vit_blocks 'all': every pyramid block's map) at stride 16. Without gradient when the
        encoder is frozen (then they can be cached)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            pyramid = self.encoder.feature_pyramid(images)
        return [pyramid[i] for i in self.level_index]

    def forward(self, images: torch.Tensor | None = None, *, features: list[torch.Tensor] | None = None
                ) -> list[torch.Tensor]:
        """images [B,3,S,S] (or precomputed features = encode(images)) -> 3 raw maps [B, A, H_l, W_l, 5+K'].
        The whitening, when set, applies to either (a feature cache stores the maps before it)."""
        if features is None:
            features = self.encode(images)
        if self.whitening is not None:
            features = self.whitening(features)
        if self.pyramid is None:
            levels = features
        else:   # one ViT map, or (vit_blocks 'all') several concatenated along channels; no copy for one
            levels = self.pyramid(features[0] if len(features) == 1 else torch.cat(features, dim=1))
        raw = []
        for out in self.head(levels):
            b, _, h, w = out.shape
            # [B, A*(5+K'), H, W] -> [B, A, H, W, 5+K']
            raw.append(out.view(b, 3, -1, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return raw

    # ------------------------------------------------------------------------------------------------ decoding
    def level_anchors(self, level: int) -> torch.Tensor:
        return self.anchors[3 * level:3 * level + 3]                                      # [3, 2]

    def decode_level(self, out: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One raw map [B, A, H, W, 5+K'] -> boxes [B, A, H, W, 4] xyxy px, objectness prob [B, A, H, W],
        class probs [B, A, H, W, K] (all ones for a single class: it has no class channel)."""
        _, _, h, w, _ = out.shape
        gy, gx = torch.meshgrid(torch.arange(h, device=out.device), torch.arange(w, device=out.device), indexing="ij")
        cell = torch.stack([gx, gy], -1)[None, None]                                     # [1, 1, H, W, 2]
        offsets = torch.cat([out[..., :2].sigmoid(), out[..., 2:4]], -1)                 # [B, A, H, W, 4]
        anchor_wh = self.level_anchors(level)[None, :, None, None, :]                    # [1, A, 1, 1, 2]
        boxes = decode_boxes(cell, offsets, anchor_wh, LEVEL_STRIDES[level])
        classes = out[..., 5:].sigmoid() if out.shape[-1] > 5 else torch.ones_like(out[..., 4:5])
        return boxes, out[..., 4].sigmoid(), classes

    def decode(self, raw: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """raw maps -> boxes [B, N, 4] xyxy px, objectness prob [B, N], class probs [B, N, K] (N over all levels)."""
        decoded = [self.decode_level(out, level) for level, out in enumerate(raw)]
        batch = raw[0].shape[0]
        return (torch.cat([d[0].reshape(batch, -1, 4) for d in decoded], 1),
                torch.cat([d[1].reshape(batch, -1) for d in decoded], 1),
                torch.cat([d[2].reshape(batch, -1, d[2].shape[-1]) for d in decoded], 1))

    @torch.no_grad()
    def detect(self, images: torch.Tensor, conf_thresh: float = 0.5, nms_thresh: float = 0.5) -> list[dict]:
        """images [B,3,S,S] -> per image dict(boxes [n,4] xyxy px, scores [n], labels [n]); see postprocess."""
        return self.postprocess(self(images), conf_thresh, nms_thresh)

    @torch.no_grad()
    def postprocess(self, raw: list[torch.Tensor], conf_thresh: float = 0.5, nms_thresh: float = 0.5) -> list[dict]:
        """As the original: keep predictions with objectness >= conf_thresh, score = objectness x class prob,
        class-aware NMS at nms_thresh, at most max_detections per image (boxes clipped to the image)."""
        boxes, objectness, classes = self.decode(raw)
        boxes = boxes.clamp(0, self.config.image_size)
        results = []
        for img_boxes, img_obj, img_cls in zip(boxes, objectness, classes):
            keep = img_obj >= conf_thresh
            class_prob, labels = img_cls[keep].max(-1)
            scores, img_boxes = img_obj[keep] * class_prob, img_boxes[keep]
            if len(scores) > self.config.pre_nms_top_k:
                top = scores.topk(self.config.pre_nms_top_k).indices
                scores, img_boxes, labels = scores[top], img_boxes[top], labels[top]
            kept = batched_nms(img_boxes, scores, labels, nms_thresh)[:self.config.max_detections]
            results.append(dict(boxes=img_boxes[kept], scores=scores[kept], labels=labels[kept]))
        return results

    # --------------------------------------------------------------------------------------------------- losses
    def loss(self, raw: list[torch.Tensor], boxes_list: list[torch.Tensor],
             labels_list: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """YOLOv3 losses, summed over cells and divided by the batch size.

        raw: forward() output; boxes_list: per image float[n_i, 4] xyxy px (n_i may be 0); labels_list: per image
        long[n_i] (default: class 0). Each box is assigned to the anchor (of all 9) with the best shape IoU, at the
        cell holding its centre. Terms: box (BCE on the in-cell centre, squared error on log-size, weighted by
        2 - relative area), objectness (BCE; negatives whose decoded box overlaps a true box by more than
        ignore_thresh are ignored), class (BCE, positives only).
        """
        device, batch_size = raw[0].device, raw[0].shape[0]
        if labels_list is None:
            labels_list = [torch.zeros(len(b), dtype=torch.long, device=device) for b in boxes_list]
        image_index = torch.cat([torch.full((len(b),), i, dtype=torch.long)
                                 for i, b in enumerate(boxes_list)]).to(device)
        boxes = torch.cat([b.reshape(-1, 4) for b in boxes_list]).to(device=device, dtype=torch.float32)
        labels = torch.cat([lab.reshape(-1) for lab in labels_list]).to(device=device, dtype=torch.long)
        size = boxes[:, 2:] - boxes[:, :2]
        valid = (size > 0).all(-1)                              # zero-area boxes cannot be matched by any anchor
        image_index, boxes, labels, size = image_index[valid], boxes[valid], labels[valid], size[valid]

        # best of the 9 anchors by shape IoU (both centred): [n, 9]
        inter = torch.minimum(size[:, None], self.anchors[None]).prod(-1)
        shape_iou = inter / (size.prod(-1)[:, None] + self.anchors.prod(-1)[None] - inter)
        best = shape_iou.argmax(-1)

        # ground truth padded per image for the ignore rule: [B, n_max, 4] (boxes are grouped by image, in order)
        counts = torch.bincount(image_index, minlength=batch_size)
        slot = torch.arange(len(boxes), device=device) - (counts.cumsum(0) - counts)[image_index]
        n_max = max(int(counts.max()) if len(boxes) else 0, 1)
        padded = boxes.new_zeros(batch_size, n_max, 4)
        padded[image_index, slot] = boxes
        present = torch.zeros(batch_size, n_max, dtype=torch.bool, device=device)
        present[image_index, slot] = True

        zero = raw[0].sum() * 0
        terms = dict(box=zero, objectness=zero)
        if self.config.num_classes > 1:
            terms["classes"] = zero
        for level, out in enumerate(raw):
            _, _, h, w, _ = out.shape
            stride = LEVEL_STRIDES[level]
            on_level = best // 3 == level
            anchor = best[on_level] % 3
            b_idx, lvl_boxes, lvl_labels = image_index[on_level], boxes[on_level], labels[on_level]
            cell, target = encode_boxes(lvl_boxes, self.anchors[best[on_level]], stride, (h, w))
            gx, gy = cell[:, 0], cell[:, 1]

            positive = torch.zeros(out.shape[:4], dtype=torch.bool, device=device)     # [B, A, H, W]
            positive[b_idx, anchor, gy, gx] = True
            with torch.no_grad():
                pred_boxes = self.decode_level(out.detach(), level)[0].reshape(batch_size, -1, 4)
                overlap = box_iou(pred_boxes, padded)                                    # [B, A*H*W, n_max]
                overlap = overlap.masked_fill(~present[:, None, :], 0).amax(-1)
                ignore = overlap.view(out.shape[:4]) > self.config.ignore_thresh
            negative = ~positive & ~ignore

            pred = out[b_idx, anchor, gy, gx]                                            # [n_l, 5+K]
            weight = 2 - (lvl_boxes[:, 2:] - lvl_boxes[:, :2]).prod(-1) / self.config.image_size ** 2
            xy = F.binary_cross_entropy_with_logits(pred[:, :2], target[:, :2].clamp(0, 1), reduction="none").sum(-1)
            wh = (pred[:, 2:4] - target[:, 2:]).pow(2).sum(-1)
            terms["box"] = terms["box"] + ((xy + wh) * weight).sum()
            obj_logit = out[..., 4]
            terms["objectness"] = terms["objectness"] + (
                F.binary_cross_entropy_with_logits(obj_logit[positive], torch.ones_like(obj_logit[positive]),
                                                   reduction="sum")
                + F.binary_cross_entropy_with_logits(obj_logit[negative], torch.zeros_like(obj_logit[negative]),
                                                     reduction="sum"))
            if self.config.num_classes > 1:
                one_hot = F.one_hot(lvl_labels, self.config.num_classes).to(pred.dtype)
                terms["classes"] = terms["classes"] + F.binary_cross_entropy_with_logits(
                    pred[:, 5:], one_hot, reduction="sum")
        return {name: value / batch_size for name, value in terms.items()}


def build_yolov3(encoder: nn.Module, image_size: int = 224, num_classes: int = 1, width: int = 256,
                 freeze_encoder: bool = True, whitening: nn.Module | None = None, **config) -> YOLOv3:
    return YOLOv3(encoder, YOLOv3Config(image_size=image_size, num_classes=num_classes, width=width, **config),
                  freeze_encoder=freeze_encoder, whitening=whitening)
