"""cgns.load_model on a tiny pretraining run: its preprocessing, tokenisation and embeddings are the pretraining ones
(compared with the pretraining dataset and model on the same studies), chunking changes nothing, maps are per patch."""
import pytest
import torch
from PIL import Image

import train_pretrain
from cgns import load_model
from cgns.data.datasets import build
from cgns.engine import checkpoint as ckpt

TINY = ["--image-size", "32", "--batch-size", "8", "--no-progress", "--no-report", "--no-linear-eval",
        "--stage1-epochs", "1", "--stage2-epochs", "0", "--max-steps", "2", "--num-clusters", "4"]


def pretrain_tiny(world, out, *extra):
    """A two-step demo-preset run (vit_tiny at 32 px, random BERT): out/checkpoints/latest.pt in about a second."""
    train_pretrain.main(["--data-root", str(world / "mimic_cxr"), "--output-dir", str(out), *TINY, *extra])
    return out


@pytest.fixture(scope="module")
def run_dir(test_world, tmp_path_factory):
    return pretrain_tiny(test_world, tmp_path_factory.mktemp("api_run"))


@pytest.fixture(scope="module")
def valid_set(test_world, run_dir):
    """The run's validation split exactly as pretraining builds it (eval transform, the run's tokenizer)."""
    state = ckpt.load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    return build("pretrain", "mimic_cxr", "valid", data_root=test_world / "mimic_cxr", image_size=32,
                 tokenizer=state["tokenizer_dir"], max_length=state["config"]["max_length"])


def test_preprocess_and_encode_images_are_the_pretraining_ones(run_dir, valid_set, test_world):
    model = load_model(run_dir)
    assert model.image_size == 32 and model.patch_grid == (2, 2) and model.config.image_encoder == "vit_tiny"
    root = test_world / "mimic_cxr"
    paths = [root / valid_set.record(i)["path"] for i in range(len(valid_set))]
    expected = torch.stack([valid_set[i]["image"] for i in range(len(valid_set))])    # [B,3,32,32]
    # the image file through preprocess = the cached, centre-cropped image the run validated on
    assert torch.equal(torch.stack([model.preprocess(p) for p in paths]), expected)
    from_tensor = model.encode_images(expected)
    with torch.no_grad():
        reference = model.model.encode_image(expected)
    torch.testing.assert_close(from_tensor, reference, rtol=0, atol=1e-6)
    pil = [Image.open(p) for p in paths]
    torch.testing.assert_close(model.encode_images(pil), from_tensor, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.encode_images([str(p) for p in paths]), from_tensor, rtol=0, atol=1e-6)
    torch.testing.assert_close(from_tensor.norm(dim=1), torch.ones(len(paths)), rtol=0, atol=1e-5)
    model.batch_size = 2                                         # chunked: the same numbers
    torch.testing.assert_close(model.encode_images(pil), from_tensor, rtol=0, atol=1e-6)
    assert model.encode_images([]).shape == (0, model.config.embed_dim)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.encode_images(expected[0])


def test_encode_texts_is_the_pretraining_tokenisation_and_model(run_dir, valid_set, test_world):
    model = load_model(run_dir / "checkpoints" / "latest.pt", batch_size=3)
    items = [valid_set[i] for i in range(len(valid_set))]
    reports = [item["report"] for item in items]
    tokens = model.tokenize(reports)
    for key in ("input_ids", "attention_mask", "sentence_index"):
        assert torch.equal(tokens[key], torch.stack([item[key] for item in items])), key
    with torch.no_grad():
        reference = model.model.encode_text(tokens["input_ids"], tokens["attention_mask"], tokens["sentence_index"])
    embeddings = model.encode_texts(reports)
    torch.testing.assert_close(embeddings, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(len(reports)), rtol=0, atol=1e-5)
    # a raw report file, parsed as the MIMIC-CXR reader parses it (IMPRESSION then FINDINGS)
    record = valid_set.record(0)
    raw = next((test_world / "mimic_cxr" / "reports").rglob(f"s{record['study']}.txt")).read_text()
    assert model.text_sentences(raw, report=True) == record["sentences"]
    torch.testing.assert_close(model.encode_texts([raw], report=True), embeddings[:1], rtol=0, atol=1e-6)
    # prompts: one sentence each, a single word kept whole
    assert model.text_sentences("Small LEFT pleural effusion.") == ["small left pleural effusion"]
    assert model.text_sentences("Effusion") == ["effusion"]
    with pytest.raises(ValueError, match="text 1"):
        model.encode_texts(["no effusion", "  "])
    with pytest.raises(TypeError, match="list of str"):
        model.encode_texts("no effusion")


