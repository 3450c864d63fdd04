"""Segmentation (SIIM pneumothorax, RSNA boxes-as-masks): encoder (frozen by default) + U-Net decoder.

Protocol (DATASETS.md): loss 10 x focal (gamma 2) - log(soft Dice); metric Dice per image at threshold 0.5 with
empty-vs-empty = 1, averaged over images; AdamW + cosine schedule; early stopping on validation Dice (ties broken by
the lower validation loss); test with the best epoch's decoder. Training images are augmented by the data pipeline
(segmentation augmentation of cgns.data.transforms, image and mask warped together).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from cgns.engine.features import load_frozen_encoder, sweep_whitening, whitening_candidates
from cgns.engine.schedule import lr_at, set_lr
from cgns.eval.metrics import auroc, dice_per_image
from cgns.models.unet import SegmentationModel, build_unet
from cgns.models.whitening import fit_map_moments, shrinkage_label

DATASETS = ("siim", "rsna")
FOCAL_WEIGHT = 10.0
AUTO_PRIOR_RANGE = (0.01, 0.5)     # --foreground-prior auto: the training masks' share, clamped to this range


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean over pixels of (1 - p_t)^gamma * BCE. logits, target [B, 1, H, W]."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    # log(1 - p_t) = logsigmoid(-logit * sign), sign = +1 for positives, -1 for negatives (numerically stable)
    log_one_minus_pt = F.logsigmoid(-logits * (2 * target - 1))
    return (torch.exp(gamma * log_one_minus_pt) * bce).mean()


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice over the whole batch (as MGCA), in (0, 1]. logits, target [B, 1, H, W]."""
    probs = torch.sigmoid(logits)
    intersection = (probs * target).sum()
    return (2 * intersection + smooth) / (probs.sum() + target.sum() + smooth)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> dict:
    """{'focal', 'dice', 'total'} with total = 10 x focal - log(soft Dice)."""
    focal, dice = focal_loss(logits, target), soft_dice(logits, target)
    return {"focal": focal, "dice": dice, "total": FOCAL_WEIGHT * focal - torch.log(dice)}


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=default_collate, generator=torch.Generator().manual_seed(seed) if shuffle else None)


@torch.no_grad()
def foreground_share(loader: DataLoader) -> float:
    """The share of mask pixels that are foreground over every image of `loader` (batches with "mask" [B, 1, H, W])."""
    positive, total = 0.0, 0
    for batch in loader:
        positive += float(batch["mask"].sum())
        total += batch["mask"].numel()
    if total == 0:
        raise ValueError("foreground_share: the loader yielded no mask pixels")
    return positive / total


def resolve_foreground_prior(prior, train_loader: Callable[[], DataLoader], log=print) -> float:
    """A number passes through; "auto" -> the training split's foreground share (over train_loader(), read only
    then), clamped to AUTO_PRIOR_RANGE."""
    if prior != "auto":
        return float(prior)
    share = foreground_share(train_loader())
    low, high = AUTO_PRIOR_RANGE
    resolved = min(max(share, low), high)
    log(f"  foreground prior auto: training masks are {100 * share:.2f}% foreground -> prior {resolved:.4f}")
    return resolved


