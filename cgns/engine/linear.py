"""Linear classification: a frozen image encoder + one linear layer (CheXpert, RSNA, COVIDx), the `linear`
plug-in of the downstream driver (cgns.engine.downstream).

Protocol (DATASETS.md): CheXpert 5 labels and RSNA 1 label with BCE, metric macro AUROC; COVIDx 3 classes with
cross-entropy, metric accuracy. AdamW, cosine schedule over the epoch budget, early stopping on the validation
loss (MGCA's monitor; `select_by="metric"` uses the validation AUROC / accuracy instead, ties broken by the loss),
test with the best epoch's head. Selecting by the loss is the stable choice on small validation sets: on the demo
CheXpert data (87 validation images) three head seeds gave test AUROC 0.748 / 0.780 / 0.791 selected by AUROC and
0.780 / 0.783 / 0.791 selected by loss (same frozen features).

The head trains on features computed once per split (cgns.engine.features); `cache=False` re-encodes the
images of every batch instead, kept for the equality test and the speed benchmark.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from cgns.config import option
from cgns.engine.downstream import (DownstreamTask, Fraction, RunConfig, SeedRun, downstream_config,
                                    monitor_key)
from cgns.engine.features import (FeatureSet, cached_features, data_fingerprint, encoder_fingerprint,
                                  pool_features)
from cgns.engine.schedule import lr_at, set_lr
from cgns.eval.metrics import accuracy, auroc

# dataset -> (loss kind, primary metric)
TASKS = {"chexpert": ("multilabel", "auroc"), "rsna": ("multilabel", "auroc"), "covidx": ("multiclass", "accuracy")}


class CachedSource:
    """Training/eval batches read from cached features; view `epoch % V` when several augmented views exist."""

    def __init__(self, feature_set: FeatureSet):
        self.feature_set = feature_set

    def __len__(self) -> int:
        return len(self.feature_set)

    def batches(self, order: torch.Tensor, batch_size: int, epoch: int):
        views = self.feature_set.features.shape[0]
        for index in order.split(batch_size):
            yield self.feature_set.features[epoch % views, index], self.feature_set.labels[index]


class EncodingSource:
    """The uncached baseline: every batch's images are loaded and encoded again."""

    def __init__(self, encoder, dataset, pooling: str, device: str = "cpu", num_workers: int = 0):
        self.encoder, self.dataset, self.pooling = encoder, dataset, pooling
        self.device, self.num_workers = device, num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    @torch.no_grad()
    def batches(self, order: torch.Tensor, batch_size: int, epoch: int):
        loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in order.split(batch_size)],
                            num_workers=self.num_workers, collate_fn=default_collate)
        for batch in loader:
            feats = pool_features(self.encoder, batch["image"].to(self.device), self.pooling).float().cpu()
            yield feats, batch["label"]


class LinearProbe(torch.nn.Module):
    """One linear layer on standardised features. features [B, D] -> logits [B, C].

    The features first pass a BatchNorm without affine parameters (the linear probe of MAE): pretrained encoders can
    put most of their variance in a few directions (a near-collapsed CLS token has per-dimension std ~0.03 against
    ~0.6 at random init), and without standardisation the optimiser's step size, not the features, decides the
    result. At test time the normalisation is a fixed affine map, so the classifier is still one linear layer.
    """

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(feature_dim, affine=False, eps=1e-6)
        self.linear = torch.nn.Linear(feature_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """logits [B, C]; labels [B, C] float (multilabel, BCE) or [B] long (multiclass, cross-entropy)."""
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits, labels.long())


@torch.no_grad()
def evaluate_head(head: torch.nn.Module, source, kind: str, class_names: Sequence[str], split: str,
                  device: str = "cpu", warn: bool = True) -> dict:
    """Loss, AUROC (macro + per class) and, for multi-class, accuracy of the head on one split."""
    head.eval()
    logits, labels = [], []
    for feats, batch_labels in source.batches(torch.arange(len(source)), 1024, epoch=0):
        logits.append(head(feats.to(device)).cpu())
        labels.append(batch_labels)
    logits, labels = torch.cat(logits), torch.cat(labels)
    metrics = {"loss": float(classification_loss(logits, labels, kind)), "num_images": int(labels.shape[0])}
    scores = logits.softmax(dim=1) if kind == "multiclass" else logits
    area = auroc(scores, labels, class_names, split=split, warn=warn)
    metrics["auroc"] = area["macro"]
    metrics["auroc_per_class"] = area["per_class"]
    if kind == "multiclass":
        metrics["accuracy"] = accuracy(logits, labels)
    return metrics


