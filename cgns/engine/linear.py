"""Linear classification: a frozen image encoder + one linear layer (CheXpert, RSNA, COVIDx).

Protocol (DATASETS.md): CheXpert 5 labels and RSNA 1 label with BCE, metric macro AUROC; COVIDx 3 classes with
cross-entropy, metric accuracy. AdamW, cosine schedule over the epoch budget, early stopping on the validation
loss (MGCA's monitor; `select_by="metric"` uses the validation AUROC / accuracy instead, ties broken by the loss),
test with the best epoch's head. Selecting by the loss is the stable choice on small validation sets: on the demo
CheXpert data (87 validation images) three head seeds gave test AUROC 0.748 / 0.780 / 0.791 selected by AUROC and
0.780 / 0.783 / 0.791 selected by loss (same frozen features).

The head trains on features computed once per split (cgns.engine.features); `cache_features=False` re-encodes the
images of every batch instead, kept for the equality test and the speed benchmark.
"""
from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from cgns.engine.features import (FeatureSet, cached_features, data_fingerprint, encoder_fingerprint,
                                  load_frozen_encoder, pool_features)
from cgns.engine.schedule import lr_at, set_lr
from cgns.eval.metrics import accuracy, auroc

# dataset -> (loss kind, primary metric)
TASKS = {"chexpert": ("multilabel", "auroc"), "rsna": ("multilabel", "auroc"), "covidx": ("multiclass", "accuracy")}


def pct_key(pct: float) -> str:
    """0.01 -> '0.01', 0.1 -> '0.1', 1.0 -> '1' (the keys of metrics.json)."""
    return f"{pct:g}"


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


def _monitor_key(metrics: dict, primary: str, select_by: str = "loss") -> tuple:
    """Larger is better: (-val loss) or (val metric, -val loss)."""
    if select_by == "loss":
        return (-metrics["loss"],)
    value = metrics.get(primary)
    return (-math.inf if value is None else value, -metrics["loss"])


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
        key = _monitor_key(val_metrics, primary, select_by)
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


def run_linear_eval(dataset: str, *, data_root: Optional[os.PathLike] = None, encoder_name: Optional[str] = None,
                    image_size: Optional[int] = None, checkpoint: Optional[os.PathLike] = None,
                    image_weights: Optional[os.PathLike] = None, random_init: bool = False,
                    resize_checkpoint: bool = False,
                    data_pcts: Sequence[float] = (1.0,), seed: int = 42, epochs: int = 50, batch_size: int = 64,
                    lr: float = 1e-2, weight_decay: float = 1e-6, patience: int = 10, device: str = "cpu",
                    select_by: str = "loss", output_dir: Optional[os.PathLike] = None,
                    feature_cache: Optional[os.PathLike] = None,
                    cache_features: bool = True, augmented_views: int = 0, num_workers: int = 0,
                    log=print) -> dict:
    """Linear probe for each training fraction -> {"<pct>": {"val": {...}, "test": {...}, "train": {...}}}.

    data_root None -> the demo copy (cgns.data.roots.resolve_data_root). Exactly one of checkpoint / image_weights /
    random_init. feature_cache: folder of the on-disk feature cache (default <output_dir>/feature_cache; None and
    no output_dir -> in-memory only). augmented_views > 0: the training features are that many augmented passes
    (one per epoch, cycling) instead of one clean pass. Writes <output_dir>/metrics.json when output_dir is given.
    """
    from cgns.cli import write_metrics
    from cgns.data.roots import resolve_data_root

    if dataset not in TASKS:
        raise ValueError(f"linear classification: unknown dataset '{dataset}' (expected one of {sorted(TASKS)})")
    kind, primary = TASKS[dataset]
    # the encoder first: a checkpoint that does not match the flags is refused before any data is touched
    encoder, source = load_frozen_encoder(encoder_name, image_size, checkpoint=checkpoint,
                                          image_weights=image_weights, random_init=random_init, seed=seed,
                                          resize_checkpoint=resize_checkpoint)
    root = resolve_data_root(dataset, data_root)
    from cgns.data.datasets import build

    encoder.to(device)
    size, pooling = source["image_size"], source["pooling"]
    log(f"linear {dataset}: encoder {source['name']} @ {size}px from {source['origin']} (pooling: {pooling})")
    if feature_cache is None and output_dir is not None:
        feature_cache = Path(output_dir) / "feature_cache"
    encoder_hash = encoder_fingerprint(encoder, pooling) if cache_features else None
    labels_fingerprint = data_fingerprint(root)

    def split_dataset(split: str, pct: float, augment: bool):
        return build("classification", dataset, split, data_root=root, image_size=size, data_pct=pct, seed=seed,
                     augment=augment)

    def split_source(split: str, pct: float = 1.0, views: int = 0):
        if not cache_features:
            return EncodingSource(encoder, split_dataset(split, pct, False), pooling, device, num_workers)
        spec = {"dataset": dataset, "root": str(root.resolve()), "split": split, "data_pct": pct, "seed": seed,
                "image_size": size, "augment": views > 0, "labels": labels_fingerprint}
        return CachedSource(cached_features(encoder, lambda: split_dataset(split, pct, views > 0), pooling, spec,
                                            views=max(views, 1), cache_dir=feature_cache, encoder_hash=encoder_hash,
                                            batch_size=batch_size, device=device, num_workers=num_workers, log=log))

    reference = split_dataset("valid", 1.0, False)
    class_names = list(reference.class_names)
    num_classes = len(class_names)
    val, test = split_source("valid"), split_source("test")
    results = {}
    for pct in data_pcts:
        start = time.perf_counter()
        train = split_source("train", pct, augmented_views)
        feature_dim = next(train.batches(torch.arange(1), 1, 0))[0].shape[1]
        head, summary = train_linear_head(train, val, feature_dim=feature_dim, num_classes=num_classes, kind=kind,
                                          primary=primary, class_names=class_names, epochs=epochs,
                                          batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                          patience=patience, seed=seed, device=device, select_by=select_by,
                                          log=log)
        test_metrics = evaluate_head(head, test, kind, class_names, "test", device)
        results[pct_key(pct)] = {
            "val": summary["val"], "test": test_metrics,
            "train": {"num_images": len(train), "best_epoch": summary["best_epoch"],
                      "epochs_run": summary["epochs_run"], "seconds": round(time.perf_counter() - start, 2)}}
        log(f"linear {dataset} {pct_key(pct)}: val {primary} {summary['val'].get(primary)} "
            f"test {primary} {test_metrics.get(primary)} (best epoch {summary['best_epoch']})")
    if output_dir is not None:
        largest = results[pct_key(max(data_pcts))]
        write_metrics(output_dir, {**results, "val": largest["val"], "test": largest["test"],
                                   "encoder": source, "dataset": dataset, "primary_metric": primary})
    return results


def paper_row(dataset: str, results: dict, split: str = "test") -> str:
    """'chexpert  test auroc (%)  1%: 61.2 | 10%: 70.3 | 100%: 74.0' — the layout of the paper's tables."""
    primary = TASKS[dataset][1]
    cells = []
    for key, entry in results.items():
        if not isinstance(entry, dict) or split not in entry:
            continue
        value = entry[split].get(primary)
        shown = "n/a" if value is None else f"{100 * value:.1f}"
        cells.append(f"{100 * float(key):g}%: {shown}")
    return f"{dataset}  {split} {primary} (%)  " + " | ".join(cells)
