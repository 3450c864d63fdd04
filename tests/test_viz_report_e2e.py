"""The whole report on a tiny CGNSModel built in-test (untrained), saved as train_pretrain.py saves it."""
import json
import re

import pytest
import torch

from cgns.engine.checkpoint import save_checkpoint
from cgns.models.cgns import CGNSConfig, CGNSModel
from cgns.viz.inference import collate_items
from cgns.viz.loading import load_run
from cgns.viz.localisation import attention_localisation
from cgns.viz.panels import reconstruct
from cgns.viz.report import write_report
from test_viz_curves import write_fake_run

CACHE_SIZE, IMAGE_SIZE = 64, 64


@pytest.fixture(scope="module")
def tiny_run(test_world, tmp_path_factory):
    from cgns.data.datasets import build

    root = test_world / "mimic_cxr"
    valid = build("pretrain", "mimic_cxr", "valid", data_root=root, image_size=IMAGE_SIZE, max_length=64,
                  cache_size=CACHE_SIZE)
    tokenizer = valid.tokenizer
    config = CGNSConfig(image_encoder="vit_tiny", text_vocab_size=len(tokenizer), image_size=IMAGE_SIZE, max_length=64,
                        embed_dim=32, text_hidden_size=32, text_layers=1, text_heads=2, text_max_positions=64,
                        num_clusters=4, decoder_layers=1, decoder_heads=2, decoder_feedforward=32,
                        pad_token_id=tokenizer.pad_token_id, tokenizer_dir=str(valid.cache.path / "tokenizer"))
    torch.manual_seed(0)
    model = CGNSModel(config)
    # start k-means from random unit vectors, so the cluster panel has centroids to assign to
    model.clustering.initialise(torch.nn.functional.normalize(torch.randn(8, 32), dim=-1))
    run = write_fake_run(tmp_path_factory.mktemp("viz") / "run")
    (run / "config.json").write_text(json.dumps({"data": {"data_root": str(root), "cache_size": CACHE_SIZE},
                                                 "loop": {"seed": 42}}))
    save_checkpoint(run / "checkpoints" / "final.pt",
                    {"model": model.state_dict(), "config": config.to_dict(), "stage": 2, "step": 60,
                     "tokenizer_dir": config.tokenizer_dir})
    return run


def test_report_with_model_panels(tiny_run):
    page = write_report(tiny_run, num_images=3)
    text = page.read_text()
    for title in ("Cross-modal attention per sentence", "Does attention find the finding?",
                  "CM-MIR: masked image reconstruction", "Retrieval examples", "CGNS: what the clusters hold"):
        assert title in text, title
    assert "class='error'" not in text, re.findall(r"class='error'>([^<]*)", text)
    sources = re.findall(r'src="([^"]+)"', text)
    assert {"attention.png", "reconstruction.png", "losses.png"} <= set(sources)
    assert json.loads((page.parent / "localisation.json").read_text())["n_sentences"] > 0
    assert sum(s.startswith("retrieval_example_") for s in sources) == 3
    for source in sources:
        assert (page.parent / source).is_file(), source
    assert text.count("<tr class=\"true\">") == 3, "each retrieval example marks its true report once"


def test_localisation_over_the_validation_set(tiny_run):
    result = attention_localisation(tiny_run)
    assert result["n_images"] == len(load_run(tiny_run).dataset)
    assert result["n_sentences"] > 0
    assert 0.0 <= result["hit_rate"] <= 1.0 and 0.0 < result["chance_rate"] < 1.0
    assert 0.0 <= result["sentence_agnostic_hit_rate"] <= 1.0 and 0.0 <= result["peak_on_image_rate"] <= 1.0
    # the oracle patch is the best image-blind map, so it scores at least the model's own mean map
    assert result["best_fixed_patch_hit_rate"] >= result["position_prior_hit_rate"] >= 0.0
    assert result["attention"] == "cross"                                  # the run did not train the grounding term
    grounding = attention_localisation(tiny_run, attention_kind="grounding")
    assert grounding["attention"] == "grounding" and grounding["n_sentences"] == result["n_sentences"]
    assert grounding["chance_rate"] == result["chance_rate"]               # same sentences, same regions
    assert grounding["contrast"] != result["contrast"]                     # but other maps


def test_reconstruction_masks_are_the_ones_used(tiny_run):
    loaded = load_run(tiny_run)
    batch = collate_items(loaded.dataset, [0, 1])
    first, second = reconstruct(loaded.model, batch), reconstruct(loaded.model, batch)
    grid = loaded.model.image_encoder.grid
    assert first["reconstruction"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert first["kept"].shape == (2, *grid)
    assert torch.equal(first["kept"], second["kept"]), "the report draws the same masks each time"
    dropped = 1 - first["kept"].float().mean().item()
    assert 0.1 < dropped < 0.9, dropped  # p = 0.5 of the patch tokens


def oracle_attention(loaded, flip: bool):
    """A local_attention that peaks on the patch at the centre of each sentence's true region (or its mirror
    image when flip=True), and is random elsewhere: the measure must see 1.0 through the whole pipeline."""
    from cgns.viz.truth import load_truth, sentence_regions

    truth, dataset, model = load_truth(loaded.data_root), loaded.dataset, loaded.model
    grid_h, grid_w = model.image_encoder.grid
    original = model.local_attention

    def local_attention(batch, kind="cross"):
        out = original(batch, kind=kind)
        maps = torch.rand_like(out["maps"]) * 0.5                                       # [B, S, h, w]
        for b, index in enumerate(batch["index"].tolist()):
            regions = sentence_regions(dataset.record(index), truth, CACHE_SIZE, IMAGE_SIZE)
            for s, (box, _) in enumerate(regions[:maps.shape[1]]):
                if box is None:
                    continue
                x = (max(box[0], 0) + min(box[2], IMAGE_SIZE)) / 2
                y = (max(box[1], 0) + min(box[3], IMAGE_SIZE)) / 2
                if flip:
                    x, y = IMAGE_SIZE - x, IMAGE_SIZE - y
                row = min(int(y // (IMAGE_SIZE / grid_h)), grid_h - 1)
                col = min(int(x // (IMAGE_SIZE / grid_w)), grid_w - 1)
                maps[b, s, row, col] = 1.0
        return {"maps": maps, "sentence_mask": out["sentence_mask"]}

    return local_attention


def test_localisation_of_an_oracle_and_of_its_mirror(tiny_run):
    loaded = load_run(tiny_run)
    torch.manual_seed(0)
    loaded.model.local_attention = oracle_attention(loaded, flip=False)
    right = attention_localisation(loaded.model, loaded.dataset, data_root=loaded.data_root, cache_size=CACHE_SIZE)
    assert right["hit_rate"] == 1.0 and right["lift"] > 2, right
    loaded.model.local_attention = oracle_attention(loaded, flip=True)
    mirrored = attention_localisation(loaded.model, loaded.dataset, data_root=loaded.data_root,
                                      cache_size=CACHE_SIZE)
    assert mirrored["hit_rate"] < 0.5, mirrored


def test_a_failing_panel_is_shown_not_fatal(tiny_run, tmp_path, monkeypatch):
    import cgns.viz.panels as panels

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(panels, "retrieval_section", broken)
    page = write_report(tiny_run, out_dir=tmp_path / "report", num_images=1)
    text = page.read_text()
    assert "this panel failed: RuntimeError: boom" in text
    assert "attention.png" in text and "reconstruction.png" in text
