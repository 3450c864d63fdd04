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
def greedy_chain(points: torch.Tensor, num_clusters: int, first) -> torch.Tensor:
    """Indices of num_clusters points: start at `first`, then each next one is the point least similar to the
    previous pick among those not picked yet. points [N,D] (N >= num_clusters), first an int or a long tensor [1]
    -> long[num_clusters]."""
    unit = F.normalize(points, dim=-1)
    similarity = unit @ unit.T                                                     # [N,N]
    chosen = torch.empty(num_clusters, dtype=torch.long, device=points.device)
    # `first` may be a host tensor (a seeded CPU draw): copied without waiting for the device
    last = torch.as_tensor(first, dtype=torch.long).reshape(1).to(points.device, non_blocking=True)
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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "step" in state_dict:  # the host copy of the step counter (read once, at load time)
            self._host_step = int(state_dict[prefix + "step"])

    @property
    def host_step(self) -> int:
        """The training-forward count that `step` holds on the device, kept on the host too, so that seeding by
        step needs no device read."""
        return getattr(self, "_host_step", 0)

    @torch.no_grad()
    def seeded_centroids(self, points_all: torch.Tensor) -> torch.Tensor:
        """Greedy-chain centroids [K,D] from every rank's z2 (identical on all ranks, so no broadcast needed)."""
        # The first pick is random but seeded by the step, so every rank (and a resumed run) picks the same one.
        # It stays a (CPU) tensor: no host read of anything on the device.
        generator = torch.Generator().manual_seed(self.seed + self.host_step)
        first = torch.randint(points_all.shape[0], (1,), generator=generator)
        chosen = greedy_chain(points_all.to(self.centroids.dtype), self.num_clusters, first)
        return F.normalize(points_all[chosen].to(self.centroids.dtype), dim=-1)

    @torch.no_grad()
    def seed_centroids(self, points_all: torch.Tensor) -> None:
        self.centroids.copy_(self.seeded_centroids(points_all))

    @torch.no_grad()
    def initialise(self, points_all: torch.Tensor) -> None:
        """The k-means start: seed the centroids and record the step."""
        self.seed_centroids(points_all)
        self.started.fill_(True)
        self.started_step.copy_(self.step)

    @torch.no_grad()
    def momentum_step(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One momentum step from this rank's z2 [n,D] (detached); sums and counts are all-reduced first.
        Returns (the moved centroids [K,D], the global cluster sizes long[K]); the buffer is not changed."""
        points = points.to(self.centroids.dtype)
        nearest = kmeans_assign(points, self.centroids)[0][:, 0]
        sums, counts = kmeans_update(points, nearest, self.num_clusters)
        sums, counts = all_reduce_sum(sums), all_reduce_sum(counts)
        return momentum_update(self.centroids, sums, counts, lr=self.lr), counts

    @torch.no_grad()
    def update(self, points: torch.Tensor) -> torch.Tensor:
        """momentum_step applied to the buffer. Returns the global cluster sizes long[K]."""
        moved, counts = self.momentum_step(points)
        self.centroids.copy_(moved)
        return counts

    @torch.no_grad()
    def _train_update(self, z2_all: torch.Tensor, image_to_sentence: torch.Tensor, mean_cosine: torch.Tensor):
        """The k-means start / momentum update / reseed of one training step, decided on the device: every
        candidate is computed and torch.where picks, so no branch reads a device value. Returns the cluster sizes
        long[K] (zeros before the start)."""
        started = self.started.clone()
        moved, counts = self.momentum_step(F.normalize(image_to_sentence.detach(), dim=-1))
        can_start = z2_all.shape[0] >= self.num_clusters                    # a shape: known on the host
        start_now = ~started & (mean_cosine <= self.start_cosine) if can_start else torch.zeros_like(started)
        reseed_now = started & (counts.max() > self.reseed_share * counts.sum()) if self.reseed_share > 0 \
            else torch.zeros_like(started)
        if can_start or self.reseed_share > 0:
            seeded = self.seeded_centroids(z2_all.detach())
            fresh = torch.where(started, torch.where(reseed_now, seeded, moved),
                                torch.where(start_now, seeded, self.centroids))
        else:
            fresh = torch.where(started, moved, self.centroids)
        self.centroids.copy_(fresh)
        self.started_step.copy_(torch.where(start_now, self.step, self.started_step))
        self.started.logical_or_(start_now)
        self.reseeds.add_(reseed_now.long())
        return torch.where(started, counts, torch.zeros_like(counts))

    def forward(self, sentences: torch.Tensor, image_to_sentence: torch.Tensor):
        z1, z2_all, logits, labels = sentence_logits(sentences, image_to_sentence, self.temperature)
        n, device = z1.shape[0], z1.device
        # Mean of the whole (global) cosine matrix: decides when k-means starts, identically on every rank.
        cosine_sum = all_reduce_sum(torch.stack([logits.detach().float().sum() * self.temperature,
                                                 torch.full((), float(logits.numel()), device=device)]))
        mean_cosine = cosine_sum[0] / cosine_sum[1]
        # Hard negatives from the centroids as they were before this step's update (a device flag, not a branch)
        use_hard_negatives = self.started.clone()
        cluster_sizes = torch.zeros(self.num_clusters, dtype=torch.long, device=device)
        if self.training:
            cluster_sizes = self._train_update(z2_all, image_to_sentence, mean_cosine)
            self.step += 1
            self._host_step = self.host_step + 1

        stats = {"kmeans_started": self.started.float(), "kmeans_started_step": self.started_step.clone(),
                 "kmeans_reseeds": self.reseeds.clone(),
                 "mean_cosine": mean_cosine, "cluster_sizes": cluster_sizes}
        plain = global_mean(F.cross_entropy(logits, labels, reduction="sum"), n)

        # Both losses are computed and the flag picks one; before the start the centroids are zero (finite).
        assignment = kmeans_assign(z1.detach().to(self.centroids.dtype), self.centroids)[0]   # [n,2]
        # Centroids are not unit vectors (the 'sum' update grows them): compare by cosine, as the assignment does.
        hard_negative = F.normalize(self.centroids[assignment[:, 1]], dim=-1)                # [n,D], no gradient
        hard_negative_cosine = (z1 * hard_negative.to(z1.dtype)).sum(dim=-1)                 # [n]
        loss = hard_negative_cross_entropy(logits, hard_negative_cosine / self.temperature, labels,
                                           self.hard_negative_weight)

        # False negatives: pairs whose z1 share the nearest centroid, the anchor's own pair excluded.
        cluster = assignment[:, 0]
        cluster_all, _ = gather_rows(cluster, with_grad=False, kind="sentences")              # [N]
        own = torch.arange(logits.shape[1], device=device)[None, :] == labels[:, None]        # [n,N]
        same_cluster = (cluster[:, None] == cluster_all[None, :]) & ~own                     # [n,N]
        delta = logits - logits.gather(1, labels[:, None])                                   # cos(i,j) - cos(i,i)
        flagged = same_cluster.to(logits.dtype)
        margin = (margin_loss(delta, self.alpha, self.beta) * flagged).sum()
        pairs = flagged.sum()
        # Mean over every entry of the global [N,N] matrix, flagged or not, as the original does (its weight 1e-4 is
        # set for that scale); the original's unflagged entries add a constant 0.2 each, no gradient, left out here.
        false_negative = self.false_negative_weight * global_mean(margin, logits.numel())
        zero = torch.zeros((), device=device)
        stats.update(hard_negative_sim=torch.where(use_hard_negatives, hard_negative_cosine.detach().mean(), zero),
                     false_negative_pairs=torch.where(use_hard_negatives, all_reduce_sum(pairs.detach()), zero))
        return {"local_text": torch.where(use_hard_negatives, global_mean(loss, n), plain),
                "false_negative": torch.where(use_hard_negatives, false_negative, zero)}, stats
