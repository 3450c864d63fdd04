"""Downstream metrics: AUROC (macro + per class), accuracy, and per-image Dice.

Undefined values are reported, not raised: a class with a single label value in a split has no ROC curve, so its
AUROC is None (JSON null) and one warning names the class and the split; the macro average is taken over the
classes that are defined (None when none is).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values)


def auroc(scores, labels, class_names: Sequence[str], split: str = "", warn: bool = True) -> dict:
    """Per-class and macro AUROC.

    scores: [N, C] (any monotone score, e.g. logits or probabilities) or [N] when C == 1.
    labels: [N, C] multi-label in {0, 1}, or [N] integer class ids (one-vs-rest per class; multi-class case).
    warn: emit the warning for undefined classes (callers evaluating every epoch warn once).
    Returns {"macro": float | None, "per_class": {name: float | None}, "undefined": [names]}.
    """
    scores = _as_numpy(scores)
    labels = _as_numpy(labels)
    if scores.ndim == 1:
        scores = scores[:, None]
    num_classes = scores.shape[1]
    if len(class_names) != num_classes:
        raise ValueError(f"auroc: {len(class_names)} class names for {num_classes} score columns")
    if labels.ndim == 1 and num_classes > 1:  # integer class ids -> one-hot
        onehot = np.zeros((labels.shape[0], num_classes))
        onehot[np.arange(labels.shape[0]), labels.astype(int)] = 1
        labels = onehot
    elif labels.ndim == 1:
        labels = labels[:, None]
    if labels.shape != scores.shape:
        raise ValueError(f"auroc: labels of shape {labels.shape} do not match scores of shape {scores.shape}")

    per_class, undefined = {}, []
    for c, name in enumerate(class_names):
        column = labels[:, c]
        if np.unique(column).size < 2:
            per_class[name] = None
            undefined.append(name)
        else:
            per_class[name] = float(roc_auc_score(column, scores[:, c]))
    if undefined and warn:
        where = f"split '{split}'" if split else "this split"
        warnings.warn(f"AUROC undefined for class(es) {undefined} in {where}: only one label value present "
                      f"({labels.shape[0]} samples); reported as null and left out of the macro average",
                      stacklevel=2)
    defined = [v for v in per_class.values() if v is not None]
    macro = float(np.mean(defined)) if defined else None
    return {"macro": macro, "per_class": per_class, "undefined": undefined}


def accuracy(logits, labels) -> float:
    """Top-1 accuracy. logits [N, C], labels [N] integer class ids."""
    logits = _as_numpy(logits)
    labels = _as_numpy(labels).astype(int)
    if logits.shape[0] == 0:
        return float("nan")
    return float((logits.argmax(axis=1) == labels).mean())


def dice_per_image(probs: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Dice of the thresholded prediction against the target mask, one value per image.

    probs: [B, 1, H, W] or [B, H, W] probabilities in [0, 1]; target: same shape, {0, 1}.
    A pixel is predicted positive when prob > threshold. Empty prediction vs empty truth scores 1 (nothing to find,
    nothing found); empty vs non-empty scores 0. Returns [B] float.
    """
    if probs.shape != target.shape:
        raise ValueError(f"dice_per_image: prediction {tuple(probs.shape)} vs target {tuple(target.shape)}")
    pred = (probs > threshold).flatten(1).float()  # [B, H*W]
    truth = (target > 0.5).flatten(1).float()
    intersection = (pred * truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    dice = 2 * intersection / total.clamp(min=1)
    return torch.where(total == 0, torch.ones_like(dice), dice)


def multiclass_summary(scores, labels, class_names: Sequence[str]) -> dict:
    """Single-label classification by arg-max: {"accuracy", "macro_f1", "per_class": {name: {"precision",
    "recall", "f1", "n"}}, "confusion": [[count]] (rows true, columns predicted)}.
    scores [N, C], labels [N] integer class ids."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    scores, labels = _as_numpy(scores), _as_numpy(labels).astype(int)
    predicted = scores.argmax(axis=1)
    ids = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=ids, zero_division=0)
    return {"accuracy": float((predicted == labels).mean()), "macro_f1": float(np.mean(f1)),
            "per_class": {name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                                 "n": int(support[c])} for c, name in enumerate(class_names)},
            "confusion": confusion_matrix(labels, predicted, labels=ids).tolist()}


def binary_summary(probability, labels, threshold: float = 0.5) -> dict:
    """{"auroc" (None when one label value only), "accuracy", "f1", "n", "positives"} of P(positive) [N] against
    labels [N] in {0, 1}; predicted positive when probability > threshold."""
    from sklearn.metrics import f1_score

    probability, labels = _as_numpy(probability).astype(float), _as_numpy(labels).astype(int)
    predicted = (probability > threshold).astype(int)
    defined = np.unique(labels).size == 2
    return {"auroc": float(roc_auc_score(labels, probability)) if defined else None,
            "accuracy": float((predicted == labels).mean()), "f1": float(f1_score(labels, predicted, zero_division=0)),
            "n": int(labels.size), "positives": int(labels.sum())}
