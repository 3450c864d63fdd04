"""python -m cgns.export: the folder reloads into the same model (embeddings and maps to 1e-6), its image encoder is a
timm / torchvision state dict that loads strictly into the in-repo ViT / ResNet-50 (same names; neither library is a
dependency), its text encoder and tokenizer load with transformers' Auto classes, offline."""
import json

import pytest
import torch
from safetensors.torch import load_file

from cgns import load_model
from cgns.export import export_model, main
from cgns.models.encoders import load_image_encoder
from cgns.models.resnet import resnet50
from cgns.models.vit import vit_tiny
from test_model_api import pretrain_tiny

TEXTS = ["there is moderate enlargement of the cardiac silhouette. no pneumothorax", "small left pleural effusion",
         "lungs are clear", "effusion"]


@pytest.fixture(scope="module")
def run_dir(test_world, tmp_path_factory):
    return pretrain_tiny(test_world, tmp_path_factory.mktemp("export_run"))


def images(count, size, seed=0):
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def test_exported_folder_gives_the_checkpoints_embeddings(run_dir, tmp_path, capsys):
    out = main([str(run_dir), "--out", str(tmp_path / "exported")])
    assert "exported vit_tiny@32px" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"config.json", "image_encoder.pth", "image_encoder.safetensors",
                                               "heads.safetensors", "text_encoder"}
    original, exported = load_model(run_dir), load_model(out)
    assert exported.cache_size == original.cache_size and exported.patch_grid == original.patch_grid
    batch = images(4, 32)
    diffs = {"images": (exported.encode_images(batch) - original.encode_images(batch)).abs().max(),
             "texts": (exported.encode_texts(TEXTS) - original.encode_texts(TEXTS)).abs().max(),
             "maps": (exported.similarity_maps(batch, TEXTS) - original.similarity_maps(batch, TEXTS)).abs().max()}
    assert all(diff <= 1e-6 for diff in diffs.values()), diffs
    # every parameter and buffer came back (the state dicts are equal, not only these outputs)
    for key, value in original.model.state_dict().items():
        torch.testing.assert_close(exported.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    config = json.loads((out / "config.json").read_text())
    assert config["image_encoder"]["load"] == 'model = timm.create_model("vit_tiny_patch16_224", img_size=32, ' \
                                              'num_classes=0)'
    assert config["cache_size"] == original.cache_size
    # random init from the folder: same shapes, other weights
    fresh = load_model(out, random_init=True)
    assert fresh.encode_texts(TEXTS).shape == (len(TEXTS), original.config.embed_dim)
    assert not torch.allclose(fresh.encode_texts(TEXTS), original.encode_texts(TEXTS), atol=1e-3)


def test_exported_vit_is_a_timm_state_dict_with_the_checkpoints_features(run_dir, tmp_path):
    original = load_model(run_dir)
    out = main([str(run_dir / "checkpoints" / "latest.pt"), "--out", str(tmp_path / "exported")])
    pth = torch.load(out / "image_encoder.pth", map_location="cpu", weights_only=True)
    tensors = load_file(str(out / "image_encoder.safetensors"))
    assert pth.keys() == tensors.keys() and all(torch.equal(pth[k], tensors[k]) for k in pth)
    assert "cls_token" in pth and "blocks.0.attn.qkv.weight" in pth and not any(k.startswith("head") for k in pth)
    backbone = vit_tiny(image_size=32)
    backbone.load_state_dict(tensors, strict=True)
    batch = images(3, 32, seed=1)
    with torch.no_grad():
        got, expected = backbone.eval()(batch), original.model.image_encoder.backbone(batch)
    assert (got - expected).abs().max() <= 1e-6
    # both files are --image-weights for the downstream scripts: the checkpoint's encoder, feature for feature
    reference = load_image_encoder("vit_tiny", 32, checkpoint=run_dir / "checkpoints" / "latest.pt").eval()
    for name in ("image_encoder.safetensors", "image_encoder.pth"):
        encoder = load_image_encoder("vit_tiny", 32, image_weights=out / name).eval()
        with torch.no_grad():
            assert (encoder(batch)["local"] - reference(batch)["local"]).abs().max() <= 1e-6, name


def test_exported_resnet50_is_a_torchvision_state_dict(run_dir, tmp_path):
    """A ResNet-50 CGNSModel (the run's config with the encoder swapped; export does not care about training)."""
    from cgns.models.cgns import CGNSConfig, CGNSModel

    source = load_model(run_dir)
    torch.manual_seed(0)
    model = CGNSModel(CGNSConfig.from_dict({**source.config.to_dict(), "image_encoder": "resnet50"})).eval()
    out = export_model(model, source.tokenizer, tmp_path / "r50", cache_size=source.cache_size)
    tensors = load_file(str(out / "image_encoder.safetensors"))
    assert "conv1.weight" in tensors and "layer4.2.bn3.running_var" in tensors and "fc.weight" not in tensors
    assert "image_encoder.attention_pool.q_proj.weight" in load_file(str(out / "heads.safetensors"))
    backbone = resnet50(num_classes=0)
    backbone.load_state_dict(tensors, strict=True)
    batch = images(2, 32, seed=2)
    with torch.no_grad():
        assert (backbone.eval()(batch) - model.image_encoder.backbone(batch)).abs().max() <= 1e-6
        expected = model.encode_image(batch)
    assert json.loads((out / "config.json").read_text())["image_encoder"]["load"].startswith(
        "model = torchvision.models.resnet50(); model.fc = torch.nn.Identity()")
    assert (load_model(out).encode_images(batch) - expected).abs().max() <= 1e-6


def test_text_encoder_folder_loads_with_transformers_auto_classes(run_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    original = load_model(run_dir)
    out = main([str(run_dir), "--out", str(tmp_path / "exported")])
    assert (out / "text_encoder" / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(out / "text_encoder"), local_files_only=True)
    for sentence in ("there is moderate enlargement of the cardiac silhouette", "no pneumothorax"):
        assert tokenizer(sentence)["input_ids"] == original.tokenizer(sentence)["input_ids"]
    bert = AutoModel.from_pretrained(str(out / "text_encoder"), local_files_only=True).eval()
    tokens = original.tokenize(TEXTS)
    with torch.no_grad():
        got = bert(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        expected = original.model.text_encoder(tokens["input_ids"], tokens["attention_mask"])
    assert (got - expected).abs().max() <= 1e-6


def test_export_refuses_what_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*'model'"):
        main([str(tmp_path / "other.pt"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