@torch.no_grad()
def evaluate_segmentation(model: SegmentationModel, loader: DataLoader, device: str = "cpu",
                          keep: int = 0, pixel_auroc: bool = False) -> tuple[dict, list]:
    """Per-image Dice at 0.5 over a split, and up to `keep` (image, truth, prob) examples, positives first.

    dice: mean over all images (the protocol's number); dice_positive / dice_negative: over images with / without
    a mask (on negatives Dice is 1 for an empty prediction, else 0); empty_baseline: the score of predicting nothing
    anywhere (= the share of negatives), the trivial floor to compare `dice` with.
    pixel_auroc: also the AUROC of pixel probabilities vs truth over the whole split, a threshold-free check that
    the decoder ranks pneumothorax pixels first (0.5 = no localisation); None when the split has no positive pixel.
    """
    model.eval()
    dices, positive, losses, examples, pixels = [], [], [], [], []
    for batch in loader:
        images, masks = batch["image"].to(device), batch["mask"].to(device)
        logits = model(images)
        losses.append(float(segmentation_loss(logits, masks)["total"]) * images.shape[0])
        probs = torch.sigmoid(logits)
        dices.append(dice_per_image(probs, masks).cpu())
        positive.append(masks.flatten(1).amax(dim=1).cpu() > 0)
        if pixel_auroc:
            pixels.append((probs.flatten().cpu(), masks.flatten().cpu()))
        for image, mask, prob in zip(images.cpu(), masks.cpu(), probs.cpu()):
            examples.append((image, mask, prob))
    dice, positive = torch.cat(dices), torch.cat(positive)

    def mean_or_none(values: torch.Tensor):
        return float(values.mean()) if values.numel() else None

    metrics = {"dice": float(dice.mean()), "dice_positive": mean_or_none(dice[positive]),
               "dice_negative": mean_or_none(dice[~positive]), "empty_baseline": float((~positive).float().mean()),
               "loss": sum(losses) / len(dice), "num_images": int(dice.numel()),
               "num_positive": int(positive.sum())}
    if pixel_auroc:
        scores, truth = (torch.cat(part) for part in zip(*pixels))
        metrics["pixel_auroc"] = auroc(scores, truth, ["mask"], warn=False)["macro"]
    examples.sort(key=lambda e: -float(e[1].sum() > 0))  # stable: positives first, then data order
    return metrics, examples[:keep]


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_overlays(examples: list, out_dir: Path, prefix: str) -> list[Path]:
    """One PNG per example: image | ground truth (green) | prediction at 0.5 (red), side by side."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, (image, mask, prob) in enumerate(examples):
        grey = ((image[0].numpy() * 0.5 + 0.5).clip(0, 1) * 255).astype(np.uint8)  # undo mean .5 / std .5
        rgb = np.stack([grey] * 3, axis=-1)
        truth, pred = rgb.copy(), rgb.copy()
        truth[mask[0].numpy() > 0.5] = (0.5 * truth[mask[0].numpy() > 0.5] + [0, 127, 0]).astype(np.uint8)
        pred[prob[0].numpy() > 0.5] = (0.5 * pred[prob[0].numpy() > 0.5] + [127, 0, 0]).astype(np.uint8)
        path = out_dir / f"{prefix}_{n}.png"
        Image.fromarray(np.concatenate([rgb, truth, pred], axis=1)).save(path)
        paths.append(path)
    return paths


def train_segmentation(model: SegmentationModel, train_loader, val_loader, *, epochs: int, lr: float,
                       weight_decay: float, patience: int, device: str = "cpu", prior: Optional[float] = None,
                       log=print) -> dict:
    """AdamW + cosine over `epochs`; keeps the best state on val Dice. Returns {best_epoch, epochs_run, val}.
    prior: the decoder's starting foreground probability; after the first epoch a warning is logged when the
    training masks hold far more foreground than that (large structures such as lungs start almost unlearnable)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total_steps = max(1, epochs * len(train_loader))
    step, best, best_key, bad_epochs, epoch = 0, None, None, 0, -1
    seen_foreground, seen_pixels = torch.zeros((), device=device), 0     # epoch 0's masks, summed on the device
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        for batch in train_loader:
            set_lr(optimizer, lr_at(step, base_lr=lr, warmup_steps=0, total_steps=total_steps))
            masks = batch["mask"].to(device)
            logits = model(batch["image"].to(device))
            losses = segmentation_loss(logits, masks)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            step += 1
            if epoch == 0:
                seen_foreground, seen_pixels = seen_foreground + masks.sum(), seen_pixels + masks.numel()
        if epoch == 0 and prior is not None and seen_pixels:
            share = float(seen_foreground) / seen_pixels
            if share > 0.05 and share > 10 * prior:
                log(f"  warning: the training masks are {100 * share:.1f}% foreground but the decoder started at a "
                    f"{100 * prior:g}% prior; if validation Dice stays at 0, use --foreground-prior auto")
        val_metrics, _ = evaluate_segmentation(model, val_loader, device)
        key = (val_metrics["dice"], -val_metrics["loss"])
        if best_key is None or key > best_key:
            best_key, bad_epochs = key, 0
            trainable = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = {"state": trainable, "epoch": epoch, "val": val_metrics}
        else:
            bad_epochs += 1
        log(f"  epoch {epoch:3d} loss {losses['total'].item():.4f} (focal {losses['focal'].item():.4f} "
            f"dice {losses['dice'].item():.3f}) val_dice {val_metrics['dice']:.4f} "
            f"(pos {_fmt(val_metrics['dice_positive'])} neg {_fmt(val_metrics['dice_negative'])}) "
            f"({time.perf_counter() - start:.1f}s)")
        if bad_epochs >= patience:
            break
    model.load_state_dict(best["state"])
    return {"best_epoch": best["epoch"], "epochs_run": epoch + 1, "val": best["val"]}


