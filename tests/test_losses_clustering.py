"""CGNS k-means state: when it starts, how it initialises and moves, that eval freezes it, that it is checkpointed."""
import math

import pytest
import torch
import torch.nn.functional as F

from cgns.losses.clustering import (ClusterNegativeSampler, greedy_chain, hard_negative_cross_entropy, margin_loss,
                                    weighted_logits)


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


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_momentum_update_sum_or_mean_and_untouched_centroids_keep_value(mode):
    sampler = ClusterNegativeSampler(2, num_clusters=3, lr=0.5, mode=mode)
    sampler.centroids.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    points = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0]])   # two near centroid 0, one near 1, none near 2
    counts = sampler.update(F.normalize(points, dim=-1))
    assert counts.tolist() == [2, 1, 0]
    unit = F.normalize(points, dim=-1)
    target0 = unit[:2].sum(0) if mode == "sum" else unit[:2].mean(0)
    torch.testing.assert_close(sampler.centroids[0], 0.5 * target0 + 0.5 * torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(sampler.centroids[1], 0.5 * unit[2] + 0.5 * torch.tensor([0.0, 1.0]))
    assert torch.equal(sampler.centroids[2], torch.tensor([-1.0, 0.0]))


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


def test_add_weighting_changes_only_the_hard_negative_columns():
    z1, z2 = pairs(aligned=False)
    by_mode = {}
    for mode in ("multiply", "add"):
        sampler = ClusterNegativeSampler(8, num_clusters=4, weighting=mode)
        sampler.centroids.copy_(F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(3)), dim=-1))
        sampler.started.fill_(True)
        by_mode[mode] = sampler.eval()(z1, z2)[0]["local_text"]
    # hand computation of the 'add' form: in-batch cosines + (own hard negative cosine + log 3)
    sampler.eval()
    unit1, unit2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    hard = F.normalize(sampler.centroids[torch.topk(unit1 @ F.normalize(sampler.centroids, dim=-1).T, 2).indices[:, 1]],
                       dim=-1)
    logits = torch.cat([unit1 @ unit2.T, ((unit1 * hard).sum(1) + math.log(3.0))[:, None]], dim=1)
    torch.testing.assert_close(by_mode["add"], F.cross_entropy(logits, torch.arange(16)))
    assert not torch.allclose(by_mode["add"], by_mode["multiply"])


def test_margin_loss_is_zero_inside_the_band_and_linear_outside():
    delta = torch.tensor([-0.6, -0.5, -0.3, -0.2, 0.0])
    torch.testing.assert_close(margin_loss(delta, 0.2, 0.5), torch.tensor([0.1, 0.0, 0.0, 0.0, 0.2]))


@pytest.mark.parametrize("mode", ["multiply", "add"])
def test_hard_negative_cross_entropy_equals_the_extended_matrix(mode):
    """The fused logsumexp form equals cross-entropy over weighted_logits' [n,2N] matrix, value and gradient."""
    generator = torch.Generator().manual_seed(3)
    logits = (torch.rand(6, 9, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_()
    hard = (torch.rand(6, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_()
    labels = torch.tensor([0, 2, 3, 5, 7, 8])
    fused = hard_negative_cross_entropy(logits, hard, labels, 3.0, mode)
    reference = F.cross_entropy(weighted_logits(logits, hard, labels, 3.0, mode), labels, reduction="sum")
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
