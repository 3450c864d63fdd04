"""PeerModel in the pretraining loop: 2 gloo ranks train exactly like one process on the same global batch, and
ConVIRT's step reads nothing back from the device."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from cgns.data.datasets import collate_pretrain
from cgns.distributed import DistInfo, cleanup_distributed
from cgns.engine.methods import objective_settings
from cgns.engine.pretrain import LoopConfig, Pretrainer
from cgns.models.peer import PeerModel
from test_engine_distributed import _rendezvous_store, join_as_rank, train_sharded
from test_models_cgns import VOCAB, tiny_batch, tiny_config

PEERS = ("convirt", "gloria", "mgca")
SMALL = {"mgca": {"hidden_dim": 32, "num_prototypes": 16}}
STEPS = 2
SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)


class WordPieces:
    """A tokenizer as word_piece_table reads one: ids 0-4 special, every third id from 5 on a '##' piece."""

    all_special_ids = [0, 1, 2, 3, 4]

    def get_vocab(self):
        return {(f"##p{i}" if i >= 5 and i % 3 == 0 else f"w{i}"): i for i in range(VOCAB)}


def peer_model(method, objective=None, **config):
    settings = objective_settings(method, "demo", embed_dim=16, **SMALL.get(method, {}), **(objective or {}))
    model = PeerModel(tiny_config(method=method, objective=settings, embed_dim=16, **config), WordPieces())
    for module in model.modules():                     # no dropout: the ranks' RNG streams differ
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _peer_run(method, info, out_dir, shards: int, shard: int):
    """STEPS steps on fixed global batches of 8 (this shard's pairs through the pretraining collate), epoch 1 (MGCA's
    prototypes train); returns each step's gradients and the final parameters and buffers."""
    torch.manual_seed(0)
    # ConVIRT's sentence draw off, as dropout is: each rank draws from its own generator
    model = peer_model(method, {"sample_sentence": False} if method == "convirt" else None)
    trainer, grads = train_sharded(model, info, out_dir, shards, shard, epoch=1)
    return {"grads": grads, "state": {n: t.detach().clone() for n, t in trainer.raw.state_dict().items()}}


def _worker(rank, port, out_dir):
    info = join_as_rank(rank, port)
    try:
        result = {m: _peer_run(m, info, os.path.join(out_dir, m), shards=2, shard=rank) for m in PEERS}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup_distributed()


def test_two_gloo_ranks_train_every_peer_like_one_process(tmp_path):
    store = _rendezvous_store()
    mp.spawn(_worker, args=(store.port, str(tmp_path)), nprocs=2, join=True)
    del store
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for method in PEERS:
        one = _peer_run(method, SINGLE, str(tmp_path / f"{method}_one"), shards=1, shard=0)
        if method == "mgca":                                          # epoch 1: the prototypes get a gradient
            assert "objective.prototypes" in one["grads"][0]
        for step in range(STEPS):
            assert set(one["grads"][step]) == set(ranks[0][method]["grads"][step])
            for name, grad in one["grads"][step].items():
                for rank in ranks:
                    torch.testing.assert_close(rank[method]["grads"][step][name], grad, atol=2e-5, rtol=1e-4,
                                               msg=f"{method}, step {step} gradient of {name}")
        for name, value in one["state"].items():
            assert torch.equal(ranks[0][method]["state"][name], ranks[1][method]["state"][name]), (method, name)
            if "running" in name:                                     # MGCA's batch-norm statistics: global batch
                torch.testing.assert_close(ranks[0][method]["state"][name], value, atol=1e-5, rtol=1e-4)


def test_mgca_prototypes_get_no_gradient_in_epoch_zero():
    model = peer_model("mgca")
    batch = collate_pretrain([{k: v[i] for k, v in tiny_batch(batch=4).items()} for i in range(4)])
    for epoch, frozen in ((0, True), (1, False)):
        model.zero_grad(set_to_none=True)
        losses, stats = model(batch, stage=1, epoch=epoch)
        sum(losses.values()).backward()
        assert stats == {} and set(losses) == {"global", "local", "prototype"}
        assert (model.objective.prototypes.grad is None) == frozen
        assert model.image_encoder.backbone.blocks[-1].attn.qkv.weight.grad is not None


