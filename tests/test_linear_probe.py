"""Linear probe internals on tiny stand-ins: cached == uncached training, cache keys, encoder-source refusals."""
import pytest
import torch

from cgns.engine.features import (FeatureSet, cached_features, encode_dataset, encoder_fingerprint,
                                  load_frozen_encoder)
from cgns.engine.linear import CachedSource, EncodingSource, evaluate_head, train_linear_head
from cgns.models.encoders import build_image_encoder

SIZE = 32


class BrightCornerDataset(torch.utils.data.Dataset):
    """label 1 <=> a bright top-left quadrant; noise elsewhere (a stand-in for the classification datasets)."""
    class_names = ["Corner"]

    def __init__(self, n: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.labels = (torch.arange(n) % 2).float()[:, None]
        self.images = torch.randn(n, 3, SIZE, SIZE, generator=gen) * 0.3
        self.images[self.labels[:, 0] == 1, :, : SIZE // 2, : SIZE // 2] += 1.5

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "index": i}


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    enc = build_image_encoder("vit_tiny", SIZE).eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc


def _train(train, val, epochs=8):
    return train_linear_head(train, val, feature_dim=192, num_classes=1, kind="multilabel", primary="auroc",
                             class_names=["Corner"], epochs=epochs, batch_size=8, lr=1e-2, patience=100, seed=3,
                             log=lambda *_: None)


def _cached(encoder, dataset):
    features, labels = encode_dataset(encoder, dataset, "cls", batch_size=16)  # [N, D], [N, 1]
    return CachedSource(FeatureSet(features[None], labels))  # one view


def test_cached_and_uncached_training_give_the_same_head(encoder):
    train_ds, val_ds = BrightCornerDataset(40, 1), BrightCornerDataset(20, 2)
    cached_train, cached_val = _cached(encoder, train_ds), _cached(encoder, val_ds)
    head_cached, summary_cached = _train(cached_train, cached_val)
    head_encoded, summary_encoded = _train(EncodingSource(encoder, train_ds, "cls"),
                                           EncodingSource(encoder, val_ds, "cls"))
    # same seed, same batches: the only difference is float rounding of the encoder run on other batch groupings
    assert torch.allclose(head_cached.linear.weight, head_encoded.linear.weight, atol=1e-4)
    assert summary_cached["best_epoch"] == summary_encoded["best_epoch"]
    assert summary_cached["val"]["auroc"] == pytest.approx(summary_encoded["val"]["auroc"], abs=1e-6)
    # and it learned: a bright quadrant is easy even for random features
    # min 0.960 over encoder/head seeds 0-4, 1/2 threads, torch 2.13.0/2.14.1; threshold 0.8
    assert summary_cached["val"]["auroc"] > 0.8
    test = evaluate_head(head_cached, cached_val, "multilabel", ["Corner"], "test")
    assert test["auroc"] == pytest.approx(summary_cached["val"]["auroc"])


def test_feature_cache_hits_only_for_identical_encoder_and_data(encoder, tmp_path):
    calls = []

    def make():
        calls.append(1)
        return BrightCornerDataset(6, 1)

    spec = {"dataset": "toy", "split": "train", "data_pct": 1.0}
    first = cached_features(encoder, make, "cls", spec, cache_dir=tmp_path, log=lambda *_: None)
    again = cached_features(encoder, make, "cls", spec, cache_dir=tmp_path, log=lambda *_: None)
    assert len(calls) == 1 and torch.equal(first.features, again.features)
    cached_features(encoder, make, "cls", {**spec, "data_pct": 0.1}, cache_dir=tmp_path, log=lambda *_: None)
    assert len(calls) == 2  # another fraction -> another entry
    other = build_image_encoder("vit_tiny", SIZE)  # other weights, same architecture
    assert encoder_fingerprint(other, "cls") != encoder_fingerprint(encoder, "cls")
    cached_features(other, make, "cls", spec, cache_dir=tmp_path, log=lambda *_: None)
    assert len(calls) == 3
    assert first.features.shape == (1, 6, 192) and first.labels.shape == (6, 1)


def _fake_checkpoint(path, name, size, encoder=None):
    state = {f"image_encoder.{k}": v for k, v in (encoder.state_dict() if encoder else {}).items()}
    torch.save({"model": state, "config": {"image_encoder": name, "image_size": size}}, path)
    return path


def test_resize_checkpoint_evaluates_at_another_size(tmp_path):
    """--resize-checkpoint: a 64-px ViT checkpoint built at 128 px keeps every weight but the position table, which
    is resampled from the 4x4 grid to 8x8 (the class token's entry unchanged); the encoder name is still checked."""
    from cgns.models.encoders import build_image_encoder

    torch.manual_seed(0)
    small = build_image_encoder("vit_tiny", 64)
    ckpt = _fake_checkpoint(tmp_path / "vit.pt", "vit_tiny", 64, small)
    encoder, source = load_frozen_encoder(None, 128, checkpoint=ckpt, resize_checkpoint=True)
    assert source["image_size"] == 128 and encoder.grid == (8, 8)
    big, old = encoder.state_dict(), small.state_dict()
    assert big["backbone.pos_embed"].shape == (1, 65, 192) and old["backbone.pos_embed"].shape == (1, 17, 192)
    assert torch.equal(big["backbone.pos_embed"][:, 0], old["backbone.pos_embed"][:, 0])
    assert all(torch.equal(big[k], v) for k, v in old.items() if k != "backbone.pos_embed")
    assert encoder(torch.randn(1, 3, 128, 128)) is not None
    with pytest.raises(ValueError, match=r"--image-encoder vit_small but the checkpoint holds vit_tiny"):
        load_frozen_encoder("vit_small", 128, checkpoint=ckpt, resize_checkpoint=True)


def test_resize_checkpoint_resamples_the_resnet_pooling_grid(tmp_path):
    """A 128-px ResNet-50 checkpoint built at 256 px: every convolution and BatchNorm entry (running statistics
    included) is kept, and only the global pooling's position table goes from 1+4x4 to 1+8x8 entries, the mean
    token's entry unchanged."""
    from cgns.models.encoders import build_image_encoder

    torch.manual_seed(0)
    small = build_image_encoder("resnet50", 128)
    small.backbone.layer1[0].bn1.running_mean.normal_()            # a trained BatchNorm, not the initial zeros
    ckpt = _fake_checkpoint(tmp_path / "r50.pt", "resnet50", 128, small)
    encoder, source = load_frozen_encoder(None, 256, checkpoint=ckpt, resize_checkpoint=True)
    assert source["image_size"] == 256 and encoder.grid == (8, 8)
    big, old = encoder.state_dict(), small.state_dict()
    key = "attention_pool.positional_embedding"
    assert big[key].shape == (65, 2048) and old[key].shape == (17, 2048)
    assert torch.equal(big[key][0], old[key][0])
    assert all(torch.equal(big[k], v) for k, v in old.items() if k != key)
    maps = encoder.feature_pyramid(torch.randn(1, 3, 256, 256))
    assert [m.shape[-1] for m in maps[2:]] == [32, 16, 8]          # layer2 / 3 / 4, the YOLOv3 scales


def test_checkpoint_mismatch_is_refused_naming_both(tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "r50.pt", "resnet50", 64)
    with pytest.raises(ValueError, match=r"--image-encoder vit_tiny but the checkpoint holds resnet50"):
        load_frozen_encoder("vit_tiny", None, checkpoint=ckpt)
    with pytest.raises(ValueError, match=r"--image-size 128 but the checkpoint was trained at 64"):
        load_frozen_encoder(None, 128, checkpoint=ckpt)
    with pytest.raises(ValueError, match="exactly one encoder source"):
        load_frozen_encoder("vit_tiny", 32, checkpoint=ckpt, random_init=True)
    import train_linear
    with pytest.raises(ValueError, match="resnet50"):
        train_linear.main(["--dataset", "rsna", "--checkpoint", str(ckpt), "--image-encoder", "vit_small",
                           "--data-root", str(tmp_path), "--output-dir", str(tmp_path / "out")])


def test_checkpoint_settings_are_read_from_its_config(encoder, tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "vit.pt", "vit_tiny", SIZE, encoder)
    loaded, source = load_frozen_encoder(None, None, checkpoint=ckpt)
    assert source["name"] == "vit_tiny" and source["image_size"] == SIZE and source["pooling"] == "cls"
    assert encoder_fingerprint(loaded, "cls") == encoder_fingerprint(encoder, "cls")
    assert not any(p.requires_grad for p in loaded.parameters())


class NoisyViews(BrightCornerDataset):
    """Each access draws new noise, like an augmenting dataset."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {**item, "image": item["image"] + 0.1 * torch.randn_like(item["image"])}


def test_augmented_views_are_separate_passes(encoder, tmp_path):
    views = cached_features(encoder, lambda: NoisyViews(6, 1), "cls", {"dataset": "toy", "split": "train"},
                            views=3, cache_dir=tmp_path, log=lambda *_: None)
    assert views.features.shape == (3, 6, 192)
    assert not torch.allclose(views.features[0], views.features[1])
    source = CachedSource(views)
    first = next(source.batches(torch.arange(6), 6, epoch=0))[0]
    fourth = next(source.batches(torch.arange(6), 6, epoch=3))[0]
    assert torch.equal(first, fourth)  # epochs cycle through the views


def test_imagenet_format_weights_are_loaded(encoder, tmp_path):
    path = tmp_path / "vit_tiny_imagenet.pth"
    torch.save(encoder.backbone.state_dict(), path)  # timm parameter names, as an ImageNet file has them
    loaded, source = load_frozen_encoder("vit_tiny", SIZE, image_weights=path)
    assert source["origin"].startswith("image_weights:")
    assert encoder_fingerprint(loaded, "cls") == encoder_fingerprint(encoder, "cls")


def test_best_epoch_selection_by_loss_or_by_metric():
    from cgns.engine.downstream import monitor_key

    early = {"loss": 0.40, "auroc": 0.70}        # lower validation loss
    late = {"loss": 0.55, "auroc": 0.75}         # higher validation AUROC
    assert monitor_key(early, "auroc", "loss") > monitor_key(late, "auroc", "loss")
    assert monitor_key(late, "auroc", "metric") > monitor_key(early, "auroc", "metric")
    tie = {"loss": 0.50, "auroc": 0.75}
    assert monitor_key(tie, "auroc", "metric") > monitor_key(late, "auroc", "metric")   # tie -> lower loss
    undefined = {"loss": 0.10, "auroc": None}    # a split with one label value: ranks last, as a nan mAP does
    assert monitor_key(early, "auroc", "metric") > monitor_key(undefined, "auroc", "metric")
    scored, unscored = {"loss": 0.4, "mAP": 0.0}, {"loss": 0.1, "mAP": float("nan")}
    assert monitor_key(scored, "mAP") > monitor_key(unscored, "mAP") > monitor_key(None, "mAP")
