"""Detection: a (frozen by default) image encoder + the YOLOv3 head, trained on RSNA or Object-CXR boxes.

Protocol (DATASETS.md): ResNet-50 layers 2-4 -> YOLOv3, one class, input 224; at test time keep predictions with
objectness >= 0.5, NMS at IoU 0.5, then mAP over IoU 0.4:0.05:0.75 (cgns.eval.detection) on ALL test images,
plus the original's variant that skips images without predictions or ground truth. Adam with a cosine schedule;
the epoch with the best validation mAP (ties: lower validation loss) is the one tested.
"""
from __future__ import annotations

import math
import os
import time
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from cgns.engine.schedule import lr_at, set_lr
from cgns.eval.detection import detection_metrics
from cgns.models.whitening import fit_map_moments, shrinkage_label
from cgns.models.yolov3 import YOLOv3, build_yolov3

DATASETS = ("rsna", "object_cxr")


def pct_key(pct: float) -> str:
    """0.01 -> '0.01', 1.0 -> '1' (the keys of metrics.json, as the linear probe writes them)."""
    return f"{pct:g}"


def sum_losses(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(losses.values())


def encoded_maps(model: YOLOv3, batch: dict, device: str) -> list[torch.Tensor]:
    """The encoder maps the head reads (before any whitening), from cached features or by encoding the images."""
    if "features" in batch:
        return [f.to(device, non_blocking=True).float() for f in batch["features"]]
    return model.encode(batch["image"].to(device))


def forward_batch(model: YOLOv3, batch: dict, device: str) -> list[torch.Tensor]:
    """Raw YOLOv3 maps for a batch of images, or of cached encoder features (see FeatureCache)."""
    if "features" in batch:
        return model(features=encoded_maps(model, batch, device))
    return model(batch["image"].to(device, non_blocking=True))


class FeatureCache(Dataset):
    """A split's frozen-encoder maps, computed once: items {features: [maps per level], boxes, index}.

    A frozen encoder without augmentation gives the same maps every epoch, so the head can train on stored maps;
    on CPU the encoder is most of the cost. Kept in memory (float32)."""

    def __init__(self, features: list[list[torch.Tensor]], boxes: list[torch.Tensor], indices: list[int]):
        self.features, self.boxes, self.indices = features, boxes, indices

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "boxes": self.boxes[i], "index": self.indices[i]}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        levels = len(items[0]["features"])
        return {"features": [torch.stack([item["features"][level] for item in items]) for level in range(levels)],
                "boxes": [item["boxes"] for item in items], "index": torch.tensor([item["index"] for item in items])}

    @classmethod
    @torch.no_grad()
    def build(cls, model: YOLOv3, loader: DataLoader, device: str = "cpu", budget_bytes: float = 2e9):
        """Encode every image of `loader` once; None (so the caller streams images) when the maps would exceed
        budget_bytes, judged from the first batch."""
        model.eval()
        features, boxes, indices = [], [], []
        for batch in loader:
            maps = [m.cpu() for m in model.encode(batch["image"].to(device))]
            if not features:
                per_image = sum(m[0].numel() * m.element_size() for m in maps)
                if per_image * len(loader.dataset) > budget_bytes:
                    return None
            features += [[m[i] for m in maps] for i in range(len(batch["boxes"]))]
            boxes += list(batch["boxes"])
            indices += [int(i) for i in batch["index"]]
        return cls(features, boxes, indices)


def train_one_epoch(model: YOLOv3, loader: DataLoader, optimizer: torch.optim.Optimizer, *, step: int,
                    base_lr: float, warmup_steps: int, total_steps: int, device: str = "cpu") -> tuple[dict, int]:
    """One pass over `loader` (batches: image [B,3,S,S] or cached features, boxes list of [n_i,4] xyxy px).
    Returns ({loss term: mean over batches}, the global step after the epoch)."""
    model.train()
    totals, batches = {}, 0
    for batch in loader:
        set_lr(optimizer, lr_at(step, base_lr=base_lr, warmup_steps=warmup_steps, total_steps=total_steps))
        losses = model.loss(forward_batch(model, batch, device), [b.to(device) for b in batch["boxes"]])
        total = sum_losses(losses)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        step += 1
        batches += 1
        for name, value in {**losses, "total": total}.items():
            totals[name] = totals.get(name, 0.0) + value.detach()
    return {name: float(value) / max(batches, 1) for name, value in totals.items()}, step


