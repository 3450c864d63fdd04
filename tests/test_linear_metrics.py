"""Downstream metrics against hand-computed values: AUROC (macro, per class, undefined classes), accuracy, Dice."""
import math
import warnings

import pytest
import torch

from cgns.eval.metrics import accuracy, auroc, dice_per_image


def test_auroc_matches_hand_computed_pair_counts():
    # class a: positives {.35, .8} vs negatives {.1, .4}: 3 of 4 pairs ordered -> 0.75
    # class b: positives {.9, .6} vs negatives {.2, .7}: 3 of 4 -> 0.75
    # class c: positive {.5} vs negatives {.5, .5, .1}: ties count half -> (0.5 + 0.5 + 1) / 3
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.4, 0.2, 0.5], [0.35, 0.6, 0.5], [0.8, 0.7, 0.1]])
    labels = torch.tensor([[0, 1, 1], [0, 0, 0], [1, 1, 0], [1, 0, 0]]).float()
    result = auroc(scores, labels, ["a", "b", "c"], split="test")
    assert result["per_class"]["a"] == pytest.approx(0.75)
    assert result["per_class"]["b"] == pytest.approx(0.75)
    assert result["per_class"]["c"] == pytest.approx(2 / 3)
    assert result["macro"] == pytest.approx((0.75 + 0.75 + 2 / 3) / 3)
    assert result["undefined"] == []


def test_auroc_multiclass_ids_are_one_vs_rest():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
    ids = torch.tensor([0, 1, 2, 1])
    result = auroc(probs, ids, ["normal", "pneumonia", "COVID-19"])
    # normal: positive .7 vs {.2, .1, .4} -> 1.0 ; pneumonia: {.5, .4} vs {.2, .3} -> 1.0 ; covid: .6 vs rest -> 1.0
    assert result["per_class"] == {"normal": 1.0, "pneumonia": 1.0, "COVID-19": 1.0}
    assert accuracy(probs, ids) == pytest.approx(0.75)  # the last row ties 0.4/0.4 -> argmax takes class 0


def test_class_missing_from_split_is_reported_not_raised():
    scores = torch.tensor([[0.2, 0.9], [0.8, 0.1], [0.6, 0.3]])
    labels = torch.tensor([[0, 0], [1, 0], [1, 0]]).float()  # 'Edema' has no positive in this split
    with pytest.warns(UserWarning, match=r"Edema.*valid"):
        result = auroc(scores, labels, ["Atelectasis", "Edema"], split="valid")
    assert result["per_class"]["Edema"] is None
    assert result["undefined"] == ["Edema"]
    assert result["macro"] == pytest.approx(1.0)  # the defined class only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert auroc(torch.zeros(3), torch.zeros(3), ["x"], split="test")["macro"] is None


def test_dice_per_image_hand_values_and_empty_rules():
    probs = torch.zeros(5, 1, 2, 2)
    truth = torch.zeros(5, 1, 2, 2)
    probs[0, 0] = torch.tensor([[0.6, 0.4], [0.9, 0.1]])  # predicted {(0,0), (1,0)}
    truth[0, 0] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # truth {(0,0), (0,1)} -> 2*1 / (2+2) = 0.5
    # image 1: empty vs empty -> 1
    truth[2, 0, 0, 0] = 1                                  # image 2: nothing predicted, something there -> 0
    probs[3, 0, 1, 1] = 0.7                                # image 3: false alarm on an empty image -> 0
    probs[4, 0] = 0.5                                      # image 4: exactly 0.5 is not positive -> empty
    result = dice_per_image(probs, truth)
    assert result.tolist() == pytest.approx([0.5, 1.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="prediction"):
        dice_per_image(probs[:, 0], truth)


def test_accuracy_on_empty_split_is_nan():
    assert math.isnan(accuracy(torch.zeros(0, 3), torch.zeros(0)))
