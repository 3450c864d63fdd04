"""The evaluation metrics against hand computations and brute-force loops: CNR, mIoU, precision@K, CheXzero's
binary softmax, and MS-CXR boxes through the resize + pad + crop of the pretraining eval transform."""
import math

import pytest
import torch

from cgns.eval.grounding import box_mask, cnr, mean_iou
from cgns.eval.metrics import binary_summary, multiclass_summary
from cgns.eval.retrieval import precision_at_k
from cgns.evaluate.grounding import box_in_input
from cgns.evaluate.zeroshot import binary_probability


def test_cnr_by_hand():
    values = torch.tensor([[4.0, 2.0], [1.0, 3.0]])
    inside = torch.tensor([[True, True], [False, False]])
    # inside {4, 2}: mean 3, var 1; outside {1, 3}: mean 2, var 1 -> |3 - 2| / sqrt(2)
    assert cnr(values, inside) == pytest.approx(1 / math.sqrt(2))
    # the outside region restricted to the valid pixels: only {3} -> var 0 -> |3 - 3| / 1 = 0
    valid = torch.tensor([[True, True], [False, True]])
    assert cnr(values, inside, valid) == pytest.approx(0.0)
    assert math.isnan(cnr(values, torch.ones(2, 2, dtype=torch.bool)))


def test_mean_iou_by_hand():
    values = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    inside = torch.tensor([[False, True], [True, False]])
    # t = .1, .2: 3 predicted, 2 right -> 2/3; t = .3, .4, .5: {0.5, 1} -> 1; t = .6 ... .9: {1} -> 1/2
    assert mean_iou(values, inside) == pytest.approx((2 * 2 / 3 + 3 * 1 + 4 * 0.5) / 9)
    # min-max scaling: the same map shifted and stretched scores the same
    assert mean_iou(values * 7 - 3, inside) == pytest.approx(mean_iou(values, inside))


def test_box_mask_uses_pixel_centres():
    mask = box_mask((0.6, 1.0, 2.4, 3.0), 4)   # centres 0.5, 1.5, 2.5, 3.5: columns 1 only (1.5), rows 1, 2
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1:3, 1] = True
    assert torch.equal(mask, expected)


def test_precision_at_k_against_a_loop():
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(12, 6, generator=generator), dim=1)
    candidates = torch.nn.functional.normalize(torch.randn(15, 6, generator=generator), dim=1)
    q_labels = torch.randint(0, 3, (12,), generator=generator)
    c_labels = torch.randint(0, 3, (15,), generator=generator)
    got = precision_at_k(queries, candidates, q_labels, c_labels, ks=(1, 5, 10, 20))
    for k in (1, 5, 10, 20):
        per_query = []
        for i in range(12):
            scores = [(float(queries[i] @ candidates[j]), j) for j in range(15)]
            top = sorted(scores, key=lambda s: (-s[0], s[1]))[:min(k, 15)]
            per_query.append(sum(int(c_labels[j] == q_labels[i]) for _, j in top) / len(top))
        assert got[f"P@{k}"] == pytest.approx(sum(per_query) / 12)
        for c, entry in got["per_class"].items():
            mine = [p for p, label in zip(per_query, q_labels.tolist()) if label == c]
            assert entry[f"P@{k}"] == pytest.approx(sum(mine) / len(mine))
            assert entry["n"] == len(mine)


def test_chexzero_softmax_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positive, negative = torch.tensor([0.6, 0.8]), torch.tensor([0.8, 0.6])
    # image 0: i.p = 0.6, i.n = 0.8 -> e^0.6 / (e^0.6 + e^0.8); image 1 the other way round
    expected = [math.exp(0.6) / (math.exp(0.6) + math.exp(0.8)), math.exp(0.8) / (math.exp(0.8) + math.exp(0.6))]
    assert binary_probability(image, positive, negative).tolist() == pytest.approx(expected)


def test_binary_and_multiclass_summaries_by_hand():
    summary = binary_summary([0.9, 0.4, 0.6, 0.2], [1, 1, 0, 0])
    # ranks: positives 0.9, 0.4; negatives 0.6, 0.2 -> pairs won 3 of 4; predicted [1, 0, 1, 0]
    assert summary["auroc"] == pytest.approx(0.75)
    assert summary["accuracy"] == pytest.approx(0.5)
    assert summary["f1"] == pytest.approx(0.5)
    assert binary_summary([0.9, 0.4], [1, 1])["auroc"] is None
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    result = multiclass_summary(scores, [0, 1, 1, 2], ["a", "b", "c"])   # predicted 0, 1, 2, 0
    assert result["accuracy"] == pytest.approx(0.5)
    # F1: a: P 1/2 R 1 -> 2/3; b: P 1 R 1/2 -> 2/3; c: P 0 R 0 -> 0
    assert result["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert result["confusion"] == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]


def test_ms_cxr_box_through_resize_pad_and_crop_by_hand():
    row = {"x": 50.0, "y": 25.0, "w": 100.0, "h": 50.0, "image_width": 200.0, "image_height": 100.0}
    box, area = box_in_input(row, cache_size=256, image_size=64)
    # cache: scale 256 / 200 = 1.28, the 256 x 128 image padded by 64 rows on top; box -> (64, 96, 192, 160).
    # Then 256 -> 73 (= round(64 / (224 / 256))) and a centre crop of 64 from 73 (offset 4).
    f = 73 / 256
    assert box == pytest.approx((64 * f - 4, 96 * f - 4, 192 * f - 4, 160 * f - 4))
    assert area == pytest.approx((0 * f - 4, 64 * f - 4, 256 * f - 4, 192 * f - 4))
