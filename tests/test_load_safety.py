"""Loading never runs code: a pickle whose __reduce__ calls a function (here one that writes a marker file) is
refused by every entry point that takes a checkpoint or a weights file, with an error naming the file, and the
function never runs. The first test shows that the crafted file does run it when loaded unsafely (the guard that
the others can fail)."""
import pickle
import zipfile

import pytest
import torch

import train_detect
import train_linear
import train_pretrain
import train_seg
from cgns.engine.checkpoint import UnsafeFileError, load_checkpoint

REFUSED = r"refused: it carries code or objects that are not plain data"


def write_marker(path):
    """The payload: harmless, but proof that unpickling called it."""
    with open(path, "w") as handle:
        handle.write("this ran while the file was loaded\n")


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return write_marker, (self.marker,)


def craft(path, marker, wrap=lambda payload: {"model": {"weight": payload}, "config": {}}):
    """A torch.save file at `path` holding the payload inside an otherwise plausible dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(Payload(marker)), path)
    return path


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "MARKER"
    return craft(tmp_path / "evil" / "model.pt", marker), marker


def refused(call, path, marker):
    with pytest.raises(UnsafeFileError, match=REFUSED) as err:
        call()
    assert str(path) in str(err.value)
    assert not marker.exists(), "the payload ran"


def test_the_crafted_file_does_run_code_when_loaded_unsafely(evil):
    """Plain unpickling of the file's pickle (what torch.load(weights_only=False) does) calls the payload."""
    path, marker = evil
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(name for name in archive.namelist() if name.endswith("/data.pkl")))
    pickle.loads(data)
    assert marker.exists()


def test_the_checkpoint_loader(evil):
    path, marker = evil
    refused(lambda: load_checkpoint(path), path, marker)


@pytest.mark.parametrize("script", [train_linear, train_detect, train_seg], ids=["linear", "detect", "seg"])
@pytest.mark.parametrize("flag", ["--checkpoint", "--image-weights"])
def test_downstream_entry_points(script, flag, evil, tmp_path):
    path, marker = evil
    dataset = {train_linear: "chexpert", train_detect: "rsna", train_seg: "siim"}[script]
    argv = ["--dataset", dataset, flag, str(path), "--output-dir", str(tmp_path / "out")]
    if flag == "--image-weights":
        argv += ["--image-encoder", "vit_tiny", "--image-size", "32"]
    refused(lambda: script.main(argv), path, marker)
    assert not (tmp_path / "out" / "metrics.json").exists()


PRETRAIN = ["--image-size", "32", "--batch-size", "8", "--no-progress", "--no-report", "--no-linear-eval",
            "--max-steps", "1"]


def test_pretraining_resume_from_an_output_dir(test_world, tmp_path):
    marker = tmp_path / "MARKER"
    out = tmp_path / "run"
    latest = craft(out / "checkpoints" / "latest.pt", marker)
    argv = ["--data-root", str(test_world / "mimic_cxr"), "--output-dir", str(out), *PRETRAIN]
    refused(lambda: train_pretrain.main(argv), latest, marker)
    # and through --checkpoint, and a crafted --image-weights file
    refused(lambda: train_pretrain.main(argv + ["--checkpoint", str(latest)]), latest, marker)
    weights = craft(tmp_path / "weights.pt", marker, wrap=lambda payload: {"cls_token": payload})
    refused(lambda: train_pretrain.main(["--data-root", str(test_world / "mimic_cxr"), "--output-dir",
                                         str(tmp_path / "fresh"), "--image-weights", str(weights), *PRETRAIN]),
            weights, marker)


def test_model_api_export_and_viz(evil, tmp_path):
    from cgns import load_model
    from cgns.export import main as export
    from cgns.viz.__main__ import main as viz

    path, marker = evil
    refused(lambda: load_model(path), path, marker)
    refused(lambda: load_model(path, random_init=True), path, marker)
    run = tmp_path / "run"
    final = craft(run / "checkpoints" / "final.pt", marker)
    refused(lambda: load_model(run), final, marker)
    refused(lambda: export([str(path), "--out", str(tmp_path / "exported")]), path, marker)
    assert not (tmp_path / "exported").exists()
    refused(lambda: viz([str(run), "--localisation-only"]), final, marker)


def test_feature_cache_entries(tmp_path):
    from cgns.engine.features import cache_key, cached_features

    marker = tmp_path / "MARKER"
    spec = {"dataset": "chexpert", "split": "train"}
    entry = tmp_path / "cache" / f"chexpert_train_{cache_key('hash', {**spec, 'views': 1})}.pt"
    craft(entry, marker, wrap=lambda payload: {"features": payload, "labels": torch.zeros(1)})

    def never_built():
        raise AssertionError("the planted cache entry should have been read, not rebuilt")

    refused(lambda: cached_features(torch.nn.Identity(), never_built, "cls", spec, cache_dir=tmp_path / "cache",
                                    encoder_hash="hash", log=lambda *a: None), entry, marker)


def test_a_text_encoder_folder_with_a_pickled_weight_file(tmp_path):
    """--text-encoder FOLDER: transformers reads a pytorch_model.bin with weights_only=True too."""
    from transformers import BertConfig

    from cgns.models.text import TextEncoder

    folder, marker = tmp_path / "bert", tmp_path / "MARKER"
    BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=16).save_pretrained(str(folder))
    craft(folder / "pytorch_model.bin", marker, wrap=lambda payload: {"embeddings.word_embeddings.weight": payload})
    with pytest.raises(Exception) as err:
        TextEncoder(str(folder))
    assert "weights_only" in str(err.value) or "Unsupported global" in str(err.value), err.value
    assert not marker.exists()


def test_old_checkpoints_numpy_rng_state_still_loads_and_restores(tmp_path):
    """Checkpoints written before the RNG states were tensors hold numpy's state as an array: still read (arrays
    are plain data), and restored exactly."""
    import random

    import numpy as np

    from cgns.distributed import rng_state, set_rng_state

    np.random.seed(11)
    random.seed(12)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"model": {}, "rng": [old]}, tmp_path / "old.pt")
    expected = (np.random.rand(3), random.random())
    state = load_checkpoint(tmp_path / "old.pt")
    set_rng_state(state["rng"][0])
    assert np.array_equal(np.random.rand(3), expected[0]) and random.random() == expected[1]
    # the current form: tensors and plain numbers, loaded without the numpy allowance
    np.random.seed(13)
    np.random.standard_normal()     # leaves a cached Gaussian in numpy's state
    random.gauss(0, 1)              # and in python's
    saved = rng_state()
    torch.save({"model": {}, "rng": [saved]}, tmp_path / "new.pt")
    torch.load(tmp_path / "new.pt", weights_only=True)
    expected = (np.random.standard_normal(), random.gauss(0, 1), np.random.rand(2), random.random())
    np.random.seed(0)
    random.seed(0)
    set_rng_state(load_checkpoint(tmp_path / "new.pt")["rng"][0])
    got = (np.random.standard_normal(), random.gauss(0, 1), np.random.rand(2), random.random())
    assert got[0] == expected[0] and got[1] == expected[1] and np.array_equal(got[2], expected[2])
    assert got[3] == expected[3]
