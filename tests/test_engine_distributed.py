"""Two gloo processes on CPU must train exactly like one process on the same global batch."""
import os
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp

from cgns.distributed import DistInfo, ResumableSampler, cleanup_distributed, init_distributed
from cgns.engine.pretrain import LoopConfig, Pretrainer
from test_pretrain_standins import StandInModel, StandInPairs

MICRO = 4      # per-rank micro-batch
ACCUM = 2      # micro-batches per optimiser step (exercises no_sync)
STEPS = 2


def _global_micro_batches(seed=0):
    """STEPS * ACCUM global micro-batches of 2 * MICRO pairs (fixed: no augmentation noise)."""
    data = StandInPairs(n=64, augment=False)
    collate = torch.utils.data.default_collate
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    size = 2 * MICRO
    return [collate([data[i] for i in order[k * size:(k + 1) * size]]) for k in range(STEPS * ACCUM)]


def _run(info: DistInfo, out_dir, shards: int, shard: int):
    """Train STEPS steps; return the gradients each step saw, the logged losses, centroids and parameters."""
    torch.manual_seed(0)
    model = StandInModel(dropout=0.0)
    cfg = LoopConfig(batch_size=MICRO * 2 // shards, accum_steps=ACCUM, lr=1e-6, log_every=1, validate=False,
                     progress=False, amp="none")
    trainer = Pretrainer(model, train_set=StandInPairs(n=64), val_set=None, collate_fn=None, cfg=cfg, info=info,
                         output_dir=out_dir, model_config=model.config)
    grads, real_step = [], trainer.optimizer.step

    def capture(*args, **kwargs):
        grads.append({n: p.grad.clone() for n, p in trainer.raw.named_parameters() if p.grad is not None})
        return real_step(*args, **kwargs)

    trainer.optimizer.step = capture
    batches = _global_micro_batches()
    size = 2 * MICRO // shards
    for step in range(STEPS):
        micro = [{k: v[shard * size:(shard + 1) * size] for k, v in batches[step * ACCUM + i].items()}
                 for i in range(ACCUM)]
        stepped = trainer._optimizer_step(micro)
        trainer.progress.global_step += 1
        trainer._after_step(stepped, cfg.lr)
    trainer.logger.close()
    return {"grads": grads, "centroids": trainer.raw.centroids.clone(),
            "params": {n: p.detach().clone() for n, p in trainer.raw.named_parameters()}}


def _reference():
    """The same steps written out by hand in one process on the full global micro-batches."""
    torch.manual_seed(0)
    model = StandInModel(dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6, weight_decay=LoopConfig.weight_decay)
    batches = _global_micro_batches()
    grads, losses = [], []
    for step in range(STEPS):
        optimizer.zero_grad()
        logged = {}
        for i in range(ACCUM):
            terms, _ = model(batches[step * ACCUM + i], stage=1)
            total = sum(terms.values())
            (total / ACCUM).backward()
            for name, value in {**terms, "total": total}.items():
                logged[f"loss/{name}"] = logged.get(f"loss/{name}", 0.0) + value.item() / ACCUM
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        losses.append(logged)
        optimizer.step()
    return {"grads": grads, "centroids": model.centroids.clone(), "losses": losses}


def _nan_on_one_rank(info, out_dir):
    """Rank 1 alone gets a NaN loss in step 2: every rank must skip that update (no hang, no divergence)."""
    from test_pretrain_loop import SometimesNaN

    torch.manual_seed(0)
    model = SometimesNaN({3} if info.rank == 1 else set())  # forward call 3 = first micro-batch of step 2
    cfg = LoopConfig(batch_size=4, accum_steps=2, lr=1e-3, stage1_epochs=1, stage2_epochs=0, max_steps=2,
                     validate=False, progress=False, amp="none")
    trainer = Pretrainer(model, train_set=StandInPairs(n=40), val_set=None, collate_fn=None, cfg=cfg, info=info,
                         output_dir=out_dir, model_config=model.config)
    trainer.cfg.max_steps = 1
    trainer.fit()
    after_one = {n: p.detach().clone() for n, p in trainer.raw.named_parameters()}
    trainer.cfg.max_steps = 2
    trainer.fit()
    unchanged = all(torch.equal(p, after_one[n]) for n, p in trainer.raw.named_parameters())
    return {"unchanged": unchanged, "bad_steps": trainer.progress.bad_steps,
            "params": {n: p.detach().clone() for n, p in trainer.raw.named_parameters()}}


