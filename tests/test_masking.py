"""Input masking of the ViT (--mask-ratio) and the MAE-style CM-MIR (--mir-masking input): the masked forward
against the unmasked one and a hand-kept reference, the gathered targets against F.unfold, the fused gathers on the
training path (forward and backward), refusals, and an exact resume with masking on."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import cgns.ops.patch_gather as patch_gather
from cgns.data.datasets import collate_pretrain
from cgns.distributed import DistInfo
from cgns.engine import checkpoint as ckpt
from cgns.engine.pretrain import LoopConfig, Pretrainer
from cgns.losses.reconstruction import masked_patch_loss, patch_targets
from cgns.models.cgns import CGNSConfig, CGNSModel
from cgns.models.decoders import patches_to_image, place_on_grid
from cgns.models.vit import VisionTransformer, kept_patch_count, random_patch_split
from test_models_cgns import tiny_batch, tiny_config

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)


def small_vit():
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=16, dim=24, depth=2, num_heads=2)


def test_keeping_every_patch_is_the_unmasked_forward():
    vit, images = small_vit(), torch.randn(3, 3, 32, 32)
    every = torch.arange(4).expand(3, 4)
    torch.testing.assert_close(vit(images, every), vit(images), rtol=0, atol=0)


def test_masked_forward_equals_the_blocks_run_on_the_hand_kept_tokens():
    vit = small_vit()
    images = torch.randn(3, 3, 32, 32, requires_grad=True)
    keep = torch.tensor([[0, 3], [1, 2], [2, 3]])
    out = vit(images, keep)                                                          # [B,1+2,D]
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    got_image_grad, got_grads = images.grad.clone(), {n: p.grad.clone() for n, p in vit.named_parameters()}
    images.grad, _ = None, vit.zero_grad()
    # the reference: embed the whole image, keep the class token and the picked rows by plain indexing
    tokens = vit.embed(images)                                                       # [B,1+L,D]
    rows = torch.cat([torch.zeros(3, 1, dtype=torch.long), keep + 1], dim=1)
    kept = torch.stack([tokens[b, rows[b]] for b in range(3)])
    for block in vit.blocks:
        kept = block(kept)
    expected = vit.norm(kept)
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_image_grad, images.grad, rtol=1e-5, atol=1e-6)
    for name, param in vit.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(got_grads[name], param.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_mask_ratio_zero_model_equals_the_plain_model():
    torch.manual_seed(0)
    plain = CGNSModel(tiny_config(cgns=False))
    torch.manual_seed(0)
    zero = CGNSModel(tiny_config(cgns=False, mask_ratio=0.0))
    batch = tiny_batch()
    torch.manual_seed(5)
    a, _ = plain(batch, stage=2)
    torch.manual_seed(5)
    b, _ = zero(batch, stage=2)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_random_split_is_a_partition_per_image_and_follows_the_noise():
    keep, masked = random_patch_split(5, 16, kept_patch_count(16, 0.75), noise=torch.rand(5, 16))
    assert keep.shape == (5, 4) and masked.shape == (5, 12)
    for b in range(5):
        assert sorted(keep[b].tolist() + masked[b].tolist()) == list(range(16))
        assert keep[b].tolist() == sorted(keep[b].tolist())
    noise = torch.arange(16.0).flip(0).expand(2, 16)                      # lowest noise = highest patch number
    assert random_patch_split(2, 16, 3, noise=noise)[0].tolist() == [[13, 14, 15]] * 2
    assert kept_patch_count(196, 0.5) == 98 and kept_patch_count(16, 0.99) == 1


@pytest.mark.parametrize("normalise", [False, True])
def test_gathered_targets_are_unfold_rows(normalise):
    images = torch.randn(2, 3, 32, 48)
    index = torch.tensor([[0, 5, 2], [4, 1, 3]])
    rows = F.unfold(images, 16, stride=16).transpose(1, 2)                          # [B,6,3*16*16]
    expected = torch.stack([rows[b, index[b]] for b in range(2)])
    if normalise:
        expected = (expected - expected.mean(-1, keepdim=True)) / (expected.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(patch_targets(images, 16, index, normalise), expected, rtol=1e-6, atol=1e-6)


def test_patches_to_image_inverts_unfold_and_grid_placement_puts_tokens_back():
    images = torch.randn(2, 3, 32, 48)
    rows = F.unfold(images, 16, stride=16).transpose(1, 2)
    assert torch.equal(patches_to_image(rows, (2, 3), 16), images)
    tokens, keep, fill = torch.randn(2, 2, 5), torch.tensor([[1, 4], [0, 5]]), torch.randn(5)
    grid = place_on_grid(tokens, keep, 6, fill)
    for b in range(2):
        for position in range(6):
            picked = (keep[b] == position).nonzero()
            want = tokens[b, picked[0, 0]] if len(picked) else fill
            assert torch.equal(grid[b, position], want)


def test_masked_patch_loss_is_the_l1_on_the_masked_patches_only():
    prediction = torch.randn(2, 3, 32, 32, requires_grad=True)
    images = torch.randn(2, 3, 32, 32)
    masked = torch.tensor([[0, 3], [2, 1]])
    loss = masked_patch_loss(prediction, images, 16, masked, weight=10.0)["reconstruction"]
    p_rows = F.unfold(prediction, 16, stride=16).transpose(1, 2)
    t_rows = F.unfold(images, 16, stride=16).transpose(1, 2)
    expected = 10.0 * torch.stack([(p_rows[b, masked[b]] - t_rows[b, masked[b]]).abs() for b in range(2)]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    untouched = F.unfold(prediction.grad, 16, stride=16).transpose(1, 2)
    assert untouched[0, [1, 2]].abs().sum() == 0 and untouched[0, [0, 3]].abs().sum() > 0


def test_resnet_with_masking_and_input_mir_without_masking_are_refused():
    with pytest.raises(ValueError, match="--mask-ratio 0.5.*resnet50"):
        CGNSConfig(image_encoder="resnet50", mask_ratio=0.5)
    with pytest.raises(ValueError, match="--mir-masking input .* --mask-ratio > 0"):
        CGNSConfig(mir_masking="input")
    with pytest.raises(ValueError, match="--mask-ratio must be in"):
        CGNSConfig(mask_ratio=1.0)


class Counting:
    """Counts forward and backward calls of the two fused gathers' autograd Functions."""

    def __init__(self, monkeypatch):
        self.calls = {}
        for cls in (patch_gather._MaskedPatchGather, patch_gather._GatherPatches):
            for phase in ("forward", "backward"):
                real = getattr(cls, phase)
                monkeypatch.setattr(cls, phase, staticmethod(self.wrap(f"{cls.__name__}.{phase}", real)))

    def wrap(self, key, real):
        def counted(*args):
            self.calls[key] = self.calls.get(key, 0) + 1
            return real(*args)
        return counted


