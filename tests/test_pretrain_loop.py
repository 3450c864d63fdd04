"""The pretraining loop on stand-ins: exact resume after a kill, NaN handling, refusal, the stage switch."""
import json

import pytest
import torch

from cgns.engine import checkpoint as ckpt
from cgns.distributed import DistInfo
from cgns.engine.pretrain import LoopConfig, NonFiniteLossError, Pretrainer
from test_pretrain_standins import StandInModel, StandInPairs

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)


def make_trainer(out_dir, model=None, **overrides):
    torch.manual_seed(0)  # model init
    model = model or StandInModel()
    torch.manual_seed(1)  # data / dropout randomness
    settings = dict(batch_size=4, accum_steps=2, lr=3e-3, stage1_epochs=2, stage2_epochs=1, warmup_epochs=0.5,
                    log_every=2, save_every=3, progress=False, amp="none", validate=False, clip_grad=1.0)
    settings.update(overrides)
    cfg = LoopConfig(**settings)
    return Pretrainer(model, train_set=StandInPairs(n=40), val_set=StandInPairs(n=12, seed=3, augment=False),
                      collate_fn=None, cfg=cfg, info=SINGLE, output_dir=out_dir, model_config=model.config)


def resume_if_any(trainer, out_dir):
    path = ckpt.find_resume(out_dir)
    if path is not None:
        trainer.resume(path)
    return trainer


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def test_killed_and_resumed_run_is_bit_exact(tmp_path, monkeypatch):
    # 40 pairs / batch 4 = 10 micro-batches = 5 steps per epoch; stage 1: 2 epochs, stage 2: 1 epoch -> 15 steps
    straight = make_trainer(tmp_path / "straight")
    straight.fit()
    assert straight.progress.global_step == 15 and straight.progress.stage == 3

    killed = make_trainer(tmp_path / "killed")
    real_step = Pretrainer._optimizer_step

    def dies_at_step_8(self, micro_batches):
        if self.progress.global_step == 7:  # data and RNG of step 8 already drawn: a kill mid-step
            raise KeyboardInterrupt("killed")
        return real_step(self, micro_batches)

    monkeypatch.setattr(Pretrainer, "_optimizer_step", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    monkeypatch.setattr(Pretrainer, "_optimizer_step", real_step)
    assert ckpt.load_checkpoint(tmp_path / "killed" / "checkpoints" / "latest.pt")["step"] == 6  # save_every=3

    resumed = resume_if_any(make_trainer(tmp_path / "killed"), tmp_path / "killed")
    assert resumed.progress.global_step == 6 and resumed.progress.batch_in_epoch == 2  # mid-epoch 2
    resumed.fit()
    assert_same_state(straight.raw.state_dict(), resumed.raw.state_dict())
    a, b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for index in a:
        for name in a[index]:
            assert torch.equal(a[index][name], b[index][name]), f"optimizer state {index}.{name}"
    final = ckpt.load_checkpoint(tmp_path / "killed" / "checkpoints" / "final.pt")
    assert final["stage"] == 2 and final["step"] == 15


def test_resume_without_rng_restore_would_differ(tmp_path, monkeypatch):
    """Guard that the exact-resume test can fail: dropout and augmentation really depend on the RNG states."""
    straight = make_trainer(tmp_path / "a", stage2_epochs=0)
    straight.fit()
    first = make_trainer(tmp_path / "b", stage2_epochs=0, max_steps=4)
    first.fit()
    monkeypatch.setattr("cgns.engine.pretrain.set_rng_state", lambda state: None)
    second = resume_if_any(make_trainer(tmp_path / "b", stage2_epochs=0), tmp_path / "b")
    second.fit()
    differs = [k for k, v in straight.raw.state_dict().items() if not torch.equal(v, second.raw.state_dict()[k])]
    assert differs


class SometimesNaN(StandInModel):
    def __init__(self, nan_calls):
        super().__init__()
        self.nan_calls, self.calls = set(nan_calls), 0

    def forward(self, batch, stage=1, epoch=0):
        losses, stats = super().forward(batch, stage)
        self.calls += 1
        if self.calls in self.nan_calls or "all" in self.nan_calls:
            losses["global"] = losses["global"] * float("nan")
        return losses, stats


def test_nan_loss_skips_the_step_then_training_continues(tmp_path):
    # forward calls 3, 4 = both micro-batches of step 2
    trainer = make_trainer(tmp_path, model=SometimesNaN({3}), max_steps=1, stage2_epochs=0, save_every=0,
                           clip_grad=0.0)
    trainer.fit()
    before = {k: v.clone() for k, v in trainer.raw.named_parameters()}
    trainer.cfg.max_steps = 2
    trainer.fit()  # step 2: skipped
    for name, value in trainer.raw.named_parameters():
        assert torch.equal(value, before[name]), f"{name} changed during a skipped step"
    trainer.cfg.max_steps = 3
    trainer.fit()  # step 3 trains again
    assert any(not torch.equal(v, before[k]) for k, v in trainer.raw.named_parameters())
    assert trainer.progress.bad_steps == 0
    events = [json.loads(line) for line in open(tmp_path / "log.jsonl") if '"event"' in line]
    assert any("non-finite loss, update skipped" in e["message"] for e in events)


def test_nan_loss_every_step_stops_with_a_clear_message(tmp_path):
    trainer = make_trainer(tmp_path, model=SometimesNaN({"all"}), max_bad_steps=3)
    with pytest.raises(NonFiniteLossError, match="NaN/inf for 3 optimiser steps in a row"):
        trainer.fit()
    assert trainer.progress.global_step == 3


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    make_trainer(tmp_path, max_steps=3).fit()
    path = ckpt.find_resume(tmp_path)
    with pytest.raises(ValueError, match=r"dim: checkpoint=8, now=16"):
        make_trainer(tmp_path, model=StandInModel(dim=16)).resume(path)
    with pytest.raises(ValueError, match=r"batch_size: checkpoint=4, now=8"):
        make_trainer(tmp_path, batch_size=8).resume(path)
    make_trainer(tmp_path).resume(path)  # the same configuration is accepted


@pytest.mark.parametrize("init", ["best", "last"])
def test_stage_two_starts_from_best_or_last(tmp_path, monkeypatch, init):
    trainer = make_trainer(tmp_path, stage2_init=init, validate=True)
    scripted = iter([1.0, 2.0, 3.0])  # stage-1 epoch 1 is the best
    monkeypatch.setattr(trainer, "validate", lambda: {"val/loss/total": next(scripted)})
    seen = {}
    real_end_stage = trainer._end_stage

    def record():
        real_end_stage()
        if trainer.progress.stage == 2:
            seen["start"] = {k: v.clone() for k, v in trainer.raw.state_dict().items()}

    monkeypatch.setattr(trainer, "_end_stage", record)
    trainer.fit()
    folder = tmp_path / "checkpoints"
    best, last = (ckpt.load_checkpoint(folder / f"stage1_{n}.pt") for n in ("best", "last"))
    assert best["epoch"] == 1 and last["epoch"] == 2
    assert_same_state(seen["start"], (best if init == "best" else last)["model"])
    events = [json.loads(line)["message"] for line in open(tmp_path / "log.jsonl") if '"event"' in line]
    expected = "the best stage-1 checkpoint" if init == "best" else "the end of stage 1"
    assert any(m.startswith("stage 2 (adds CM-MIR) starts from " + expected) for m in events)