def train_sharded(model, info, out_dir, shards: int, shard: int, *, stage: int = 1, epoch: int = 0,
                  noise: bool = False, collate_pretrain=None):
    """STEPS loop steps of `model` on fixed global batches of 8 pairs (tiny_batch), this shard's pairs through the
    pretraining collate (train_pretrain.py's for this model unless given; with the same patch noise per pair however
    the batch is split, when noise); returns the trainer and each step's gradients, captured as the optimiser reads
    them."""
    import train_pretrain
    from test_models_cgns import tiny_batch
    collate_pretrain = collate_pretrain or train_pretrain._collate(model)
    cfg = LoopConfig(batch_size=8 // shards, lr=1e-3, log_every=1, validate=False, progress=False, amp="none",
                     clip_grad=1.0)
    trainer = Pretrainer(model, train_set=[None] * 8, val_set=None, collate_fn=collate_pretrain, cfg=cfg, info=info,
                         output_dir=out_dir, model_config=model.config.to_dict())
    trainer.progress.stage, trainer.progress.epoch = stage, epoch
    grads, real_step = [], trainer.optimizer.step

    def capture(*args, **kwargs):
        grads.append({n: p.grad.clone() for n, p in trainer.raw.named_parameters() if p.grad is not None})
        return real_step(*args, **kwargs)

    trainer.optimizer.step = capture
    size = 8 // shards
    for step in range(STEPS):
        pairs = tiny_batch(batch=8, seed=step)
        if noise:
            pairs["patch_noise"] = torch.rand(8, 4, generator=torch.Generator().manual_seed(100 + step))
        items = [{k: v[i] for k, v in pairs.items()} for i in range(shard * size, (shard + 1) * size)]
        stepped = trainer._optimizer_step([collate_pretrain(items)])
        trainer.progress.global_step += 1
        trainer._after_step(stepped, cfg.lr)
    trainer.logger.close()
    return trainer, grads


def _masked_cgns_run(info, out_dir, shards: int, shard: int):
    """The real model with input masking, MAE-style CM-MIR and the grounding term (stage 2, k-means on from the
    first step), 2 steps on fixed global batches of 8 with the same patch noise per pair however the batch is split;
    this shard's pairs go through the pretraining collate. Returns the gradients of each step and the final
    parameters. Every gather of its steps takes the ranks' row counts from the collate's, exchanged over the CPU
    group: none is all-gathered on the device and read back (the ranks hold 11 and 12 sentences)."""
    import cgns.distributed as distributed
    from cgns.models.cgns import CGNSModel
    from test_models_cgns import tiny_config

    torch.manual_seed(0)
    model = CGNSModel(tiny_config(mask_ratio=0.5, mir_masking="input", kmeans_start_cosine=1.0,
                                  grounding_weight=1.0))
    for module in model.modules():                     # no dropout: the ranks' RNG streams differ
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    real_exchange = distributed._exchanged_row_sizes

    def read_back(rows):
        raise AssertionError(f"a gather of {tuple(rows.shape)} read its ranks' row counts back from the device")

    distributed._exchanged_row_sizes = read_back
    try:
        trainer, grads = train_sharded(model, info, out_dir, shards, shard, stage=2, noise=True)
    finally:
        distributed._exchanged_row_sizes = real_exchange
    return {"grads": grads, "params": {n: p.detach().clone() for n, p in trainer.raw.named_parameters()}}


