"""Global InfoNCE by hand, and the cross-rank losses: 2 gloo processes equal 1 process on the same global batch."""
import math
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cgns.losses.clustering import ClusterNegativeSampler
from cgns.distributed import local_losses
from cgns.losses.global_contrastive import global_contrastive_loss, initial_log_logit_scale
from cgns.losses.reconstruction import reconstruction_loss


def test_global_loss_matches_hand_formula_and_trains_the_temperature():
    torch.manual_seed(0)
    image, report = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    log_scale = torch.tensor(initial_log_logit_scale(0.1), requires_grad=True)
    assert math.isclose(float(log_scale.detach().exp()), 10.0, rel_tol=1e-6)
    loss = global_contrastive_loss(image, report, log_scale)["global"]
    expected = 0.0
    for i in range(6):  # row i: -log softmax of its own pair, averaged over both directions
        expected -= 0.5 * (torch.log_softmax(10 * image[i] @ report.T, 0)[i]
                           + torch.log_softmax(10 * report[i] @ image.T, 0)[i])
    torch.testing.assert_close(loss, expected / 6)
    loss.backward()
    assert log_scale.grad is not None and float(log_scale.grad) != 0.0


def test_reconstruction_loss_is_weighted_l1_and_refuses_other_sizes():
    target = torch.zeros(2, 3, 4, 4)
    torch.testing.assert_close(reconstruction_loss(torch.full((2, 3, 4, 4), 0.5), target)["reconstruction"],
                               torch.tensor(5.0))
    try:
        reconstruction_loss(torch.zeros(2, 3, 2, 2), target)
    except ValueError as err:
        assert "input resolution" in str(err)
    else:
        raise AssertionError("a reconstruction of another size must be refused")


def _inputs(sentences_per_rank=(9, 14), batch_per_rank=4, dim=8):
    generator = torch.Generator().manual_seed(0)
    total = sum(sentences_per_rank)
    return {"image": torch.randn(2 * batch_per_rank, dim, generator=generator),
            "report": torch.randn(2 * batch_per_rank, dim, generator=generator),
            "z1": torch.randn(total, dim, generator=generator), "z2": torch.randn(total, dim, generator=generator)}


def _run(parts):
    """Two steps of the global + CGNS losses on `parts`; returns losses, input gradients, centroids."""
    sampler = ClusterNegativeSampler(8, num_clusters=4, lr=0.1)
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    leaves = {k: v.clone().requires_grad_(True) for k, v in parts.items()}
    image, report = F.normalize(leaves["image"], dim=-1), F.normalize(leaves["report"], dim=-1)
    sampler(leaves["z1"].detach(), leaves["z2"].detach())                     # step 1: starts k-means
    text, _ = sampler(leaves["z1"], leaves["z2"])                             # step 2: update + hard negatives
    losses = dict(global_contrastive_loss(image, report, log_scale), **text)
    sum(losses.values()).backward()
    return ({k: float(v.detach()) for k, v in losses.items()}, {k: v.grad for k, v in leaves.items()},
            sampler.centroids.clone(), float(log_scale.grad))


def _rank_parts(rank):
    full = _inputs()
    cut = 9  # rank 0 holds 9 sentences, rank 1 holds 14: ranks may differ
    return {"image": full["image"][4 * rank:4 * rank + 4], "report": full["report"][4 * rank:4 * rank + 4],
            "z1": full["z1"][:cut] if rank == 0 else full["z1"][cut:],
            "z2": full["z2"][:cut] if rank == 0 else full["z2"][cut:]}


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.save(_run(_rank_parts(rank)), os.path.join(out_dir, f"rank{rank}.pt"))
    if rank == 1:  # one rank alone, no collectives: as if single-process on its own rows
        with local_losses():
            torch.save(_run(_rank_parts(rank))[0], os.path.join(out_dir, "local1.pt"))
    dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    # fork: the children reuse the imported modules instead of starting two fresh interpreters (seconds on 2 cores)
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    losses, grads, centroids, scale_grad = _run(_inputs())
    for key, value in losses.items():  # each rank holds its share; their mean is the global value
        assert math.isclose((ranks[0][0][key] + ranks[1][0][key]) / 2, value, rel_tol=1e-5, abs_tol=1e-7), key
    # DDP averages gradients over ranks: rank gradients / 2 are the one-process gradients of that rank's rows
    torch.testing.assert_close(torch.cat([ranks[0][1]["z1"], ranks[1][1]["z1"]]) / 2, grads["z1"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([ranks[0][1]["z2"], ranks[1][1]["z2"]]) / 2, grads["z2"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([ranks[0][1]["image"], ranks[1][1]["image"]]) / 2, grads["image"],
                               atol=1e-6, rtol=1e-5)
    assert torch.equal(ranks[0][2], ranks[1][2])                          # identical centroids on both ranks
    torch.testing.assert_close(ranks[0][2], centroids)
    assert math.isclose((ranks[0][3] + ranks[1][3]) / 2, scale_grad, rel_tol=1e-5)
    alone, expected = torch.load(tmp_path / "local1.pt", weights_only=True), _run(_rank_parts(1))[0]
    assert all(math.isclose(alone[k], expected[k], rel_tol=1e-6, abs_tol=1e-8) for k in expected)