def test_similarity_maps_average_each_texts_sentence_maps(run_dir, valid_set):
    model = load_model(run_dir, batch_size=2)
    count = len(valid_set)
    images = torch.stack([valid_set[i]["image"] for i in range(count)])
    texts = ["heart is enlarged. small right effusion", "no pneumothorax", "left lower lobe opacity",
             "lungs are clear. no effusion. heart normal", "cardiomegaly"][:count]
    maps = model.similarity_maps(images, texts)
    assert maps.shape == (count, *model.patch_grid) and maps.dtype == torch.float32
    for i in range(count):                                     # reference: one pair at a time, by hand
        tokens = model.tokenize([texts[i]])
        attention = model.model.local_attention({"image": images[i:i + 1], **tokens}, kind="grounding")
        per_sentence = attention["maps"][0][attention["sentence_mask"][0]]                   # [S_i, gh, gw]
        assert len(per_sentence) == len(model.text_sentences(texts[i]))
        torch.testing.assert_close(maps[i], per_sentence.mean(dim=0), rtol=0, atol=1e-6)
    assert not torch.allclose(maps[0], maps[1])
    cross = model.similarity_maps(images, texts, kind="cross")
    assert cross.shape == maps.shape and not torch.allclose(cross, maps)
    with pytest.raises(ValueError, match="pairs text i with image i"):
        model.similarity_maps(images, texts[:-1])


def test_random_init_is_seeded_and_leaves_the_global_rng_alone(run_dir):
    trained = load_model(run_dir)
    before = torch.get_rng_state()
    first, again = load_model(run_dir, random_init=True, seed=3), load_model(run_dir, random_init=True, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    text = ["no pleural effusion"]
    torch.testing.assert_close(first.encode_texts(text), again.encode_texts(text), rtol=0, atol=0)
    assert not torch.allclose(first.encode_texts(text), trained.encode_texts(text), atol=1e-3)
    other = load_model(run_dir, random_init=True, seed=4)
    assert not torch.allclose(first.encode_texts(text), other.encode_texts(text), atol=1e-3)
    # from a configuration alone (the tokenizer folder comes with it)
    alone = load_model(None, random_init=True, config=trained.config.to_dict(), seed=3)
    torch.testing.assert_close(alone.encode_texts(text), first.encode_texts(text), rtol=0, atol=0)


def test_bad_paths_are_named(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_model(tmp_path / "nothing.pt")
    with pytest.raises(FileNotFoundError, match="neither an exported model nor a run folder|run folder"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="random_init"):
        load_model(None)
    # a checkpoint whose tokenizer folder is gone: named, and tokenizer= supplies it
    state = ckpt.load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    folder = state["tokenizer_dir"]
    moved = ckpt.save_checkpoint(tmp_path / "moved.pt", {**state, "tokenizer_dir": str(tmp_path / "gone"),
                                                         "config": {**state["config"], "tokenizer_dir": None}})
    with pytest.raises(FileNotFoundError, match="tokenizer folder .*gone"):
        load_model(moved)
    assert load_model(moved, tokenizer=folder).encode_texts(["no effusion"]).shape == (1, state["config"]["embed_dim"])
