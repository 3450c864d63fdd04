"""Segmentation (SIIM pneumothorax, RSNA boxes-as-masks): encoder (frozen by default) + U-Net decoder; the
`segmentation` plug-in of the downstream driver (cgns.engine.downstream).

Protocol (DATASETS.md): loss 10 x focal (gamma 2) - log(soft Dice); metric Dice per image at threshold 0.5 with
empty-vs-empty = 1, averaged over images; AdamW + cosine schedule; early stopping on validation Dice (ties broken by
the lower validation loss); test with the best epoch's decoder. Training images are augmented by the data pipeline
(segmentation augmentation of cgns.data.transforms, image and mask warped together).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from cgns.config import option
from cgns.engine.downstream import (DownstreamTask, Fraction, RunConfig, SeedRun, downstream_config,
                                    monitor_key, whiten_option)
from cgns.engine.features import whitening_candidates
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
                       weight_decay: float, patience: int, device: str = "cpu", prior: float | None = None,
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
        key = monitor_key(val_metrics, "dice")
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


def parse_foreground_prior(text: str) -> float | str:
    """--foreground-prior: 'auto' or a probability in (0, 1)."""
    import argparse

    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a probability in (0, 1), got '{text}'") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1), got {value}")
    return value


@dataclass
class SegmentationTaskConfig:
    """The U-Net decoder's own flags."""
    dataset: str | None = option(None, "data set (required); rsna: its boxes as masks", choices=DATASETS)
    finetune: bool = option(False, "train the encoder too (--no-finetune: frozen, the protocol)")
    patience: int = option(10, "early stopping: epochs without a validation Dice gain")
    decoder_width: str = option("base", "U-Net decoder width", choices=("base", "small"))
    foreground_prior: float | str = option(
        0.01, "initial foreground probability of the decoder's output (RetinaNet-style bias; 0.5 = a zero bias), "
              "or 'auto': the training masks' foreground share, clamped to [0.01, 0.5] (for large structures such "
              "as lungs)", parse=parse_foreground_prior)
    whiten_shrinkage: tuple[float | None, ...] = whiten_option()
    overlays: int = option(4, "test overlays to write per fraction (0: none)")


SegmentationConfig = downstream_config("SegmentationConfig", SegmentationTaskConfig)


# paper: MGCA's segmentation protocol (mgca_segmenter.py and its run script): AdamW 5e-4, weight decay 0.05,
# batch 16 (MGCA's RSNA runs; its SIIM runs used 8), at most 50 epochs, early stopping with patience 10
PAPER = SegmentationConfig(run=RunConfig(weight_decay=0.05))
# demo: the recipe that works on the generated world at 64 px (measured on SIIM, where the former defaults, base
# decoder, 20 epochs, patience 5, no whitening, stayed at the empty baseline): small decoder, 40 epochs, patience
# 15, and three heads (no whitening, full, shrinkage 0.1) of which validation picks one: the demo encoder's maps
# hold over 90% of their variance in 5 of 192 directions, and an unwhitened head underfits them (docs/EVALUATION.md)
DEMO = SegmentationConfig(run=RunConfig(data_pct=(1.0,), epochs=40),
                          task=SegmentationTaskConfig(patience=15, decoder_width="small",
                                                      whiten_shrinkage=(None, 0.0, 0.1)))
PRESETS = {"demo": DEMO, "paper": PAPER}


class SegmentationTask(DownstreamTask):
    """U-Net segmentation as a downstream plug-in. foreground_prior "auto" is resolved per fraction (recorded under
    "train"); whitening (cgns.models.whitening) is fitted on the training fraction's maps, not augmented."""
    name, prefix = "segmentation", "seg"
    description = "U-Net segmentation on an image encoder"
    config_cls, presets = SegmentationConfig, PRESETS
    datasets = DATASETS
    rows = (("val", "dice", ""), ("test", "dice", ""))
    final_keys = ("dice",)
    whitens = True

    def primary(self, dataset: str) -> str:
        return "dice"

    def whitening(self, config) -> list:
        return whitening_candidates(config.task.whiten_shrinkage, config.task.finetune, "segmentation")

    def _loader(self, run: SeedRun, split: str, augment: bool, pct: float = 1.0) -> DataLoader:
        from cgns.data.datasets import build

        dataset = build("segmentation", run.dataset, split, data_root=run.root, image_size=run.source["image_size"],
                        data_pct=pct, seed=run.seed, augment=augment)
        return _loader(dataset, run.config.run.batch_size, augment, run.seed, run.config.run.num_workers)

    def fraction(self, run: SeedRun, pct: float) -> Fraction:
        run.log(f"segmentation {run.dataset} {pct:g}: encoder {run.source['name']} @ {run.source['image_size']}px "
                f"from {run.source['origin']} ({'fine-tuned' if run.config.task.finetune else 'frozen'})")
        train = self._loader(run, "train", True, pct)
        prior = resolve_foreground_prior(run.config.task.foreground_prior,
                                         lambda: self._loader(run, "train", False, pct), run.log)
        return Fraction(pct, train, self._loader(run, "valid", False), self._loader(run, "test", False),
                        len(train.dataset), extra={"prior": prior})

    def fit_moments(self, run: SeedRun, data: Fraction):
        encoder = run.encoder.to(run.device).eval()
        return fit_map_moments(encoder.pyramid_channels, self._loader(run, "train", False, data.pct),
                               lambda b: encoder.feature_pyramid(b["image"].to(run.device)))

    def train_head(self, run: SeedRun, data: Fraction, whitening) -> tuple:
        config = run.config
        torch.manual_seed(run.seed)
        decoder = build_unet(run.encoder, width=config.task.decoder_width, prior=data.extra["prior"])
        model = SegmentationModel(run.encoder, decoder, finetune=config.task.finetune,
                                  whitening=whitening).to(run.device)
        summary = train_segmentation(model, data.train, data.val, epochs=config.run.epochs, lr=config.run.lr,
                                     weight_decay=config.run.weight_decay, patience=config.task.patience,
                                     device=run.device, prior=data.extra["prior"], log=run.log)
        return model, summary, summary["val"]

    def evaluate(self, run: SeedRun, data: Fraction, model: SegmentationModel, summary: dict) -> dict:
        """The best state, evaluated the same way on both splits (with the threshold-free pixel AUROC)."""
        overlays, output_dir = run.config.task.overlays, run.config.run.output_dir
        val, _ = evaluate_segmentation(model, data.val, run.device, pixel_auroc=True)
        test, examples = evaluate_segmentation(model, data.test, run.device, keep=overlays, pixel_auroc=True)
        if output_dir is not None and overlays:
            write_overlays(examples, Path(output_dir) / "overlays", f"test_pct{data.pct:g}")
        return {"val": val, "test": test,
                "train": {"num_images": data.num_train, "best_epoch": summary["best_epoch"],
                          "epochs_run": summary["epochs_run"], "foreground_prior": data.extra["prior"]}}

    def metrics_extra(self, config) -> dict:
        seeds = config.run.seeds
        recipe = {"epochs": config.run.epochs, "patience": config.task.patience, "lr": config.run.lr,
                  "batch_size": config.run.batch_size, "seed": seeds[0] if len(seeds) == 1 else list(seeds),
                  "decoder_width": config.task.decoder_width, "foreground_prior": config.task.foreground_prior,
                  "whiten_shrinkage": [shrinkage_label(c) for c in self.whitening(config)]}
        return {"finetune": config.task.finetune, "recipe": recipe}


SEGMENTATION = SegmentationTask()