def test_input_masking_trains_through_both_fused_gathers_forward_and_backward(monkeypatch):
    from cgns.ops import extension_available
    if not extension_available():
        pytest.skip("the compiled extension is not built (the reference ops have no autograd Function)")
    counting = Counting(monkeypatch)
    torch.manual_seed(0)
    model = CGNSModel(tiny_config(mask_ratio=0.5, mir_masking="input", mir_target_norm=True))
    losses, _ = model(tiny_batch(), stage=2)
    assert losses["reconstruction"] > 0
    sum(losses.values()).backward()
    assert counting.calls == {"_MaskedPatchGather.forward": 1, "_MaskedPatchGather.backward": 1,
                              "_GatherPatches.forward": 2, "_GatherPatches.backward": 1}
    assert model.decoder.mask_token.grad.abs().sum() > 0
    model.eval()                                                       # evaluation encodes whole images
    counting.calls.clear()
    with torch.no_grad():
        model(tiny_batch(), stage=2)
    assert counting.calls == {}


class TinyPairs(torch.utils.data.Dataset):
    """Items of tiny_batch as a data set (random images and reports, 2-4 sentences each)."""

    def __init__(self, n):
        self.batch = tiny_batch(batch=n)

    def __len__(self):
        return len(self.batch["image"])

    def __getitem__(self, index):
        item = {k: v[index] for k, v in self.batch.items()}
        item["index"] = index
        return item


def masked_trainer(out_dir, **overrides):
    torch.manual_seed(0)
    model = CGNSModel(tiny_config(mask_ratio=0.5, mir_masking="input", kmeans_start_cosine=1.0))
    torch.manual_seed(1)
    settings = dict(batch_size=4, accum_steps=1, lr=1e-3, stage1_epochs=1, stage2_epochs=1, warmup_epochs=0.5,
                    log_every=2, save_every=3, progress=False, amp="none", validate=False)
    settings.update(overrides)
    return Pretrainer(model, train_set=TinyPairs(16), val_set=None, collate_fn=collate_pretrain,
                      cfg=LoopConfig(**settings), info=SINGLE, output_dir=out_dir,
                      model_config=model.config.to_dict())


