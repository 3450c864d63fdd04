"""Detection mAP (pycocotools, IoU 0.4:0.05:0.75) against values computed by hand."""
import math

import torch

from cgns.eval.detection import IOU_THRESHOLDS, detection_metrics

# Four images. Ground truth: a 10x10 box in images 0, 1 and 2; image 3 has none.
# Predictions: image 0 one box of IoU 0.62 (score .9); image 1 one of IoU 0.47 (.8) and a miss (.7);
# image 2 nothing; image 3 one box (.75), a false positive on an image without ground truth.
GROUND_TRUTH = [torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[0.0, 0, 10, 10]]),
                torch.tensor([[20.0, 20, 40, 40]]), torch.zeros(0, 4)]
PREDICTIONS = [dict(boxes=torch.tensor([[0.0, 0, 10, 6.2]]), scores=torch.tensor([0.9])),
               dict(boxes=torch.tensor([[0.0, 0, 10, 4.7], [50, 50, 60, 60]]), scores=torch.tensor([0.8, 0.7])),
               dict(boxes=torch.zeros(0, 4), scores=torch.zeros(0)),
               dict(boxes=torch.tensor([[0.0, 0, 5, 5]]), scores=torch.tensor([0.75]))]


def test_thresholds_are_point_four_to_point_seven_five():
    assert [round(t, 2) for t in IOU_THRESHOLDS] == [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]


def test_map_matches_hand_computation():
    metrics = detection_metrics(PREDICTIONS, GROUND_TRUTH)
    # All images, detections by score: TP(.9) TP(.8, only at IoU <= .47) FP(.75) FP(.7); 3 boxes.
    # IoU .40/.45: recall reaches 2/3 at precision 1 -> COCO 101-point AP = 67/101 (points 0, .01, ..., .66).
    # IoU .50/.55/.60: only the first is a hit -> recall 1/3 at precision 1 -> 34/101.  IoU .65+: 0.
    assert math.isclose(metrics["mAP"], (2 * 67 + 3 * 34) / (8 * 101), rel_tol=1e-9)
    assert math.isclose(metrics["AP50"], 34 / 101, rel_tol=1e-9)
    # The original's variant keeps images 0 and 1 only: 2 boxes, detections TP TP FP at .40/.45 -> AP 1;
    # TP FP FP at .50-.60 -> recall 1/2 -> 51/101.
    assert math.isclose(metrics["skip_empty/mAP"], (2 * 1 + 3 * 51 / 101) / 8, rel_tol=1e-9)
    assert math.isclose(metrics["skip_empty/AP50"], 51 / 101, rel_tol=1e-9)
    assert (metrics["images"], metrics["boxes"], metrics["predictions"]) == (4, 3, 4)
    assert (metrics["skip_empty/images"], metrics["skip_empty/boxes"]) == (2, 2)


def test_perfect_predictions_score_one_and_nothing_scores_zero(capsys):
    perfect = [dict(boxes=gt, scores=torch.ones(len(gt))) for gt in GROUND_TRUTH]
    assert detection_metrics(perfect, GROUND_TRUTH)["mAP"] == 1.0
    empty = [dict(boxes=torch.zeros(0, 4), scores=torch.zeros(0)) for _ in GROUND_TRUTH]
    metrics = detection_metrics(empty, GROUND_TRUTH)
    assert metrics["mAP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["predictions"] == 0
    assert math.isnan(metrics["skip_empty/mAP"]) and metrics["skip_empty/images"] == 0
    assert capsys.readouterr().out == ""          # pycocotools' progress prints are swallowed


def test_no_ground_truth_at_all_is_undefined_not_perfect():
    metrics = detection_metrics(PREDICTIONS[3:], GROUND_TRUTH[3:])
    assert math.isnan(metrics["mAP"]) and metrics["boxes"] == 0