def run_segmentation(dataset: str, *, data_root: Optional[os.PathLike] = None, encoder_name: Optional[str] = None,
                     image_size: Optional[int] = None, checkpoint: Optional[os.PathLike] = None,
                     image_weights: Optional[os.PathLike] = None, random_init: bool = False,
                     resize_checkpoint: bool = False,
                     finetune: bool = False, data_pcts: Sequence[float] = (1.0,), seed: int = 42,
                     epochs: int = 20, batch_size: int = 16, lr: float = 5e-4, weight_decay: float = 1e-6,
                     patience: int = 5, decoder_width: str = "base", foreground_prior: float | str = 0.01,
                     whiten_shrinkage: Sequence[Optional[float]] = (None,), device: str = "cpu",
                     output_dir: Optional[os.PathLike] = None, overlays: int = 4, num_workers: int = 0,
                     log=print) -> dict:
    """Train + evaluate for each training fraction -> {"<pct>": {"val": {...}, "test": {...}, "train": {...}}}.
    foreground_prior: the decoder's initial pixel probability (0.01; 0.5 = a zero output bias, p = 0.5 everywhere),
      or "auto": the training split's foreground share (per fraction), clamped to AUTO_PRIOR_RANGE. Recorded as the
      number used, per fraction, under "train".
    whiten_shrinkage: candidate shrinkages of a fixed whitening of the frozen encoder's maps (cgns.models.whitening;
      None = no whitening). Each candidate trains its own decoder (same seed); the best on validation (Dice, then
      loss) is tested; "whitening" records every candidate's validation Dice and the training maps' spectrum
      (MapMoments.spectrum: how far from isotropic they are).
    Writes <output_dir>/metrics.json (plus top-level val/test of the largest fraction) and overlay PNGs."""
    from cgns.cli import write_metrics
    from cgns.data.roots import resolve_data_root
    from cgns.data.datasets import build
    from cgns.engine.linear import pct_key

    if dataset not in DATASETS:
        raise ValueError(f"segmentation: unknown dataset '{dataset}' (expected one of {list(DATASETS)})")
    candidates = whitening_candidates(whiten_shrinkage, finetune, "segmentation")
    root = resolve_data_root(dataset, data_root)
    results, source = {}, None
    for pct in data_pcts:
        start = time.perf_counter()
        # a fresh encoder per fraction: with --finetune the previous fraction would otherwise leak into the next
        encoder, source = load_frozen_encoder(encoder_name, image_size, checkpoint=checkpoint,
                                              image_weights=image_weights, random_init=random_init, seed=seed,
                                              resize_checkpoint=resize_checkpoint,
                                              frozen=not finetune)
        size = source["image_size"]
        log(f"segmentation {dataset} {pct_key(pct)}: encoder {source['name']} @ {size}px from {source['origin']} "
            f"({'fine-tuned' if finetune else 'frozen'})")

        def split(name: str, augment: bool, fraction: float = 1.0):
            return build("segmentation", dataset, name, data_root=root, image_size=size, data_pct=fraction,
                         seed=seed, augment=augment)

        train_loader = _loader(split("train", True, pct), batch_size, True, seed, num_workers)
        prior = resolve_foreground_prior(
            foreground_prior, lambda: _loader(split("train", False, pct), batch_size, False, seed, num_workers), log)
        val_loader = _loader(split("valid", False), batch_size, False, seed, num_workers)
        test_loader = _loader(split("test", False), batch_size, False, seed, num_workers)

        def fit_moments():
            encoder.to(device).eval()
            return fit_map_moments(encoder.pyramid_channels,
                                   _loader(split("train", False, pct), batch_size, False, seed, num_workers),
                                   lambda b: encoder.feature_pyramid(b["image"].to(device)))

        def train_head(whitening):
            torch.manual_seed(seed)
            decoder = build_unet(encoder, width=decoder_width, prior=prior)
            model = SegmentationModel(encoder, decoder, finetune=finetune, whitening=whitening).to(device)
            summary = train_segmentation(model, train_loader, val_loader, epochs=epochs, lr=lr,
                                         weight_decay=weight_decay, patience=patience, device=device,
                                         prior=prior, log=log)
            return model, summary, summary["val"], (summary["val"]["dice"], -summary["val"]["loss"])

        model, summary, chosen, tried, spectrum = sweep_whitening(candidates, fit_moments, train_head, "dice", log)
        # the best state, evaluated the same way on both splits (with the threshold-free pixel AUROC)
        val_metrics, _ = evaluate_segmentation(model, val_loader, device, pixel_auroc=True)
        test_metrics, examples = evaluate_segmentation(model, test_loader, device, keep=overlays, pixel_auroc=True)
        if output_dir is not None and overlays:
            write_overlays(examples, Path(output_dir) / "overlays", f"test_pct{pct_key(pct)}")
        results[pct_key(pct)] = {
            "val": val_metrics, "test": test_metrics,
            "train": {"num_images": len(train_loader.dataset), "best_epoch": summary["best_epoch"],
                      "epochs_run": summary["epochs_run"], "seconds": round(time.perf_counter() - start, 2),
                      "foreground_prior": prior},
            "whitening": {"chosen": shrinkage_label(chosen), "val_dice": tried, "map_spectrum": spectrum}}
        log(f"segmentation {dataset} {pct_key(pct)}: val dice {summary['val']['dice']:.4f} "
            f"test dice {test_metrics['dice']:.4f} (best epoch {summary['best_epoch']})")
    if output_dir is not None:
        largest = results[pct_key(max(data_pcts))]
        recipe = {"epochs": epochs, "patience": patience, "lr": lr, "batch_size": batch_size, "seed": seed,
                  "decoder_width": decoder_width, "foreground_prior": foreground_prior,
                  "whiten_shrinkage": [shrinkage_label(c) for c in candidates]}
        write_metrics(output_dir, {**results, "val": largest["val"], "test": largest["test"], "encoder": source,
                                   "dataset": dataset, "finetune": finetune, "primary_metric": "dice",
                                   "recipe": recipe})
    return results


def paper_row(dataset: str, results: dict, split: str = "test") -> str:
    cells = [f"{100 * float(k):g}%: {100 * v[split]['dice']:.1f}" for k, v in results.items()
             if isinstance(v, dict) and split in v]
    return f"{dataset}  {split} dice (%)  " + " | ".join(cells)
