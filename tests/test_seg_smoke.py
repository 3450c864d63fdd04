"""End to end: `train_seg.py` main([...]) on generated SIIM-format data; the decoder learns the pneumothorax.

The session `test_world` holds 32 SIIM images (a validation split without positives), so this module generates
120 images with the same generator (64 px).
"""
import json

import pytest

import train_seg
from cgns.synthetic import generate


@pytest.fixture(scope="module")
def siim_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("seg_world"), datasets=["siim"], preset="test", seed=1,
                    counts={"siim": 120}) / "siim"


def test_unet_on_frozen_encoder_finds_the_pneumothorax(siim_root, tmp_path, capsys):
    train_seg.main(["--dataset", "siim", "--data-root", str(siim_root), "--random-init", "--image-encoder",
                    "resnet50", "--image-size", "64", "--epochs", "6", "--batch-size", "8", "--lr", "1e-3",
                    "--decoder-width", "small", "--overlays", "2", "--output-dir", str(tmp_path)])
    assert "siim  test dice (%)  100%:" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) >= {"1", "val", "test"}
    test = metrics["test"]
    assert test["num_positive"] >= 3
    # learned: the decoder ranks pneumothorax pixels above the rest (threshold-free; a constant map scores 0.5).
    # The thresholded Dice of so short a run is not asserted: 0.69-0.89 over the runs below, around an empty baseline
    # of 0.72. (Before the demo preset's whitening sweep, at lr 2e-3, the epoch kept by validation Dice could be one
    # in a swing into false positives: AUROC 0.771 test / 0.661 val.)
    # test: min 0.982 over driver seeds 42, 0-3, 1/2 threads, torch 2.13.0/2.14.1; threshold 0.85
    assert test["pixel_auroc"] > 0.85
    # val: min 0.980 over driver seeds 42, 0-3, 1/2 threads, torch 2.13.0/2.14.1; threshold 0.85
    assert metrics["val"]["pixel_auroc"] > 0.85
    assert 0.0 <= test["dice"] <= 1.0 and test["empty_baseline"] == pytest.approx(1 - test["num_positive"] / 18)
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 2
