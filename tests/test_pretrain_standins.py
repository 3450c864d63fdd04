"""Tiny stand-ins for the pretraining model and paired data set, used by the engine tests (no tests here).

The stand-in model has what makes the real loop hard: a contrastive loss gathered across ranks with gradient,
a k-means-like centroid buffer updated from all-reduced sums (must stay identical on every rank), dropout
(RNG-dependent, so exact resume needs the RNG states), and a stage-2-only decoder (unused parameters in stage 1).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 8
VOCAB = 40
TOKENS = 6


class StandInModel(nn.Module):
    def __init__(self, dim: int = 8, num_clusters: int = 4, dropout: float = 0.1):
        super().__init__()
        self.config = {"model": "stand-in", "dim": dim, "num_clusters": num_clusters, "dropout": dropout}
        self.image = nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, 32), nn.ReLU(),
                                   nn.Dropout(dropout), nn.Linear(32, dim))
        self.token = nn.Embedding(VOCAB, dim)
        self.text_proj = nn.Linear(dim, dim)
        self.decoder = nn.Linear(dim, 3 * IMAGE_SIZE * IMAGE_SIZE)  # stage 2 only
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.register_buffer("centroids", F.normalize(torch.randn(num_clusters, dim), dim=1))

    def encode_image(self, images):  # [B,3,S,S] -> [B,D]
        return F.normalize(self.image(images), dim=-1)

    def encode_text(self, input_ids, attention_mask, sentence_index):  # [B,T] -> [B,D]
        tokens = self.token(input_ids) * attention_mask[..., None]
        pooled = tokens.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def forward(self, batch, stage=1, epoch=0):
        image = self.encode_image(batch["image"])
        text = self.encode_text(batch["input_ids"], batch["attention_mask"], batch["sentence_index"])
        if dist.is_initialized() and dist.get_world_size() > 1:
            import torch.distributed.nn as dist_nn
            all_image, all_text = torch.cat(dist_nn.all_gather(image)), torch.cat(dist_nn.all_gather(text))
            offset = dist.get_rank() * image.shape[0]
        else:
            all_image, all_text, offset = image, text, 0
        labels = torch.arange(image.shape[0]) + offset
        scale = self.logit_scale.exp()
        loss_global = 0.5 * (F.cross_entropy(scale * image @ all_text.T, labels)
                             + F.cross_entropy(scale * text @ all_image.T, labels))
        assign = (text.detach() @ self.centroids.T).argmax(1)  # [B]
        if self.training:
            with torch.no_grad():
                sums = torch.zeros_like(self.centroids).index_add_(0, assign, text.detach())
                counts = torch.bincount(assign, minlength=len(self.centroids)).float()
                if dist.is_initialized():
                    dist.all_reduce(sums)
                    dist.all_reduce(counts)
                moved = counts > 0
                self.centroids[moved] = 0.9 * self.centroids[moved] + 0.1 * sums[moved]
        losses = {"global": loss_global,
                  "cluster": -0.1 * (text * self.centroids[assign]).sum(-1).mean()}
        if stage == 2:
            losses["reconstruction"] = F.l1_loss(self.decoder(image), batch["image"].flatten(1))
        stats = {"assigned_clusters": torch.bincount(assign, minlength=len(self.centroids))}
        return losses, stats


class StandInPairs(torch.utils.data.Dataset):
    """n image/report pairs in `classes` groups; the image carries its class pattern plus fresh noise from the
    global torch RNG on every access (augmentation), the report is a class-specific token list."""

    def __init__(self, n: int = 48, classes: int = 6, seed: int = 0, augment: bool = True):
        generator = torch.Generator().manual_seed(seed)
        self.patterns = torch.randn(classes, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        self.words = torch.randint(1, VOCAB, (classes, TOKENS), generator=generator)
        self.labels = torch.arange(n) % classes
        self.augment = augment

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        label = self.labels[index]
        image = self.patterns[label].clone()
        if self.augment:
            image = image + 0.3 * torch.randn_like(image)
        return {"image": image, "input_ids": self.words[label].clone(),
                "attention_mask": torch.ones(TOKENS, dtype=torch.long),
                "sentence_index": torch.ones(TOKENS, dtype=torch.long), "index": index}
