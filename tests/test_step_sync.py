"""A training step must not wait on the device: no host read of a device value except at log and save steps.

On the CPU every call that would synchronise on a GPU is counted (Tensor.item / tolist / nonzero, int / float /
bool / index conversions, boolean-mask indexing) while non-logging steps run; the count must be zero. On a GPU the
same run goes under torch.cuda.set_sync_debug_mode("error"). Also: a skipped (non-finite) step leaves parameters and
optimiser state exactly as they were, and a good step is exactly a plain step.
"""
import pytest
import torch

from cgns.data.datasets import collate_pretrain
from cgns.distributed import DistInfo
from cgns.engine.pretrain import LoopConfig, Pretrainer, guarded_step
from cgns.engine.pretrain_config import DEMO
from cgns.models.cgns import CGNSModel
from test_masking import TinyPairs
from test_models_cgns import tiny_config

SYNCING = ("item", "tolist", "nonzero", "__int__", "__float__", "__bool__", "__index__")


class SyncCounter:
    """Counts host reads of tensor values while `active`. The CPU Adam's step counters are host tensors by design
    (torch keeps them on the CPU for a non-capturable optimiser on any device), so reading them is not counted."""

    def __init__(self, monkeypatch, trainer):
        self.trainer, self.active, self.seen = trainer, False, []
        for name in SYNCING:
            monkeypatch.setattr(torch.Tensor, name, self.wrap(name, getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch, "nonzero", self.wrap("torch.nonzero", torch.nonzero))
        real_getitem = torch.Tensor.__getitem__

        def getitem(tensor, index):
            indices = index if isinstance(index, tuple) else (index,)
            if self.active and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.dim() > 0
                                   for i in indices):
                self.seen.append("boolean-mask indexing")
            return real_getitem(tensor, index)

        monkeypatch.setattr(torch.Tensor, "__getitem__", getitem)

    def host_counters(self):
        return {id(state["step"]) for state in self.trainer.optimizer.state.values() if "step" in state}

    def wrap(self, name, real):
        def counted(*args, **kwargs):
            if self.active and not (args and isinstance(args[0], torch.Tensor)
                                    and id(args[0]) in self.host_counters()):
                import traceback
                self.seen.append(f"{name} at {traceback.format_stack(limit=3)[0].strip()}")
            return real(*args, **kwargs)
        return counted


def sync_free_trainer(device, tmp_path, steps, **model_overrides):
    torch.manual_seed(0)
    settings = dict(mask_ratio=0.5, mir_masking="input", kmeans_start_cosine=1.0, kmeans_reseed_share=0.3)
    settings.update(model_overrides)
    model = CGNSModel(tiny_config(**settings))
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device(device), is_main=True)
    # stage 1 for `steps`, then stage 2; one log and no save before the last step
    cfg = LoopConfig(batch_size=4, lr=1e-3, stage1_epochs=1, stage2_epochs=1, max_steps=steps, log_every=1000,
                     save_every=0, progress=False, amp="bf16" if device == "cuda" else "none", clip_grad=1.0,
                     validate=False)
    return Pretrainer(model, train_set=TinyPairs(4 * (steps - 2)), val_set=None, collate_fn=collate_pretrain,
                      cfg=cfg, info=info, output_dir=tmp_path, model_config=model.config.to_dict())


def counted_run(trainer, counter):
    """fit() with the counter on inside every optimiser step and every non-logging step's bookkeeping."""
    real_step, real_after = trainer._optimizer_step, trainer._after_step

    def step(micro_batches):
        counter.active = True
        try:
            return real_step(micro_batches)
        finally:
            counter.active = False

    def after(stepped, lr):
        counter.active = not trainer._stop()                            # the last step logs: reads are allowed
        try:
            return real_after(stepped, lr)
        finally:
            counter.active = False

    trainer._optimizer_step, trainer._after_step = step, after
    trainer.fit()


# the demo preset's terms and weights (grounding on) on the tiny model; its sizes stay the tiny ones
DEMO_TERMS = ("mask_ratio", "mir_masking", "mir_target_norm", "local_image_weight", "local_text_weight",
              "kmeans_reseed_share", "grounding_weight", "grounding_temperature", "grounding_sentence_temperature",
              "grounding_logit_scale", "cgns", "mir", "local")


