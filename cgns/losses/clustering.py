"""Loss 3 with CGNS: cross-modal k-means over sentence features gives each sentence a hard negative (its
second-nearest centroid) and flags false negatives (other sentences of its cluster).

The centroids are a buffer: saved in the state dict, updated only in training, from sums and counts all-reduced
over the ranks so every rank holds the same values, and never touched by the optimiser.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgns.distributed import all_reduce_sum, gather_rows, global_mean
from cgns.losses.local_alignment import sentence_logits
from cgns.ops import kmeans_assign, kmeans_update, momentum_update


def hard_negative_cross_entropy(logits: torch.Tensor, hard_negative_cosine: torch.Tensor, labels: torch.Tensor,
                                hard_negative_weight: float) -> torch.Tensor:
    """Summed cross-entropy of the original's extended [n,2N] logits against labels, without building them.

    The original appends N columns to each row of the in-batch logits [n,N]: column j holds cos(z1_i, hard negative
    of i) when j is i's own column, else 0, and multiplies the whole [n,2N] matrix by weights that are 1 on the
    in-batch block, hard_negative_weight on the own appended column and 0 elsewhere. Per row that adds its own
    column (weight * h) and N-1 columns of logit 0: logsumexp over the row = logsumexp of [lse(in-batch), weight *
    h, log(N-1)]. (tests/test_losses_clustering.py checks this against cross-entropy over the explicit matrix.)
    """
    positive = logits.gather(1, labels[:, None])[:, 0]                                  # [n]
    others = math.log(logits.shape[1] - 1) if logits.shape[1] > 1 else -math.inf
    parts = [hard_negative_weight * hard_negative_cosine, torch.full_like(hard_negative_cosine, others)]
    row = torch.logsumexp(torch.stack([torch.logsumexp(logits, dim=1), *parts], dim=1), dim=1)
    return (row - positive).sum()


def margin_loss(delta: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Bidirectional margin: pushes -beta <= delta <= -alpha, delta = cos(i, j) - cos(i, i)."""
    return F.relu(delta + alpha) + F.relu(-delta - beta)


@torch.no_grad()
def greedy_chain(points: torch.Tensor, num_clusters: int, first: int) -> torch.Tensor:
    """Indices of num_clusters points: start at `first`, then each next one is the point least similar to the
    previous pick among those not picked yet. points [N,D] (N >= num_clusters) -> long[num_clusters]."""
    unit = F.normalize(points, dim=-1)
    similarity = unit @ unit.T                                                     # [N,N]
    chosen = torch.empty(num_clusters, dtype=torch.long, device=points.device)
    last = torch.tensor([first], device=points.device)
    chosen[0] = last[0]
    for i in range(1, num_clusters):  # inherently sequential; runs once, kept on device (no host syncs)
        similarity.index_fill_(1, last, float("inf"))                             # never pick it again
        last = similarity.index_select(0, last).argmin(dim=1)                     # [1]
        chosen[i] = last[0]
    return chosen