@torch.no_grad()
def predict(model: YOLOv3, loader: DataLoader, *, conf_thresh: float = 0.5, nms_thresh: float = 0.5,
            device: str = "cpu") -> tuple[list[dict], list[torch.Tensor], float]:
    """Detections and ground truth of every image in `loader` (CPU tensors) and the mean loss per batch."""
    model.eval()
    predictions, ground_truths, loss_sum, batches = [], [], 0.0, 0
    for batch in loader:
        boxes = [b.to(device) for b in batch["boxes"]]
        raw = forward_batch(model, batch, device)
        loss_sum += sum_losses(model.loss(raw, boxes))
        batches += 1
        predictions += [{k: v.cpu() for k, v in d.items()} for d in model.postprocess(raw, conf_thresh, nms_thresh)]
        ground_truths += [b.cpu() for b in batch["boxes"]]
    return predictions, ground_truths, float(loss_sum) / max(batches, 1)


def evaluate(model: YOLOv3, loader: DataLoader, *, conf_thresh: float = 0.5, nms_thresh: float = 0.5,
             device: str = "cpu") -> dict:
    """mAP / AP50 (all images and the original's skip-empty variant), counts and mean loss on one split."""
    predictions, ground_truths, loss = predict(model, loader, conf_thresh=conf_thresh, nms_thresh=nms_thresh,
                                               device=device)
    return {"loss": loss, **detection_metrics(predictions, ground_truths)}


def _monitor_key(metrics: dict) -> tuple:
    value = metrics["mAP"]
    return (-math.inf if math.isnan(value) else value, -metrics["loss"])


def parameter_groups(model: YOLOv3, encoder_lr_scale: float = 1.0) -> list[dict]:
    """Adam groups of the trainable parameters: the head at the base rate, a trainable (fine-tuned) encoder at
    encoder_lr_scale times it (set_lr reads 'lr_scale'). A frozen encoder contributes nothing."""
    if not encoder_lr_scale > 0:
        raise ValueError(f"encoder_lr_scale must be > 0, got {encoder_lr_scale}")
    encoder = {id(p) for p in model.encoder.parameters()}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder]
    tuned = [p for p in model.encoder.parameters() if p.requires_grad]
    groups = [{"params": head, "lr_scale": 1.0}]
    if tuned:
        groups.append({"params": tuned, "lr_scale": encoder_lr_scale})
    return groups


def train_detector(model: YOLOv3, train_loader: DataLoader, val_loader: DataLoader, *, epochs: int, lr: float,
                   weight_decay: float = 1e-6, warmup_epochs: float = 1.0, conf_thresh: float = 0.5,
                   nms_thresh: float = 0.5, encoder_lr_scale: float = 1.0, device: str = "cpu", log=print) -> dict:
    """Train the trainable parameters (head; the encoder too when not frozen, at encoder_lr_scale times the rate),
    keep the best validation epoch. Leaves `model` holding the best epoch's weights.
    Returns {best_epoch, history: [per-epoch losses + val]}."""
    optimizer = torch.optim.Adam(parameter_groups(model, encoder_lr_scale), lr=lr, weight_decay=weight_decay)
    total_steps = max(1, epochs * len(train_loader))
    warmup_steps = int(warmup_epochs * len(train_loader))
    step, best_key, best_state, best_epoch, history = 0, None, None, -1, []
    for epoch in range(epochs):
        start = time.perf_counter()
        train_losses, step = train_one_epoch(model, train_loader, optimizer, step=step, base_lr=lr,
                                             warmup_steps=warmup_steps, total_steps=total_steps, device=device)
        val = evaluate(model, val_loader, conf_thresh=conf_thresh, nms_thresh=nms_thresh, device=device)
        history.append({"epoch": epoch, "train": train_losses, "val": val})
        key = _monitor_key(val)
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch
            # a frozen encoder never changes: keep only what trains (the head, or everything when fine-tuning)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()
                          if not (model.freeze_encoder and k.startswith("encoder."))}
        log(f"  epoch {epoch:3d} train_loss {train_losses.get('total', float('nan')):.4f} "
            f"val_loss {val['loss']:.4f} val_mAP {val['mAP']:.4f} val_AP50 {val['AP50']:.4f} "
            f"({time.perf_counter() - start:.1f}s)")
    if best_state is not None:
        missing, unexpected = model.load_state_dict(best_state, strict=False)
        if unexpected or any(not k.startswith("encoder.") for k in missing):
            raise RuntimeError(f"restoring the best epoch: missing {missing}, unexpected {unexpected}")
    return {"best_epoch": best_epoch, "history": history}