def join_as_rank(rank: int, port: int) -> DistInfo:
    """In a spawned worker: torchrun's own set-up. The launcher hosts the rendezvous store and every rank joins it
    as a client (TORCHELASTIC_USE_AGENT_STORE), so init_distributed's env:// path runs exactly as under torchrun."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), TORCHELASTIC_USE_AGENT_STORE="True")
    torch.set_num_threads(1)
    return init_distributed("cpu")


def _worker(rank, port, out_dir):
    info = join_as_rank(rank, port)
    try:
        result = _run(info, os.path.join(out_dir, "ddp"), shards=2, shard=rank)
        result["nan"] = _nan_on_one_rank(info, os.path.join(out_dir, "nan"))
        result["masked"] = _masked_cgns_run(info, os.path.join(out_dir, "masked"), shards=2, shard=rank)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup_distributed()


def _rendezvous_store():
    """A listening TCPStore on a port the kernel picks. Picking a free port, closing it and letting rank 0 bind it
    later raced with other processes (a flake in a full-suite run); this socket is never let go."""
    return torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                                      timeout=timedelta(seconds=120))


def _log_losses(path):
    import json
    with open(path) as f:
        return [json.loads(line) for line in f if '"train"' in line]


def test_two_gloo_processes_match_one_process(tmp_path):
    store = _rendezvous_store()
    mp.spawn(_worker, args=(store.port, str(tmp_path)), nprocs=2, join=True)
    del store
    single = _reference()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    for step in range(STEPS):
        assert set(single["grads"][step]) == set(ranks[0]["grads"][step])
        assert "decoder.weight" not in single["grads"][step]  # stage 1: the decoder gets no gradient
        for name, grad in single["grads"][step].items():
            for rank in ranks:
                torch.testing.assert_close(rank["grads"][step][name], grad, atol=1e-5, rtol=1e-5,
                                           msg=f"step {step} gradient of {name}")
    # centroids: identical on both ranks (bit for bit) and equal to the one-process run
    assert torch.equal(ranks[0]["centroids"], ranks[1]["centroids"])
    torch.testing.assert_close(ranks[0]["centroids"], single["centroids"], atol=1e-5, rtol=1e-5)
    for name, param in ranks[0]["params"].items():
        assert torch.equal(param, ranks[1]["params"][name]), name
    # the logged losses (all-reduced means over ranks and micro-batches) equal the one-process losses
    ddp_log, one_log = _log_losses(tmp_path / "ddp" / "log.jsonl"), single["losses"]
    assert len(ddp_log) == len(one_log) == STEPS
    for a, b in zip(ddp_log, one_log):
        for key in ("loss/global", "loss/cluster", "loss/total"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    # a NaN on one rank only: both ranks skipped the same update and still agree
    assert ranks[0]["nan"]["unchanged"] and ranks[1]["nan"]["unchanged"]
    assert ranks[0]["nan"]["bad_steps"] == ranks[1]["nan"]["bad_steps"] == 1
    for name, param in ranks[0]["nan"]["params"].items():
        assert torch.equal(param, ranks[1]["nan"]["params"][name]), name
    assert one_log[0]["loss/global"] != pytest.approx(one_log[1]["loss/global"], abs=1e-4)  # not a constant


    # the real model with input masking and MAE-style CM-MIR: two ranks = one process on the same global batch
    one = _masked_cgns_run(DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True),
                           str(tmp_path / "masked_one"), shards=1, shard=0)
    for step in range(STEPS):
        assert set(one["grads"][step]) == set(ranks[0]["masked"]["grads"][step])
        assert "decoder.mask_token" in one["grads"][step]
        for name, grad in one["grads"][step].items():
            for rank in ranks:
                torch.testing.assert_close(rank["masked"]["grads"][step][name], grad, atol=2e-5, rtol=1e-4,
                                           msg=f"masked run, step {step} gradient of {name}")
    # (step 2's gradients already test step 1's update; Adam's normalisation would blow float noise in near-zero
    # gradients up to lr-sized parameter differences, so the parameters are compared between the ranks only)
    for name, param in one["params"].items():
        assert torch.equal(ranks[0]["masked"]["params"][name], ranks[1]["masked"]["params"][name]), name


def test_resumable_sampler_splits_and_resumes():
    shares = [ResumableSampler(10, rank=r, world_size=3, seed=5).indices() for r in range(3)]
    assert all(len(s) == 4 for s in shares)  # padded to equal length
    assert set(sum(shares, [])) == set(range(10))
    sampler = ResumableSampler(10, rank=1, world_size=3, seed=5)
    sampler.set_epoch(0, start=2)
    assert list(sampler) == shares[1][2:] and len(sampler) == 2
    sampler.set_epoch(1)
    assert list(sampler) != shares[1]  # a new order each epoch
    again = ResumableSampler(10, rank=1, world_size=3, seed=5)
    again.set_epoch(1)
    assert list(again) == list(sampler)  # ... that depends only on (seed, epoch)