SELECT_BY = ("loss", "metric")


def train_linear_head(train, val, *, feature_dim: int, num_classes: int, kind: str, primary: str,
                      class_names: Sequence[str], epochs: int = 50, batch_size: int = 64, lr: float = 1e-3,
                      weight_decay: float = 1e-6, patience: int = 10, seed: int = 42, device: str = "cpu",
                      select_by: str = "loss", log=print) -> tuple[LinearProbe, dict]:
    """Train a LinearProbe on (features, labels) batches from `train`; keep the best epoch on `val`.

    train/val: CachedSource or EncodingSource. Returns (best head, {best_epoch, epochs_run, val}).
    The shuffling order depends only on `seed`, so cached and uncached sources see identical batches.
    """
    if select_by not in SELECT_BY:
        raise ValueError(f"select_by must be one of {SELECT_BY}, got {select_by!r}")
    if len(train) < 2:
        raise ValueError(f"linear probe: the training split holds {len(train)} image(s); at least 2 are needed "
                         f"(raise --data-pct)")
    torch.manual_seed(seed)
    head = LinearProbe(feature_dim, num_classes).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    order_rng = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, math.ceil(len(train) / batch_size))
    total_steps = epochs * steps_per_epoch
    step, best, best_key, bad_epochs, epoch = 0, None, None, 0, -1
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(len(train), generator=order_rng)
        if len(order) % batch_size == 1:  # BatchNorm cannot standardise a batch of one: that image waits an epoch
            order = order[:-1]
        for feats, labels in train.batches(order, batch_size, epoch):
            set_lr(optimizer, lr_at(step, base_lr=lr, warmup_steps=0, total_steps=total_steps))
            loss = classification_loss(head(feats.to(device)), labels.to(device), kind)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        val_metrics = evaluate_head(head, val, kind, class_names, "valid", device, warn=epoch == 0)
        key = monitor_key(val_metrics, primary, select_by)
        if best_key is None or key > best_key:
            best_key, bad_epochs = key, 0
            best = {"head": copy.deepcopy(head.state_dict()), "epoch": epoch, "val": val_metrics}
        else:
            bad_epochs += 1
        if epoch % 10 == 0 or bad_epochs == 0:
            log(f"  epoch {epoch:3d} train_loss {loss.item():.4f} val_loss {val_metrics['loss']:.4f} "
                f"val_{primary} {val_metrics.get(primary)}")
        if bad_epochs >= patience:
            break
    head.load_state_dict(best["head"])
    return head, {"best_epoch": best["epoch"], "epochs_run": epoch + 1, "val": best["val"]}


@dataclass
class LinearTaskConfig:
    """The linear probe's own flags."""
    dataset: str | None = option(None, "data set (required)", choices=sorted(TASKS))
    patience: int = option(10, "early stopping: epochs without validation improvement")
    select_by: str = option("loss", "best epoch by validation loss (MGCA's monitor; stable on small validation "
                                    "sets) or by the validation AUROC / accuracy", choices=SELECT_BY)
    feature_cache: str | None = option(None, "folder for cached features (none: <output-dir>/feature_cache)")
    cache: bool = option(True, "train on features computed once per split (--no-cache: re-encode the images "
                               "every epoch; slow, for comparison)")
    augmented_views: int = option(0, "cache this many augmented passes of the training split (one per epoch) "
                                     "instead of one clean pass")


LinearConfig = downstream_config("LinearConfig", LinearTaskConfig)


# paper: MGCA's linear protocol (mgca_finetuner.py / ssl_finetuner.py): AdamW 5e-4, weight decay 1e-6, batch 48,
# at most 50 epochs, early stopping on the validation loss with patience 10; 1% / 10% / 100% of the training split
PAPER = LinearConfig(run=RunConfig(batch_size=48))
# demo: the generated world on a CPU, whole training split; lr 1e-2 suits the standardised features of LinearProbe
DEMO = LinearConfig(run=RunConfig(data_pct=(1.0,), batch_size=64, lr=1e-2))
PRESETS = {"demo": DEMO, "paper": PAPER}


