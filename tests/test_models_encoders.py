"""Image encoder interface: shapes, the ResNet token layout, pyramids, and loading from a pretraining checkpoint."""
import pytest
import torch

from cgns.models.encoders import AttentionPool, build_image_encoder, load_image_encoder


def test_vit_outputs_and_pyramid():
    encoder = build_image_encoder("vit_tiny", 64).eval()
    images = torch.randn(2, 3, 64, 64)
    out = encoder(images)
    assert out["global"].shape == (2, 192) and out["local"].shape == (2, 16, 192)
    pyramid = encoder.feature_pyramid(images)
    assert [tuple(p.shape) for p in pyramid] == [(2, 192, 4, 4)] * 4
    assert encoder.pyramid_strides == [16] * 4 and encoder.pyramid_channels == [192] * 4
    # the last pyramid map is the local tokens laid out on the grid (row-major)
    torch.testing.assert_close(pyramid[-1].flatten(2).transpose(1, 2), out["local"])


def test_resnet_tokens_are_permuted_not_scrambled():
    torch.manual_seed(0)
    encoder = build_image_encoder("resnet50", 64).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = encoder(images)
        feature_map = encoder.backbone(images)                       # [B,2048,2,2]
    assert out["local"].shape == (2, 4, 2048) and out["global"].shape == (2, 2048)
    h, w = feature_map.shape[2:]
    for token in range(h * w):  # token i is the whole channel vector at (i // w, i % w)
        torch.testing.assert_close(out["local"][:, token], feature_map[:, :, token // w, token % w])
    pyramid = encoder.feature_pyramid(images)
    assert [p.shape[1] for p in pyramid] == encoder.pyramid_channels == [64, 256, 512, 1024, 2048]
    assert [64 // p.shape[-1] for p in pyramid] == encoder.pyramid_strides == [2, 4, 8, 16, 32]


def test_attention_pool_ignores_masked_tokens():
    torch.manual_seed(0)
    pool = AttentionPool(16, 4)
    tokens, mask = torch.randn(3, 5, 16), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    changed = tokens.clone()
    changed[~mask] = 100.0                                            # garbage in the padding
    torch.testing.assert_close(pool(tokens, mask), pool(changed, mask))


def _checkpoint(name, size):
    encoder = build_image_encoder(name, size)
    model_state = {"image_encoder." + k: v for k, v in encoder.state_dict().items()}
    model_state["text_encoder.weight"] = torch.zeros(1)              # other parts of the model are ignored
    return encoder, {"model": model_state, "config": {"image_encoder": name, "image_size": size}}


def test_load_from_checkpoint_round_trip_and_refusal(tmp_path):
    torch.manual_seed(0)
    encoder, checkpoint = _checkpoint("vit_tiny", 32)
    path = tmp_path / "final.pt"
    torch.save(checkpoint, path)
    loaded = load_image_encoder("vit_tiny", 32, checkpoint=path).eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(images)["global"], encoder.eval()(images)["global"])
    # another image size: position embedding resampled, other weights identical
    bigger = load_image_encoder("vit_tiny", 64, checkpoint=path)
    assert torch.equal(bigger.backbone.blocks[0].attn.qkv.weight, encoder.backbone.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match="'vit_tiny'.*'resnet50'"):
        load_image_encoder("resnet50", 32, checkpoint=path)
    with pytest.raises(ValueError, match="not a pretraining checkpoint"):
        load_image_encoder("vit_tiny", 32, checkpoint={"state_dict": {}})
    with pytest.raises(ValueError, match="unknown image encoder 'vit_huge'"):
        build_image_encoder("vit_huge", 224)