def test_convirt_trains_on_one_drawn_sentence_per_report():
    """In training, ConVIRT's loss is its objective on the sentences sample_sentence draws from the global generator
    (not on the whole reports); in eval mode the draw is fixed (a generator seeded 0), so two calls agree."""
    from cgns.losses.convirt import sample_sentence
    from test_masking import TinyPairs

    torch.manual_seed(0)
    model = peer_model("convirt")
    batch = collate_pretrain([TinyPairs(6)[i] for i in range(6)])
    assert int(batch["sentence_index"].amax(dim=1).min()) >= 2          # every report offers a choice

    def loss_on(ids, mask):
        inputs = model.image_inputs(batch["image"])
        inputs.update(model.text_inputs(ids, mask))
        return model.objective(inputs)["global"]

    with torch.no_grad():
        torch.manual_seed(7)
        trained = model(batch)[0]["global"]
        torch.manual_seed(7)
        view = sample_sentence(batch["input_ids"], batch["attention_mask"], batch["sentence_index"],
                               batch["num_sentences"], model.config.pad_token_id)
        torch.testing.assert_close(trained, loss_on(*view), rtol=0, atol=0)
        assert not torch.equal(view[1], batch["attention_mask"])
        assert abs(float(trained - loss_on(batch["input_ids"], batch["attention_mask"]))) > 1e-4
        model.eval()
        assert torch.equal(model(batch)[0]["global"], model(batch)[0]["global"])


@pytest.mark.parametrize("method", PEERS)
def test_peer_steps_without_host_reads(tmp_path, monkeypatch, method):
    """test_step_sync's counter over each peer's steps, with train_pretrain.py's collate (the word layout on the
    CPU for GLoRIA and MGCA); and the same losses as the model computes without that layout."""
    import train_pretrain
    from test_step_sync import SyncCounter, counted_run
    from test_masking import TinyPairs

    torch.manual_seed(0)
    model = peer_model(method)
    collate = train_pretrain._collate(model)
    batch = collate([TinyPairs(4)[i] for i in range(4)])
    assert ("word_rows" in batch) == (method != "convirt")
    plain = collate_pretrain([TinyPairs(4)[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        for name, value in model(plain, epoch=1)[0].items():
            torch.testing.assert_close(model(batch, epoch=1)[0][name], value, rtol=1e-6, atol=1e-6, msg=name)
    model.train()
    cfg = LoopConfig(batch_size=4, lr=1e-3, stage1_epochs=1, stage2_epochs=0, max_steps=4, log_every=1000,
                     save_every=0, progress=False, amp="none", clip_grad=1.0, validate=False)
    trainer = Pretrainer(model, train_set=TinyPairs(16), val_set=None, collate_fn=collate, cfg=cfg,
                         info=SINGLE, output_dir=tmp_path, model_config=model.config.to_dict())
    counter = SyncCounter(monkeypatch, trainer)
    counted_run(trainer, counter)
    assert trainer.progress.global_step == 4
    assert counter.seen == []


@pytest.mark.parametrize("method", PEERS)
def test_encoders_are_built_like_cgns_models(method):
    """Same seed, same encoder weights: the peers and CM-CGNS start from the same image and text encoders."""
    from cgns.models.cgns import CGNSModel

    torch.manual_seed(0)
    cgns = CGNSModel(tiny_config(embed_dim=16))
    torch.manual_seed(0)
    peer = peer_model(method)
    for tower in ("image_encoder", "text_encoder"):
        theirs = getattr(cgns, tower).state_dict()
        for name, value in getattr(peer, tower).state_dict().items():
            assert torch.equal(value, theirs[name]), (tower, name)
