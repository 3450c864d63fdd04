"""Detection: a (frozen by default) image encoder + the YOLOv3 head, trained on RSNA or Object-CXR boxes; the
`detection` plug-in of the downstream driver (cgns.engine.downstream).

Protocol (DATASETS.md): ResNet-50 layers 2-4 -> YOLOv3, one class, input 224; at test time keep predictions with
objectness >= 0.5, NMS at IoU 0.5, then mAP over IoU 0.4:0.05:0.75 (cgns.eval.detection) on ALL test images,
plus the original's variant that skips images without predictions or ground truth. Adam with a cosine schedule;
the epoch with the best validation mAP (ties: lower validation loss) is the one tested.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from cgns.config import option
from cgns.engine.downstream import (DownstreamTask, Fraction, RunConfig, SeedRun, downstream_config,
                                    monitor_key, whiten_option)
from cgns.engine.features import whitening_candidates
from cgns.engine.schedule import lr_at, set_lr
from cgns.eval.detection import detection_metrics
from cgns.models.whitening import fit_map_moments
from cgns.models.yolov3 import VIT_BLOCKS, YOLOv3, build_yolov3

DATASETS = ("rsna", "object_cxr")


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


def train_detector(model: YOLOv3, train_loader: DataLoader, val_loader: DataLoader, *, epochs: int, lr: float,
                   weight_decay: float = 1e-6, warmup_epochs: float = 1.0, conf_thresh: float = 0.5,
                   nms_thresh: float = 0.5, device: str = "cpu", log=print) -> dict:
    """Train the trainable parameters (the head; the encoder too when not frozen), keep the best validation epoch.
    Leaves `model` holding the best epoch's weights. Returns {best_epoch, history: [per-epoch losses + val]}."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    total_steps = max(1, epochs * len(train_loader))
    warmup_steps = int(warmup_epochs * len(train_loader))
    step, best_key, best_state, best_epoch, history = 0, None, None, -1, []
    for epoch in range(epochs):
        start = time.perf_counter()
        train_losses, step = train_one_epoch(model, train_loader, optimizer, step=step, base_lr=lr,
                                             warmup_steps=warmup_steps, total_steps=total_steps, device=device)
        val = evaluate(model, val_loader, conf_thresh=conf_thresh, nms_thresh=nms_thresh, device=device)
        history.append({"epoch": epoch, "train": train_losses, "val": val})
        key = monitor_key(val, "mAP")
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


SPLITS = ("train", "valid", "test")


@dataclass
class DetectionTaskConfig:
    """The detection head's own flags."""
    dataset: str | None = option(None, "data set (required)", choices=DATASETS)
    finetune: bool = option(False, "train the encoder too, at the head's learning rate (--no-finetune: frozen, "
                                   "the protocol)")
    vit_blocks: str = option("last", "a ViT's maps the feature pyramid is built from: its last block (ViTDet), or "
                                     "its four evenly spaced blocks concatenated", choices=tuple(VIT_BLOCKS))
    head_width: int = option(256, "channels of the coarsest YOLOv3 neck block")
    conf_thresh: float = option(0.5, "objectness kept before NMS (original: 0.5)")
    nms_thresh: float = option(0.5, "NMS IoU (original: 0.5)")
    augment: bool = option(False, "training augmentation of the detection dataset")
    whiten_shrinkage: tuple[float | None, ...] = whiten_option()
    feature_cache_gb: float = option(2.0, "frozen encoder: keep its maps in memory (encode each image once) up to "
                                          "this size; 0 re-encodes every epoch")


DetectionConfig = downstream_config("DetectionConfig", DetectionTaskConfig)


# paper: MGCA's detection protocol (mgca_detector.py): frozen encoder, batch 16, lr 5e-4, weight decay 1e-6,
# 50 epochs (the best validation mAP is tested), 1% / 10% / 100% of the training split: the dataclasses' defaults
PAPER = DetectionConfig()
# demo: the same recipe on the whole generated training split (frozen maps are cached, so 50 epochs are cheap)
DEMO = DetectionConfig(run=RunConfig(data_pct=(1.0,)))
PRESETS = {"demo": DEMO, "paper": PAPER}


