"""The frozen image encoder of the downstream tasks: where it comes from (load_frozen_encoder: a pretraining
checkpoint, ImageNet-format weights or random init), how its global feature is pooled, and its features computed
once per split and image and cached on disk by content (for the linear probe).

A cache entry is keyed by (a hash of the encoder's weights and pooling) x (how the data was built: data set, split,
fraction, seed, image size, augmentation passes, the label files' sizes and times). A different checkpoint, a
re-generated data set or another fraction therefore never hits an old entry; identical inputs always do.

Pooling of the global image feature (`pool_features`):
  ViT       -> the CLS token after the final norm (forward()['global']), as the ViT linear-probe protocol does.
  ResNet-50 -> global average of layer4 ([B, 2048, h, w] -> [B, 2048]). This is what torchvision's classifier and
               the MGCA/GLoRIA linear protocol feed the linear layer; it is parameter-free, so random init,
               ImageNet weights and our checkpoints are compared on identical terms (the attention pooling used
               during pretraining has no ImageNet counterpart and would be random for the baselines).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from cgns.io import atomic_torch_save

LABEL_FILE_SUFFIXES = (".csv", ".txt", ".gz", ".json")


@dataclass
class FeatureSet:
    """Cached features of one split. features [V, N, D] (V views: 1, or the number of augmented passes);
    labels [N, C] float (multi-label) or [N] long (multi-class)."""
    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.features.shape[1]


def pooling_for(encoder_name: str) -> str:
    """'avg_layer4' for ResNets, 'cls' for ViTs (see the module docstring for why)."""
    return "avg_layer4" if encoder_name.startswith("resnet") else "cls"


def pool_features(encoder: torch.nn.Module, images: torch.Tensor, pooling: str) -> torch.Tensor:
    """images [B, 3, S, S] -> global features [B, D] with the given pooling."""
    if pooling == "avg_layer4":
        layer4 = encoder.feature_pyramid(images)[-1]  # [B, 2048, S/32, S/32]
        return layer4.mean(dim=(2, 3))
    if pooling == "cls":
        return encoder(images)["global"]
    raise ValueError(f"unknown pooling '{pooling}' (expected 'cls' or 'avg_layer4')")


def encoder_fingerprint(encoder: torch.nn.Module, pooling: str) -> str:
    """sha1 over the encoder's class, pooling, and every parameter/buffer (name, shape, dtype, bytes)."""
    digest = hashlib.sha1(f"{type(encoder).__qualname__}|{pooling}".encode())
    for name, tensor in encoder.state_dict().items():
        shape = tensor.shape
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tuple(shape)}|{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def data_fingerprint(data_root: Optional[os.PathLike]) -> list:
    """(relative path, size, mtime) of the label/list files within two levels of the data root: regenerated or
    edited label tables change the key even when the folder name stays the same."""
    if data_root is None:
        return []
    root = Path(data_root)
    entries = []
    for path in sorted(list(root.glob("*")) + list(root.glob("*/*"))):
        if path.is_file() and path.name.endswith(LABEL_FILE_SUFFIXES):
            stat = path.stat()
            entries.append([str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns])
    return entries


def cache_key(encoder_hash: str, data_spec: dict) -> str:
    payload = json.dumps({"encoder": encoder_hash, "data": data_spec}, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


@torch.no_grad()
def encode_dataset(encoder: torch.nn.Module, dataset: Dataset, pooling: str, *, batch_size: int = 64,
                   device: str = "cpu", num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the frozen encoder over a classification dataset -> (features [N, D] float32 on CPU, labels)."""
    encoder.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=default_collate)
    feats, labels = [], []
    for batch in loader:
        feats.append(pool_features(encoder, batch["image"].to(device), pooling).float().cpu())
        labels.append(batch["label"])
    if not feats:
        raise ValueError(f"encode_dataset: the dataset is empty ({type(dataset).__name__})")
    return torch.cat(feats), torch.cat(labels)


def cached_features(encoder: torch.nn.Module, make_dataset, pooling: str, data_spec: dict, *, views: int = 1,
                    cache_dir: Optional[os.PathLike] = None, encoder_hash: Optional[str] = None,
                    batch_size: int = 64, device: str = "cpu", num_workers: int = 0,
                    log=print) -> FeatureSet:
    """Features of one split, from the disk cache when an entry with the same key exists.

    make_dataset(): builds the split's dataset (called only on a cache miss). With views > 1 the dataset should
    augment: each pass draws new augmentations, giving [views, N, D] (the head sees one view per epoch).
    data_spec: JSON-able description of how the data is built (data set, root, split, fraction, seed, ...).
    """
    encoder_hash = encoder_hash or encoder_fingerprint(encoder, pooling)
    key = cache_key(encoder_hash, {**data_spec, "views": views})
    path = Path(cache_dir) / f"{data_spec.get('dataset', 'data')}_{data_spec.get('split', '')}_{key}.pt" \
        if cache_dir is not None else None
    if path is not None and path.is_file():
        from cgns.engine.checkpoint import load_plain

        entry = load_plain(path, "feature cache")
        log(f"features: cache hit {path.name} ({entry['features'].shape[1]} images)")
        return FeatureSet(entry["features"], entry["labels"])
    dataset = make_dataset()
    passes = [encode_dataset(encoder, dataset, pooling, batch_size=batch_size, device=device,
                             num_workers=num_workers) for _ in range(views)]
    features = torch.stack([f for f, _ in passes])  # [V, N, D]
    labels = passes[0][1]
    if path is not None:
        atomic_torch_save(path, {"features": features, "labels": labels, "key": key, "data_spec": data_spec})
        log(f"features: cached {path.name} ({features.shape[1]} images x {views} view(s))")
    return FeatureSet(features, labels)


def checkpoint_encoder_config(checkpoint: os.PathLike) -> tuple[str, int]:
    """(image_encoder, image_size) recorded in a pretraining checkpoint's config."""
    from cgns.engine.checkpoint import load_checkpoint

    config = load_checkpoint(checkpoint).get("config") or {}
    missing = [k for k in ("image_encoder", "image_size") if k not in config]
    if missing:
        raise ValueError(f"checkpoint {checkpoint}: its 'config' lacks {missing}; cannot tell which image encoder "
                         f"it holds")
    return str(config["image_encoder"]), int(config["image_size"])


def load_frozen_encoder(encoder_name: Optional[str] = None, image_size: Optional[int] = None, *,
                        checkpoint: Optional[os.PathLike] = None, image_weights: Optional[os.PathLike] = None,
                        random_init: bool = False, seed: int = 42, default_encoder: str = "resnet50",
                        default_image_size: int = 224, frozen: bool = True,
                        resize_checkpoint: bool = False) -> tuple[torch.nn.Module, dict]:
    """The image encoder for downstream evaluation, from exactly one source (requires_grad off when frozen).

    checkpoint: a pretraining checkpoint; the encoder name and size come from its config, and a flag that
      disagrees (encoder_name / image_size not None and different) is refused with both values named, except an
      image_size with resize_checkpoint=True: the encoder is then built at that size and the checkpoint's position
      tables are resampled to its grid (evaluating a 64-px demo encoder at 256 px, say).
    image_weights: an ImageNet-format (timm / torchvision) state dict for `encoder_name`.
    random_init: a freshly initialised encoder (seeded by `seed`).
    Returns (encoder, source) with source = {name, image_size, pooling, origin}.
    """
    from cgns.models.encoders import load_image_encoder

    chosen = [flag for flag, on in (("--checkpoint", checkpoint is not None),
                                    ("--image-weights", image_weights is not None),
                                    ("--random-init", bool(random_init))) if on]
    if len(chosen) != 1:
        raise ValueError(f"choose exactly one encoder source: --checkpoint PATH, --image-weights PATH or "
                         f"--random-init (got {chosen or 'none'})")
    if checkpoint is not None:
        saved_name, saved_size = checkpoint_encoder_config(checkpoint)
        mismatches = []
        if encoder_name is not None and encoder_name != saved_name:
            mismatches.append(f"--image-encoder {encoder_name} but the checkpoint holds {saved_name}")
        resized = image_size is not None and int(image_size) != saved_size
        if resized and not resize_checkpoint:
            mismatches.append(f"--image-size {image_size} but the checkpoint was trained at {saved_size}")
        if mismatches:
            raise ValueError(f"checkpoint {checkpoint} does not match the flags: " + "; ".join(mismatches)
                             + " (omit the flags to use the checkpoint's own settings, or add --resize-checkpoint "
                               "to evaluate it at another size)")
        encoder_name, image_size = saved_name, (int(image_size) if resized else saved_size)
        origin = f"checkpoint:{Path(checkpoint).resolve()}"
    else:
        encoder_name = encoder_name or default_encoder
        image_size = int(image_size or default_image_size)
        origin = f"image_weights:{Path(image_weights).resolve()}" if image_weights else f"random_init:seed={seed}"
    if random_init:
        torch.manual_seed(seed)  # the random baseline is reproducible
    encoder = load_image_encoder(encoder_name, image_size, checkpoint=checkpoint, image_weights=image_weights)
    if frozen:
        encoder.eval()
        for param in encoder.parameters():
            param.requires_grad_(False)
    return encoder, {"name": encoder_name, "image_size": image_size, "pooling": pooling_for(encoder_name),
                     "origin": origin}


def whitening_candidates(whiten_shrinkage: Sequence[Optional[float]], finetune: bool, task: str) -> list:
    """The candidate shrinkages of a dense-head run (None = no whitening); refused with fine-tuning, before any data
    is read, since whitening is fitted on fixed features."""
    candidates = list(whiten_shrinkage) or [None]
    if finetune and any(c is not None for c in candidates):
        raise ValueError(f"{task}: --whiten-shrinkage needs a frozen encoder (it whitens fixed features); "
                         f"drop it or --finetune")
    return candidates


def sweep_whitening(candidates: Sequence[Optional[float]], fit_moments: Callable, train_head: Callable, metric: str,
                    log=print) -> tuple:
    """Train one head per whitening shrinkage (None = no whitening) and keep the best on validation.

    fit_moments() -> cgns.models.whitening.MapMoments of the training maps: called once, on the first candidate that
    whitens, and shared by the others. train_head(whitening or None) -> (model, summary, val_metrics, key): key orders
    the heads (larger is better).
    Returns (model, summary, chosen shrinkage, {label: val_metrics[metric]}, spectrum): spectrum is
    MapMoments.spectrum() of the training maps (how anisotropic they are) when a candidate whitens, else None.
    Logs the spectrum and, when several, the candidates.
    """
    from cgns.models.whitening import describe_spectrum, shrinkage_label

    best, tried, moments, spectrum = None, {}, None, None
    for shrinkage in candidates:
        whitening = None
        if shrinkage is not None:
            if moments is None:
                moments = fit_moments()
                spectrum = moments.spectrum()
                log("  encoder maps, training split: " + describe_spectrum(spectrum).replace("\n", "; "))
            whitening = moments.whitening(shrinkage)
            log(f"  whitening shrinkage {shrinkage_label(shrinkage)}")
        model, summary, val_metrics, key = train_head(whitening)
        tried[shrinkage_label(shrinkage)] = val_metrics.get(metric, float("nan")) if val_metrics else float("nan")
        if best is None or key > best[0]:
            best = (key, model, summary, shrinkage)
    _, model, summary, chosen = best
    if len(candidates) > 1:
        log(f"  whitening: validation {metric} " + ", ".join(f"{k} {v:.4f}" for k, v in tried.items())
            + f" -> {shrinkage_label(chosen)}")
    return model, summary, chosen, tried, spectrum