class ClusterNegativeSampler(nn.Module):
    """forward(sentences [n,D], image_to_sentence [n,D]) -> (losses, stats).

    losses: 'local_text' (cross-entropy over z1 x z2 cosines, plus the hard-negative columns once k-means has
    started) and 'false_negative' (weighted margin loss over same-cluster pairs; 0 before the start).
    stats (tensors, detached): kmeans_started, kmeans_started_step, kmeans_reseeds, mean_cosine, hard_negative_sim,
    false_negative_pairs, cluster_sizes [K].

    reseed_share (0 = off, the original): when one centroid takes more than this share of a step's sentences, the
    centroids are re-initialised by the greedy chain from that step's z2. Online k-means started on features that
    then move (a randomly initialised model's do, a lot) otherwise keeps one live centroid and K-1 dead ones: every
    sentence in one cluster, so every pair a "false negative" and one shared "hard negative".
    """

    def __init__(self, dim: int, *, num_clusters: int = 128, lr: float = 1e-3, start_cosine: float = 0.4,
                 hard_negative_weight: float = 3.0, alpha: float = 0.2, beta: float = 0.5,
                 false_negative_weight: float = 1e-4, temperature: float = 1.0, seed: int = 0,
                 reseed_share: float = 0.0):
        super().__init__()
        if num_clusters < 2:
            raise ValueError(f"CGNS needs at least 2 clusters (nearest and second-nearest), got {num_clusters}")
        self.num_clusters, self.lr = num_clusters, lr
        self.start_cosine, self.hard_negative_weight = start_cosine, hard_negative_weight
        self.alpha, self.beta, self.false_negative_weight = alpha, beta, false_negative_weight
        self.temperature, self.seed = temperature, seed
        if not 0 <= reseed_share <= 1:
            raise ValueError(f"k-means reseed share must be in [0, 1] (0 = off), got {reseed_share}")
        self.reseed_share = reseed_share
        self.register_buffer("centroids", torch.zeros(num_clusters, dim))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self.register_buffer("started_step", torch.full((), -1, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("reseeds", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def seed_centroids(self, points_all: torch.Tensor) -> None:
        """Greedy-chain centroids from every rank's z2 (identical on all ranks, so no broadcast needed)."""
        # The first pick is random but seeded by the step, so every rank (and a resumed run) picks the same one.
        generator = torch.Generator().manual_seed(self.seed + int(self.step))
        first = int(torch.randint(points_all.shape[0], (1,), generator=generator))
        chosen = greedy_chain(points_all.to(self.centroids.dtype), self.num_clusters, first)
        self.centroids.copy_(F.normalize(points_all[chosen].to(self.centroids.dtype), dim=-1))

    @torch.no_grad()
    def initialise(self, points_all: torch.Tensor) -> None:
        """The k-means start: seed the centroids and record the step."""
        self.seed_centroids(points_all)
        self.started.fill_(True)
        self.started_step.copy_(self.step)

    @torch.no_grad()
    def update(self, points: torch.Tensor) -> torch.Tensor:
        """One momentum step from this rank's z2 [n,D] (detached); sums and counts are all-reduced first.
        Returns the global cluster sizes long[K]."""
        points = points.to(self.centroids.dtype)
        nearest = kmeans_assign(points, self.centroids)[0][:, 0]
        sums, counts = kmeans_update(points, nearest, self.num_clusters)
        sums, counts = all_reduce_sum(sums), all_reduce_sum(counts)
        self.centroids.copy_(momentum_update(self.centroids, sums, counts, lr=self.lr))
        return counts

    def forward(self, sentences: torch.Tensor, image_to_sentence: torch.Tensor):
        z1, z2_all, logits, labels = sentence_logits(sentences, image_to_sentence, self.temperature)
        n, device = z1.shape[0], z1.device
        # Mean of the whole (global) cosine matrix: decides when k-means starts, identically on every rank.
        cosine_sum = all_reduce_sum(torch.stack([logits.detach().float().sum() * self.temperature,
                                                 torch.tensor(float(logits.numel()), device=device)]))
        mean_cosine = cosine_sum[0] / cosine_sum[1]
        cluster_sizes = torch.zeros(self.num_clusters, dtype=torch.long, device=device)
        use_hard_negatives = bool(self.started)
        if self.training:
            if not use_hard_negatives:
                if z2_all.shape[0] >= self.num_clusters and bool(mean_cosine <= self.start_cosine):
                    self.initialise(z2_all.detach())
            else:
                cluster_sizes = self.update(F.normalize(image_to_sentence.detach(), dim=-1))
                if self.reseed_share > 0 and bool(cluster_sizes.max() > self.reseed_share * cluster_sizes.sum()):
                    self.seed_centroids(z2_all.detach())
                    self.reseeds += 1
            self.step += 1

        stats = {"kmeans_started": self.started.float(), "kmeans_started_step": self.started_step.clone(),
                 "kmeans_reseeds": self.reseeds.clone(),
                 "mean_cosine": mean_cosine, "cluster_sizes": cluster_sizes}
        if not use_hard_negatives:
            loss = F.cross_entropy(logits, labels, reduction="sum")
            stats.update(hard_negative_sim=torch.zeros((), device=device),
                         false_negative_pairs=torch.zeros((), device=device))
            return {"local_text": global_mean(loss, n), "false_negative": torch.zeros((), device=device)}, stats

        assignment = kmeans_assign(z1.detach().to(self.centroids.dtype), self.centroids)[0]   # [n,2]
        # Centroids are not unit vectors (the 'sum' update grows them): compare by cosine, as the assignment does.
        hard_negative = F.normalize(self.centroids[assignment[:, 1]], dim=-1)                # [n,D], no gradient
        hard_negative_cosine = (z1 * hard_negative.to(z1.dtype)).sum(dim=-1)                 # [n]
        loss = hard_negative_cross_entropy(logits, hard_negative_cosine / self.temperature, labels,
                                           self.hard_negative_weight)

        # False negatives: pairs whose z1 share the nearest centroid, the anchor's own pair excluded.
        cluster = assignment[:, 0]
        cluster_all, _ = gather_rows(cluster, with_grad=False)                               # [N]
        own = torch.arange(logits.shape[1], device=device)[None, :] == labels[:, None]        # [n,N]
        same_cluster = (cluster[:, None] == cluster_all[None, :]) & ~own                     # [n,N]
        delta = logits - logits.gather(1, labels[:, None])                                   # cos(i,j) - cos(i,i)
        flagged = same_cluster.to(logits.dtype)
        margin = (margin_loss(delta, self.alpha, self.beta) * flagged).sum()
        pairs = flagged.sum()
        # Mean over every entry of the global [N,N] matrix, flagged or not, as the original does (its weight 1e-4 is
        # set for that scale); the original's unflagged entries add a constant 0.2 each, no gradient, left out here.
        false_negative = self.false_negative_weight * global_mean(margin, logits.numel())
        stats.update(hard_negative_sim=hard_negative_cosine.detach().mean(),
                     false_negative_pairs=all_reduce_sum(pairs.detach()))
        return {"local_text": global_mean(loss, n), "false_negative": false_negative}, stats
