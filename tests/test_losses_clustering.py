"""CGNS k-means state: when it starts, how it initialises and moves, that eval freezes it, that it is checkpointed."""
import math

import pytest
import torch
import torch.nn.functional as F

from cgns.losses.clustering import ClusterNegativeSampler, greedy_chain, hard_negative_cross_entropy, margin_loss


def pairs(n=16, dim=8, seed=0, aligned=False):
    generator = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, dim, generator=generator)
    z2 = z1 + 0.01 * torch.randn(n, dim, generator=generator) if aligned else torch.randn(n, dim, generator=generator)
    return z1, z2


def test_starts_only_when_mean_cosine_reaches_threshold_and_enough_points():
    sampler = ClusterNegativeSampler(8, num_clusters=4)
    z1, z2 = pairs()
    same = torch.ones(16, 8) + 0.01 * torch.randn(16, 8)          # every cosine ~1 > 0.4
    sampler(same, same.clone())
    assert not sampler.started and int(sampler.step) == 1
    sampler(z1[:3], z2[:3])                                        # mean cosine ~0 but only 3 points < k = 4
    assert not sampler.started
    losses, stats = sampler(z1, z2)                                # random pairs: mean cosine ~0 <= 0.4
    assert sampler.started and int(sampler.started_step) == 2 and float(stats["kmeans_started"]) == 1.0
    assert float(losses["false_negative"]) == 0.0                  # the start step itself uses no hard negatives
    _, stats = sampler(z1, z2)
    assert float(stats["hard_negative_sim"]) != 0.0 and int(stats["cluster_sizes"].sum()) == 16


def test_greedy_chain_picks_the_least_similar_unpicked_point():
    # points on a circle at these angles (degrees); from 0 the least similar is 180, then from 180 it is 10 (0 taken)
    angles = torch.tensor([0.0, 10.0, 95.0, 180.0, 200.0])
    points = torch.stack([torch.cos(angles * math.pi / 180), torch.sin(angles * math.pi / 180)], dim=1)
    assert greedy_chain(points, 4, first=0).tolist() == [0, 3, 1, 4]
    sampler = ClusterNegativeSampler(2, num_clusters=4)
    sampler.initialise(points)
    assert sampler.started
    chosen = [int((points @ c).argmax()) for c in sampler.centroids]
    assert len(set(chosen)) == 4                                  # k distinct points of the batch


def test_momentum_update_from_member_sums_and_untouched_centroids_keep_value():
    sampler = ClusterNegativeSampler(2, num_clusters=3, lr=0.5)
    sampler.centroids.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    points = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0]])   # two near centroid 0, one near 1, none near 2
    counts = sampler.update(F.normalize(points, dim=-1))
    assert counts.tolist() == [2, 1, 0]
    unit = F.normalize(points, dim=-1)
    target0 = unit[:2].sum(0)
    torch.testing.assert_close(sampler.centroids[0], 0.5 * target0 + 0.5 * torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(sampler.centroids[1], 0.5 * unit[2] + 0.5 * torch.tensor([0.0, 1.0]))
    assert torch.equal(sampler.centroids[2], torch.tensor([-1.0, 0.0]))


def test_update_moves_by_the_sampler_rate_not_one_minus_it():
    """lr 0.1 (at 0.5, lr and 1 - lr are the same number): new = 0.1 * S + 0.9 * old with S the member sum, written
    out by hand. Centroid 0 gets (1, 0) and (0.8, 0.6), so S = (1.8, 0.6); centroid 1 gets (0, 1); 2 gets none."""
    sampler = ClusterNegativeSampler(2, num_clusters=3, lr=0.1)
    sampler.centroids.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    counts = sampler.update(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]))
    assert counts.tolist() == [2, 1, 0]
    torch.testing.assert_close(sampler.centroids, torch.tensor([[0.1 * 1.8 + 0.9, 0.1 * 0.6], [0.0, 1.0],
                                                                [-1.0, 0.0]]))