def detection_loader(dataset, batch_size: int, *, shuffle: bool, seed: int = 42, num_workers: int = 0) -> DataLoader:
    """Batches of a detection dataset (image + boxes list) or of a FeatureCache."""
    from cgns.data.datasets import collate

    if isinstance(dataset, FeatureCache):
        collate_fn, num_workers = FeatureCache.collate, 0
    else:
        collate_fn = collate("detection")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=False,
                      num_workers=num_workers, collate_fn=collate_fn)


def run_detection(dataset: str, *, data_root: Optional[os.PathLike] = None, encoder_name: Optional[str] = None,
                  image_size: Optional[int] = None, checkpoint: Optional[os.PathLike] = None,
                  image_weights: Optional[os.PathLike] = None, random_init: bool = False,
                  resize_checkpoint: bool = False, finetune: bool = False, encoder_lr_scale: float = 1.0,
                  vit_blocks: str = "last",
                  data_pcts: Sequence[float] = (1.0,), seed: int = 42, epochs: int = 50, batch_size: int = 16,
                  lr: float = 5e-4, weight_decay: float = 1e-6, head_width: int = 256, conf_thresh: float = 0.5,
                  nms_thresh: float = 0.5, augment: bool = False, feature_cache_gb: float = 2.0,
                  whiten_shrinkage: Sequence[Optional[float]] = (None,), device: str = "cpu",
                  output_dir: Optional[os.PathLike] = None, num_workers: int = 0, log=print) -> dict:
    """YOLOv3 detection for each training fraction -> {"<pct>": {"val": {...}, "test": {...}, "train": {...}}}.

    Exactly one of checkpoint / image_weights / random_init (see cgns.engine.features.load_frozen_encoder; the
    encoder name and image size come from a checkpoint). The encoder is frozen unless `finetune` (then trained at
    encoder_lr_scale times the head's rate, which only a fine-tuned encoder may set); vit_blocks: which of a ViT's
    maps the head reads (cgns.models.yolov3.YOLOv3Config); a frozen encoder
    without augmentation encodes each image once (FeatureCache) when the maps fit in feature_cache_gb (0: never).
    whiten_shrinkage: candidate shrinkages of a fixed whitening of the encoded maps (cgns.models.whitening; None = no
    whitening), fitted on the training fraction (not augmented); each candidate trains its own head (same seed), the
    best on validation (mAP, then loss) is tested; "whitening" records every candidate's validation mAP and the
    training maps' spectrum (MapMoments.spectrum: how far from isotropic they are).
    Writes <output_dir>/metrics.json (the fractions, plus "val"/"test" of the largest one) when output_dir is given.
    """
    from cgns.cli import write_metrics
    from cgns.data.roots import resolve_data_root
    from cgns.data.datasets import build
    from cgns.engine.features import load_frozen_encoder, sweep_whitening, whitening_candidates

    if dataset not in DATASETS:
        raise ValueError(f"detection: unknown dataset '{dataset}' (expected one of {list(DATASETS)})")
    if encoder_lr_scale != 1.0 and not finetune:
        raise ValueError(f"encoder_lr_scale={encoder_lr_scale} applies to a fine-tuned encoder: add finetune "
                         f"(--finetune), or leave it at 1")
    candidates = whitening_candidates(whiten_shrinkage, finetune, "detection")
    root = resolve_data_root(dataset, data_root)
    use_cache = not finetune and not augment and feature_cache_gb > 0
    results, encoder, source, cached = {}, None, None, {}
    for pct in data_pcts:
        start = time.perf_counter()
        if encoder is None or finetune:
            # fine-tuning starts every fraction from the same weights; a frozen encoder is shared
            encoder, source = load_frozen_encoder(encoder_name, image_size, checkpoint=checkpoint,
                                                  image_weights=image_weights, random_init=random_init, seed=seed,
                                                  resize_checkpoint=resize_checkpoint,
                                                  frozen=not finetune)
        size = source["image_size"]
        torch.manual_seed(seed)
        model = build_yolov3(encoder, image_size=size, width=head_width, vit_blocks=vit_blocks,
                             freeze_encoder=not finetune).to(device)
        sets = {name: build("detection", dataset, name, data_root=root, image_size=size, seed=seed,
                            data_pct=pct if name == "train" else 1.0, augment=augment and name == "train")
                for name in ("train", "valid", "test")}
        num_train = len(sets["train"])
        if use_cache:
            total = sum(len(d) for d in sets.values())
            for name in ("train", "valid", "test"):
                if name not in cached:
                    budget = feature_cache_gb * 1e9 * len(sets[name]) / total
                    loader = detection_loader(sets[name], batch_size, shuffle=False, num_workers=num_workers)
                    cached[name] = FeatureCache.build(model, loader, device, budget) or sets[name]
                sets[name] = cached[name]
            cached.pop("train")        # the next fraction has other training images
            if not isinstance(sets["train"], FeatureCache):
                log(f"detection: encoder maps exceed --feature-cache-gb {feature_cache_gb}; streaming images")
        train_loader = detection_loader(sets["train"], batch_size, shuffle=True, seed=seed, num_workers=num_workers)
        val_loader = detection_loader(sets["valid"], batch_size, shuffle=False, num_workers=num_workers)
        test_loader = detection_loader(sets["test"], batch_size, shuffle=False, num_workers=num_workers)
        log(f"detection {dataset} {pct_key(pct)}: encoder {source['name']} @ {size}px from {source['origin']} "
            f"({'fine-tuned' if finetune else 'frozen'}), {num_train} training images")
        reader = model   # encodes images for the whitening fit (the cache was built with it)

        def fit_moments():
            plain = sets["train"] if isinstance(sets["train"], FeatureCache) else build(
                "detection", dataset, "train", data_root=root, image_size=size, seed=seed, data_pct=pct,
                augment=False)
            reader.eval()
            return fit_map_moments(reader.encoded_channels,
                                   detection_loader(plain, batch_size, shuffle=False, num_workers=num_workers),
                                   lambda b: encoded_maps(reader, b, device))

        def train_head(whitening):
            torch.manual_seed(seed)
            head = build_yolov3(encoder, image_size=size, width=head_width, vit_blocks=vit_blocks,
                                freeze_encoder=not finetune,
                                whitening=whitening).to(device)
            summary = train_detector(head, train_loader, val_loader, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                     conf_thresh=conf_thresh, nms_thresh=nms_thresh,
                                     encoder_lr_scale=encoder_lr_scale, device=device, log=log)
            val = summary["history"][summary["best_epoch"]]["val"] if summary["history"] else None
            return head, summary, val, _monitor_key(val) if val else (-math.inf, -math.inf)

        model, summary, chosen, tried, spectrum = sweep_whitening(candidates, fit_moments, train_head, "mAP", log)
        test = evaluate(model, test_loader, conf_thresh=conf_thresh, nms_thresh=nms_thresh, device=device)
        best = summary["history"][summary["best_epoch"]] if summary["history"] else {"val": {}, "train": {}}
        results[pct_key(pct)] = {
            "val": best["val"], "test": test,
            "train": {"num_images": num_train, "best_epoch": summary["best_epoch"], "epochs_run": epochs,
                      "first_epoch_loss": summary["history"][0]["train"].get("total") if summary["history"] else None,
                      "last_epoch_loss": summary["history"][-1]["train"].get("total") if summary["history"] else None,
                      "seconds": round(time.perf_counter() - start, 2)},
            "whitening": {"chosen": shrinkage_label(chosen), "val_mAP": tried, "map_spectrum": spectrum}}
        log(f"detection {dataset} {pct_key(pct)}: val mAP {best['val'].get('mAP')} test mAP {test['mAP']:.4f} "
            f"AP50 {test['AP50']:.4f} (skip-empty variant mAP {test['skip_empty/mAP']:.4f}; "
            f"best epoch {summary['best_epoch']})")
    if output_dir is not None:
        largest = results[pct_key(max(data_pcts))]
        write_metrics(output_dir, {**results, "val": largest["val"], "test": largest["test"], "encoder": source,
                                   "dataset": dataset, "primary_metric": "mAP", "finetune": finetune,
                                   "conf_thresh": conf_thresh, "nms_thresh": nms_thresh})
    return results


def paper_row(dataset: str, results: dict, split: str = "test", metric: str = "mAP") -> str:
    """'rsna  test mAP (%)  1%: 3.1 | 10%: 8.0 | 100%: 15.2' — the layout of the paper's tables."""
    cells = [f"{100 * float(key):g}%: {100 * entry[split][metric]:.1f}" for key, entry in results.items()
             if isinstance(entry, dict) and split in entry and metric in entry[split]]
    return f"{dataset}  {split} {metric} (%)  " + " | ".join(cells)
