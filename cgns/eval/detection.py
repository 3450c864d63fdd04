"""Detection mAP through pycocotools, over IoU thresholds 0.4:0.05:0.75 (the MGCA / CM-CGNS protocol).

Two variants are reported:
- over ALL test images (images without ground truth still contribute their false positives, images without any
  prediction still contribute their missed boxes) — the honest number;
- "skip_empty" — the original code's variant, which scores only images that have both a prediction and a ground
  truth box; it inflates scores and is given only to compare with published numbers.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IOU_THRESHOLDS = np.linspace(0.4, 0.75, 8)    # 0.40, 0.45, ..., 0.75 (linspace: no float drift at the ends)


def _as_numpy(values, shape) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(shape)


def _coco(images: list[int], annotations: list[dict]) -> COCO:
    coco = COCO()   # built in memory; COCO(None) prints nothing, createIndex does (silenced below)
    coco.dataset = dict(images=[dict(id=i) for i in images], annotations=annotations,
                        categories=[dict(id=1, name="object")])
    coco.createIndex()
    return coco


def coco_average_precision(predictions: list[dict], ground_truths: list, iou_thresholds=IOU_THRESHOLDS
                           ) -> dict[str, float]:
    """pycocotools AP for one class.

    predictions: per image dict(boxes [n,4] xyxy, scores [n]); ground_truths: per image boxes [m,4] xyxy (same units).
    Returns mAP (mean AP over iou_thresholds), AP50 (AP at IoU 0.5, when 0.5 is among them), and the number of images,
    ground-truth boxes and predictions scored. AP is 0 when there are boxes but no predictions, and NaN when the set
    holds no ground-truth box at all (AP is undefined then).
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"predictions for {len(predictions)} images but ground truth for {len(ground_truths)}")
    gt_anns, dt_anns = [], []
    for image_id, (pred, gt) in enumerate(zip(predictions, ground_truths)):
        for x1, y1, x2, y2 in _as_numpy(gt, (-1, 4)):
            gt_anns.append(dict(id=len(gt_anns) + 1, image_id=image_id, category_id=1, iscrowd=0,
                                bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1)))
        boxes, scores = _as_numpy(pred["boxes"], (-1, 4)), _as_numpy(pred["scores"], (-1,))
        for (x1, y1, x2, y2), score in zip(boxes, scores):
            dt_anns.append(dict(id=len(dt_anns) + 1, image_id=image_id, category_id=1, score=float(score),
                                bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1)))
    result = dict(images=len(predictions), boxes=len(gt_anns), predictions=len(dt_anns))
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    if not gt_anns:
        return dict(mAP=float("nan"), AP50=float("nan"), **result)
    with contextlib.redirect_stdout(io.StringIO()):     # pycocotools prints progress on every call
        coco_gt = _coco(list(range(len(predictions))), gt_anns)
        coco_dt = _coco(list(range(len(predictions))), dt_anns)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.iouThrs = thresholds
        evaluator.evaluate()
        evaluator.accumulate()
    # precision [T, R, K, A, M]: thresholds, 101 recall points, class, area range (0 = all), maxDets (-1 = 100);
    # (-1 would mark "no ground truth", excluded above; with boxes but no prediction pycocotools leaves 0s)
    precision = evaluator.eval["precision"][:, :, 0, 0, -1]
    per_threshold = np.where(precision > -1, precision, 0.0).mean(axis=1)            # [T]
    result["mAP"] = float(per_threshold.mean())
    at_half = np.flatnonzero(np.isclose(thresholds, 0.5))
    result["AP50"] = float(per_threshold[at_half[0]]) if len(at_half) else float("nan")
    return result


def detection_metrics(predictions: list[dict], ground_truths: list, iou_thresholds=IOU_THRESHOLDS
                      ) -> dict[str, float]:
    """Both variants, flat: mAP, AP50 (all images) and skip_empty/mAP, skip_empty/AP50 (the original's variant:
    only images with at least one prediction and one ground-truth box), plus image / box / prediction counts."""
    metrics = coco_average_precision(predictions, ground_truths, iou_thresholds)
    kept = [i for i, (pred, gt) in enumerate(zip(predictions, ground_truths))
            if len(_as_numpy(pred["scores"], (-1,))) and len(_as_numpy(gt, (-1, 4)))]
    skipped = coco_average_precision([predictions[i] for i in kept], [ground_truths[i] for i in kept], iou_thresholds)
    metrics.update({f"skip_empty/{name}": value for name, value in skipped.items()})
    return metrics