class LinearTask(DownstreamTask):
    """The linear probe as a downstream plug-in: features of the frozen encoder, cached per split."""
    name = prefix = "linear"
    description = "Linear probe on a frozen image encoder"
    config_cls, presets = LinearConfig, PRESETS
    datasets = tuple(sorted(TASKS))
    rows = (("val", None, ""), ("test", None, ""))
    final_keys = ("auroc", "accuracy")

    def primary(self, dataset: str) -> str:
        return TASKS[dataset][1]

    def setup(self, run: SeedRun) -> None:
        task, output_dir = run.config.task, run.config.run.output_dir
        size, pooling = run.source["image_size"], run.source["pooling"]
        run.log(f"linear {run.dataset}: encoder {run.source['name']} @ {size}px from {run.source['origin']} "
                f"(pooling: {pooling})")
        cache_dir = task.feature_cache
        if cache_dir is None and output_dir is not None:
            cache_dir = Path(output_dir) / "feature_cache"
        run.state["cache_dir"] = cache_dir
        run.state["encoder_hash"] = encoder_fingerprint(run.encoder, pooling) if task.cache else None
        run.state["labels"] = data_fingerprint(run.root)
        run.state["class_names"] = list(self._dataset(run, "valid", 1.0, False).class_names)
        run.state["val"], run.state["test"] = self._source(run, "valid"), self._source(run, "test")

    def _dataset(self, run: SeedRun, split: str, pct: float, augment: bool):
        from cgns.data.datasets import build

        return build("classification", run.dataset, split, data_root=run.root, image_size=run.source["image_size"],
                     data_pct=pct, seed=run.seed, augment=augment)

    def _source(self, run: SeedRun, split: str, pct: float = 1.0, views: int = 0):
        """CachedSource of one split (EncodingSource with cache off); views > 0: that many augmented passes."""
        config, pooling = run.config, run.source["pooling"]
        if not config.task.cache:
            return EncodingSource(run.encoder, self._dataset(run, split, pct, False), pooling, run.device,
                                  config.run.num_workers)
        spec = {"dataset": run.dataset, "root": str(run.root.resolve()), "split": split, "data_pct": pct,
                "seed": run.seed, "image_size": run.source["image_size"], "augment": views > 0,
                "labels": run.state["labels"]}
        features = cached_features(run.encoder, lambda: self._dataset(run, split, pct, views > 0), pooling, spec,
                                   views=max(views, 1), cache_dir=run.state["cache_dir"],
                                   encoder_hash=run.state["encoder_hash"], batch_size=config.run.batch_size,
                                   device=run.device, num_workers=config.run.num_workers, log=run.log)
        return CachedSource(features)

    def fraction(self, run: SeedRun, pct: float) -> Fraction:
        train = self._source(run, "train", pct, run.config.task.augmented_views)
        return Fraction(pct, train, run.state["val"], run.state["test"], len(train))

    def train_head(self, run: SeedRun, data: Fraction, whitening) -> tuple:
        config, kind, primary = run.config, *TASKS[run.dataset]
        feature_dim = next(data.train.batches(torch.arange(1), 1, 0))[0].shape[1]
        head, summary = train_linear_head(
            data.train, data.val, feature_dim=feature_dim, num_classes=len(run.state["class_names"]), kind=kind,
            primary=primary, class_names=run.state["class_names"], epochs=config.run.epochs,
            batch_size=config.run.batch_size, lr=config.run.lr, weight_decay=config.run.weight_decay,
            patience=config.task.patience, seed=run.seed, device=run.device, select_by=config.task.select_by,
            log=run.log)
        return head, summary, summary["val"]

    def evaluate(self, run: SeedRun, data: Fraction, head, summary: dict) -> dict:
        test = evaluate_head(head, data.test, TASKS[run.dataset][0], run.state["class_names"], "test", run.device)
        return {"val": summary["val"], "test": test,
                "train": {"num_images": data.num_train, "best_epoch": summary["best_epoch"],
                          "epochs_run": summary["epochs_run"]}}


LINEAR = LinearTask()