def test_resume_is_bit_exact_with_masking_on(tmp_path, monkeypatch):
    straight = masked_trainer(tmp_path / "straight")
    straight.fit()                                                     # 4 + 4 steps, the switch in the middle
    first = masked_trainer(tmp_path / "killed", max_steps=5)
    first.fit()
    resumed = masked_trainer(tmp_path / "killed")
    resumed.resume(ckpt.find_resume(tmp_path / "killed"))
    assert resumed.progress.global_step == 5 and resumed.progress.stage == 2
    resumed.fit()
    for name, value in straight.raw.state_dict().items():
        assert torch.equal(value, resumed.raw.state_dict()[name]), name
    # guard: the patch noise comes from the restored RNG; a resume without it ends elsewhere
    masked_trainer(tmp_path / "other", max_steps=5).fit()
    other = masked_trainer(tmp_path / "other")
    monkeypatch.setattr("cgns.engine.pretrain.set_rng_state", lambda state: None)
    other.resume(ckpt.find_resume(tmp_path / "other"))
    other.fit()
    assert any(not torch.equal(v, other.raw.state_dict()[k]) for k, v in straight.raw.state_dict().items())


def test_train_pretrain_with_input_masking_goes_through_both_fused_gathers(test_world, tmp_path, monkeypatch):
    from cgns.ops import extension_available
    if not extension_available():
        pytest.skip("the compiled extension is not built (the reference ops have no autograd Function)")
    import train_pretrain
    from test_pretrain_main import TINY

    counting = Counting(monkeypatch)
    # 32 training pairs, batch 16: steps 1-2 are stage 1, step 3 is stage 2 (adds the MAE-style CM-MIR)
    metrics = train_pretrain.main(["--data-root", str(test_world / "mimic_cxr"), "--output-dir", str(tmp_path),
                                   *TINY, "--batch-size", "16", "--stage1-epochs", "1", "--stage2-epochs", "1",
                                   "--mask-ratio", "0.5", "--mir-masking", "input", "--max-steps", "3"])
    assert metrics["steps"] == 3
    calls = counting.calls
    assert calls["_MaskedPatchGather.forward"] == 3 and calls["_MaskedPatchGather.backward"] == 3
    assert calls["_GatherPatches.forward"] == 2 and calls["_GatherPatches.backward"] == 1      # step 3 only
    config = json.load(open(tmp_path / "config.json"))["model"]
    assert config["mask_ratio"] == 0.5 and config["mir_masking"] == "input"
    train = [json.loads(line) for line in open(tmp_path / "log.jsonl") if '"train"' in line]
    assert "loss/reconstruction" in train[-1] and all(math.isfinite(v) for k, v in train[-1].items()
                                                       if k.startswith("loss/"))


def test_the_visual_reports_masked_reconstruction_shows_the_kept_patches_and_the_prediction():
    from cgns.viz.panels import reconstruct

    torch.manual_seed(0)
    model = CGNSModel(tiny_config(mask_ratio=0.5, mir_masking="input", mir_target_norm=True)).eval()
    batch = tiny_batch()
    shown = reconstruct(model, batch)
    assert shown["kept"].shape == (4, 2, 2) and shown["kept"].sum() == 4 * 2
    rows = F.unfold(shown["reconstruction"], 16, stride=16).transpose(1, 2)             # [B,4,3*16*16]
    truth = F.unfold(batch["image"], 16, stride=16).transpose(1, 2)
    kept = shown["kept"].flatten(1)
    assert torch.equal(rows[kept], truth[kept]) and not torch.equal(rows[~kept], truth[~kept])
    # the masked patches: the decoder's normalised prediction put back at the true patch's mean and variance
    keep_index, _ = random_patch_split(4, 4, 2, noise=torch.rand(4, 4, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        _, patches = model.image_features(batch["image"], keep_index)
        _, sentences, mask = model.text_features(batch["input_ids"], batch["attention_mask"], batch["sentence_index"])
        raw = F.unfold(model.decoder(patches, keep_index, sentences, mask), 16, stride=16).transpose(1, 2)
    expected = raw * (truth.var(-1, keepdim=True) + 1e-6).sqrt() + truth.mean(-1, keepdim=True)
    torch.testing.assert_close(rows[~kept], expected[~kept])
    torch.testing.assert_close(reconstruct(model, batch)["reconstruction"], shown["reconstruction"])  # seeded