def test_update_uses_the_all_reduced_sums_and_counts(monkeypatch):
    """One process standing in for two identical ranks: the all-reduce is patched to double what it gets, so the
    update must move by the doubled sums and return the doubled counts (the global cluster sizes)."""
    import cgns.losses.clustering as clustering

    reduced = []

    def two_identical_ranks(tensor):
        reduced.append(tuple(tensor.shape))
        return tensor * 2

    monkeypatch.setattr(clustering, "all_reduce_sum", two_identical_ranks)
    sampler = ClusterNegativeSampler(2, num_clusters=3, lr=0.1)
    sampler.centroids.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    counts = sampler.update(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]))
    assert counts.tolist() == [4, 2, 0] and (3, 2) in reduced and (3,) in reduced
    # S = 2 x the local sums: centroid 0 -> 0.1 * (3.6, 1.2) + 0.9 * (1, 0), centroid 1 -> 0.1 * (0, 2) + 0.9 * (0, 1)
    torch.testing.assert_close(sampler.centroids, torch.tensor([[0.1 * 3.6 + 0.9, 0.1 * 1.2], [0.0, 0.1 * 2.0 + 0.9],
                                                                [-1.0, 0.0]]))


def test_eval_freezes_the_state_and_state_dict_round_trips():
    torch.manual_seed(0)
    sampler = ClusterNegativeSampler(8, num_clusters=4)
    z1, z2 = pairs()
    sampler(z1, z2)                                                # starts
    sampler(z1, z2)                                                # moves
    state = {k: v.clone() for k, v in sampler.state_dict().items()}
    assert set(state) == {"centroids", "started", "started_step", "step", "reseeds"}
    sampler.eval()
    losses, _ = sampler(*pairs(seed=1))
    for key, value in sampler.state_dict().items():                # nothing moved in eval, not even the step
        assert torch.equal(value, state[key]), key
    restored = ClusterNegativeSampler(8, num_clusters=4).eval()
    restored.load_state_dict(state)
    again, _ = restored(*pairs(seed=1))
    assert torch.equal(again["local_text"], losses["local_text"])
    assert torch.equal(again["false_negative"], losses["false_negative"])


def test_margin_loss_is_zero_inside_the_band_and_linear_outside():
    delta = torch.tensor([-0.6, -0.5, -0.3, -0.2, 0.0])
    torch.testing.assert_close(margin_loss(delta, 0.2, 0.5), torch.tensor([0.1, 0.0, 0.0, 0.0, 0.2]))


def original_extended_logits(logits, hard_negative_cosine, hard_negative_weight):
    """The original's explicit [n,2N] matrix, built entry by entry: the in-batch logits with weight 1, then N
    appended columns holding cos(z1_i, hard negative of i) in i's own column (weight hard_negative_weight) and
    weight 0 elsewhere."""
    n, columns = logits.shape
    rows = []
    for i in range(n):
        weights = [1.0] * columns + [hard_negative_weight if j == i else 0.0 for j in range(columns)]
        values = list(logits[i]) + [hard_negative_cosine[i] if j == i else logits.new_zeros(()) for j in range(columns)]
        rows.append(torch.stack([w * v for w, v in zip(weights, values)]))
    return torch.stack(rows)


def test_hard_negative_cross_entropy_equals_the_extended_matrix():
    """The fused logsumexp form equals cross-entropy over the original's [n,2N] matrix, value and gradient."""
    generator = torch.Generator().manual_seed(3)
    logits = (torch.rand(6, 6, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_()
    hard = (torch.rand(6, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_()
    labels = torch.arange(6)
    fused = hard_negative_cross_entropy(logits, hard, labels, 3.0)
    reference = F.cross_entropy(original_extended_logits(logits, hard, 3.0), labels, reduction="sum")
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(torch.autograd.grad(fused, (logits, hard)),
                               torch.autograd.grad(reference, (logits, hard)))


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_reseed_spreads_a_collapsed_clustering_only_when_asked(share):
    """Centroids started on spread points, then every sentence moves into one narrow cone: without reseeding one
    centroid takes them all; with reseed_share 0.5 the greedy chain restarts on the cone and splits it."""
    sampler = ClusterNegativeSampler(8, num_clusters=4, reseed_share=share)
    z1, z2 = pairs(n=32)
    sampler(z1, z2)                                                 # starts on spread points (mean cosine ~0)
    generator = torch.Generator().manual_seed(1)
    cone = torch.ones(32, 8) + 0.2 * torch.randn(32, 8, generator=generator)
    _, stats = sampler(cone, cone + 0.01 * torch.randn(32, 8, generator=generator))
    assert int(stats["cluster_sizes"].max()) == 32                  # the update step sees the collapse
    _, stats = sampler(cone, cone.clone())
    largest = int(stats["cluster_sizes"].max())
    if share == 0:
        assert largest == 32 and int(sampler.reseeds) == 0
    else:
        assert int(sampler.reseeds) >= 1 and largest < 32