class DetectionTask(DownstreamTask):
    """YOLOv3 detection as a downstream plug-in. A frozen encoder without augmentation encodes each image once
    (FeatureCache, validation and test shared by the fractions) when its maps fit in feature_cache_gb. Whitening
    (cgns.models.whitening) is fitted on the training fraction's maps, not augmented."""
    name, prefix = "detection", "detect"
    description = "YOLOv3 detection on an image encoder"
    config_cls, presets = DetectionConfig, PRESETS
    datasets = DATASETS
    rows = (("val", "mAP", ""), ("test", "mAP", ""),
            ("test", "skip_empty/mAP", "   (original's variant: skips empty images)"))
    final_keys = ("mAP", "AP50", "skip_empty/mAP")
    whitens = True

    def primary(self, dataset: str) -> str:
        return "mAP"

    def whitening(self, config) -> list:
        return whitening_candidates(config.task.whiten_shrinkage, config.task.finetune, "detection")

    def setup(self, run: SeedRun) -> None:
        run.state["cached"] = {}      # split -> FeatureCache (or the dataset, when over budget)

    def _dataset(self, run: SeedRun, split: str, pct: float, augment: bool):
        from cgns.data.datasets import build

        return build("detection", run.dataset, split, data_root=run.root, image_size=run.source["image_size"],
                     seed=run.seed, data_pct=pct, augment=augment)

    def _head(self, run: SeedRun, whitening=None) -> YOLOv3:
        task = run.config.task
        return build_yolov3(run.encoder, image_size=run.source["image_size"], width=task.head_width,
                            vit_blocks=task.vit_blocks, freeze_encoder=not task.finetune,
                            whitening=whitening).to(run.device)

    def _cache(self, run: SeedRun, reader: YOLOv3, sets: dict) -> None:
        """Replace each split of `sets` by its encoder maps (validation and test computed once per seed)."""
        config, cached = run.config, run.state["cached"]
        total = sum(len(d) for d in sets.values())
        for name in SPLITS:
            if name not in cached:
                budget = config.task.feature_cache_gb * 1e9 * len(sets[name]) / total
                loader = detection_loader(sets[name], config.run.batch_size, shuffle=False,
                                          num_workers=config.run.num_workers)
                cached[name] = FeatureCache.build(reader, loader, run.device, budget) or sets[name]
            sets[name] = cached[name]
        cached.pop("train")        # the next fraction has other training images
        if not isinstance(sets["train"], FeatureCache):
            run.log(f"detection: encoder maps exceed --feature-cache-gb {config.task.feature_cache_gb}; "
                    f"streaming images")

    def fraction(self, run: SeedRun, pct: float) -> Fraction:
        config, task = run.config, run.config.task
        torch.manual_seed(run.seed)
        reader = self._head(run)   # encodes images for the feature cache and the whitening fit
        sets = {name: self._dataset(run, name, pct if name == "train" else 1.0, task.augment and name == "train")
                for name in SPLITS}
        num_train = len(sets["train"])
        if not task.finetune and not task.augment and task.feature_cache_gb > 0:
            self._cache(run, reader, sets)
        loaders = [detection_loader(sets[name], config.run.batch_size, shuffle=name == "train", seed=run.seed,
                                    num_workers=config.run.num_workers) for name in SPLITS]
        run.log(f"detection {run.dataset} {pct:g}: encoder {run.source['name']} @ {run.source['image_size']}px "
                f"from {run.source['origin']} ({'fine-tuned' if task.finetune else 'frozen'}), {num_train} "
                f"training images")
        return Fraction(pct, *loaders, num_train, extra={"sets": sets, "reader": reader})

    def fit_moments(self, run: SeedRun, data: Fraction):
        reader, plain = data.extra["reader"], data.extra["sets"]["train"]
        if not isinstance(plain, FeatureCache):
            plain = self._dataset(run, "train", data.pct, False)
        reader.eval()
        return fit_map_moments(reader.encoded_channels,
                               detection_loader(plain, run.config.run.batch_size, shuffle=False,
                                                num_workers=run.config.run.num_workers),
                               lambda b: encoded_maps(reader, b, run.device))

    def train_head(self, run: SeedRun, data: Fraction, whitening) -> tuple:
        config = run.config
        torch.manual_seed(run.seed)
        head = self._head(run, whitening)
        summary = train_detector(head, data.train, data.val, epochs=config.run.epochs, lr=config.run.lr,
                                 weight_decay=config.run.weight_decay, conf_thresh=config.task.conf_thresh,
                                 nms_thresh=config.task.nms_thresh, device=run.device, log=run.log)
        val = summary["history"][summary["best_epoch"]]["val"] if summary["history"] else None
        return head, summary, val

    def evaluate(self, run: SeedRun, data: Fraction, model: YOLOv3, summary: dict) -> dict:
        task, history = run.config.task, summary["history"]
        test = evaluate(model, data.test, conf_thresh=task.conf_thresh, nms_thresh=task.nms_thresh,
                        device=run.device)
        return {"val": history[summary["best_epoch"]]["val"] if history else {}, "test": test,
                "train": {"num_images": data.num_train, "best_epoch": summary["best_epoch"],
                          "epochs_run": run.config.run.epochs,
                          "first_epoch_loss": history[0]["train"].get("total") if history else None,
                          "last_epoch_loss": history[-1]["train"].get("total") if history else None}}

    def metrics_extra(self, config) -> dict:
        return {"finetune": config.task.finetune, "conf_thresh": config.task.conf_thresh,
                "nms_thresh": config.task.nms_thresh}


DETECTION = DetectionTask()