def demo_terms() -> dict:
    terms = {name: getattr(DEMO.model, name) for name in DEMO_TERMS}
    assert terms["grounding_weight"] > 0                               # what this case is for
    return terms


@pytest.mark.parametrize("overrides", [{}, {"mask_ratio": 0.0, "mir_masking": "features"}, demo_terms()],
                         ids=["masked-input-mir", "method", "demo-terms"])
def test_no_host_reads_inside_non_logging_steps(tmp_path, monkeypatch, overrides):
    trainer = sync_free_trainer("cpu", tmp_path, steps=6, **overrides)  # 4 stage-1 steps (k-means starts), 2 stage-2
    counter = SyncCounter(monkeypatch, trainer)
    counted_run(trainer, counter)
    assert trainer.progress.global_step == 6 and trainer.progress.stage == 2
    assert bool(trainer.raw.clustering.started)                        # the start / update / reseed path ran
    assert counter.seen == []


def test_the_counter_catches_a_host_read(tmp_path, monkeypatch):
    """Guard that the test above can fail: the per-step NaN check of the old loop is counted."""
    trainer = sync_free_trainer("cpu", tmp_path, steps=6)
    counter = SyncCounter(monkeypatch, trainer)
    real_step = trainer._optimizer_step

    def old_style(micro_batches):
        stepped = real_step(micro_batches)
        counter.active = True
        bool(stepped.item())
        counter.active = False
        return stepped

    trainer._optimizer_step = old_style
    trainer.fit()
    assert len(counter.seen) == 6 and all(seen.startswith("item") for seen in counter.seen)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (sync debug mode is CUDA's)")
def test_no_synchronisation_on_the_gpu(tmp_path):
    trainer = sync_free_trainer("cuda", tmp_path, steps=6)
    real_step = trainer._optimizer_step

    def step(micro_batches):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real_step(micro_batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    trainer._optimizer_step = step
    trainer.fit()
    assert trainer.progress.global_step == 6


def adam_after_one_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    model(torch.randn(3, 5)).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    model(torch.randn(3, 5)).square().sum().backward()
    return model, optimizer


def snapshot(model, optimizer):
    return ([p.detach().clone() for p in model.parameters()],
            [{k: v.clone() for k, v in s.items()} for s in optimizer.state.values()])


@pytest.mark.parametrize("fused", [False, True], ids=["guarded", "fused-found-inf"])
def test_a_bad_step_leaves_parameters_and_adam_state_unchanged(fused):
    model, optimizer = adam_after_one_step()
    if fused:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
        model(torch.randn(3, 5)).sum().backward()
        optimizer.step()
        model(torch.randn(3, 5)).sum().backward()
    for param in model.parameters():
        param.grad[0] = float("nan")                                   # what a non-finite loss leaves behind
    before = snapshot(model, optimizer)
    bad = torch.tensor(True)
    if fused:
        optimizer.found_inf = bad.float()
        optimizer.step()
        del optimizer.found_inf
    else:
        guarded_step(optimizer, bad)
    after = snapshot(model, optimizer)
    for x, y in zip(before[0], after[0]):
        assert torch.equal(x, y)
    for x, y in zip(before[1], after[1]):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_good_guarded_step_is_exactly_a_plain_step_and_a_first_bad_step_leaves_no_state():
    model, optimizer = adam_after_one_step()
    twin, twin_optimizer = adam_after_one_step()
    guarded_step(optimizer, torch.tensor(False))
    twin_optimizer.step()
    for (a, b), (c, d) in zip(zip(*snapshot(model, optimizer)), zip(*snapshot(twin, twin_optimizer))):
        assert torch.equal(a, c) and all(torch.equal(b[k], d[k]) for k in b)
    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh(torch.randn(4, 3)).sum().backward()
    start = [p.detach().clone() for p in fresh.parameters()]
    guarded_step(fresh_optimizer, torch.tensor(True))
    assert all(torch.equal(a, b) for a, b in zip(start, fresh.parameters()))
    for state in fresh_optimizer.state.values():                    # as if never stepped: zeros, step 0
        assert all(not v.any() for v in state.values())
