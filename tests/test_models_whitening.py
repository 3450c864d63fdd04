"""Fixed whitening of frozen encoder maps (cgns.models.whitening) and its use by the dense heads."""
import math

import pytest
import torch

from cgns.models.whitening import MapWhitening, fit_map_moments, parse_shrinkage, shrinkage_label


def correlated_maps(generator, batches=6, batch=4, channels=(8, 5), size=(6, 5)):
    """Map lists whose channels are strongly correlated and offset (eigenvalues spread over ~3 decades, above the
    floor)."""
    # a random rotation times fixed scales: eigenvalues are exactly the squared scales (1 down to 1e-3)
    mixes = [torch.linalg.qr(torch.randn(c, c, generator=generator))[0] * torch.logspace(0, -1.5, c)[None, :]
             for c in channels]
    offsets = [torch.randn(c, generator=generator) * 3 for c in channels]
    out = []
    for _ in range(batches):
        out.append([torch.einsum("dc,bchw->bdhw", mix, torch.randn(batch, c, *size, generator=generator))
                    + offset[:, None, None] for mix, offset, c in zip(mixes, offsets, channels)])
    return out


def pooled(maps_list, i):
    """All positions of map i as rows [N, C]."""
    return torch.cat([maps[i].transpose(0, 1).reshape(maps[i].shape[1], -1).T for maps in maps_list]).double()


def test_full_whitening_gives_zero_mean_and_identity_covariance():
    g = torch.Generator().manual_seed(0)
    data = correlated_maps(g)
    whitening = MapWhitening([8, 5]).fit(iter(data), shrinkage=0.0)
    out = [whitening(maps) for maps in data]
    for i, c in enumerate((8, 5)):
        rows = pooled(out, i)
        assert rows.mean(0).abs().max() < 1e-4
        cov = torch.cov(rows.T, correction=0)
        assert torch.allclose(cov, torch.eye(c, dtype=cov.dtype), atol=1e-3), cov
        # before: far from isotropic, so the test can fail
        raw = torch.linalg.eigvalsh(torch.cov(pooled(data, i).T, correction=0))
        assert raw.max() / raw.min() > 100


def test_shrinkage_lifts_small_directions_only_partly():
    """In the covariance's eigenbasis the whitened variance is e / (e + s * mean(e)) (e above the floor)."""
    g = torch.Generator().manual_seed(1)
    data = correlated_maps(g, channels=(6,))
    shrinkage = 0.5
    whitening = fit_map_moments([6], iter(data), lambda maps: maps).whitening(shrinkage)
    raw = torch.cov(pooled(data, 0).T, correction=0)
    e = torch.linalg.eigvalsh(raw)
    expected = torch.sort(e / (e + shrinkage * e.mean())).values
    got = torch.sort(torch.linalg.eigvalsh(torch.cov(pooled([whitening(m) for m in data], 0).T, correction=0))).values
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-5), (got, expected)
    assert got.max() / got.min() < e.max() / e.min() / 5   # measured 98 against 949


def test_whitening_is_invertible_so_a_linear_head_loses_nothing():
    """matrix is symmetric positive definite: head(W(x - m)) can express any affine head of x."""
    g = torch.Generator().manual_seed(2)
    whitening = MapWhitening([8]).fit(iter(correlated_maps(g, channels=(8,))), 0.0)
    matrix = whitening.matrix_0.double()
    assert torch.allclose(matrix, matrix.T, atol=1e-8)
    assert torch.linalg.eigvalsh(matrix).min() > 0
    x = torch.randn(2, 8, 3, 3, generator=g)
    back = torch.einsum("dc,bchw->bdhw", torch.linalg.inv(matrix).float(), whitening([x])[0])
    assert torch.allclose(back + whitening.mean_0[:, None, None], x, atol=1e-3)


def test_fit_refuses_too_little_or_constant_data():
    with pytest.raises(ValueError, match="at least 2"):
        MapWhitening([3]).fit(iter([[torch.randn(1, 3, 1, 1)]]), 0.0)
    with pytest.raises(ValueError, match="constant"):
        MapWhitening([3]).fit(iter([[torch.ones(2, 3, 2, 2)]]), 0.0)
    with pytest.raises(ValueError, match="2 maps"):
        MapWhitening([3])([torch.zeros(1, 3, 1, 1)] * 2)


def test_parse_shrinkage():
    assert parse_shrinkage("off") is None and parse_shrinkage("None") is None
    assert parse_shrinkage("0") == 0.0 and parse_shrinkage("0.1") == pytest.approx(0.1)
    for bad in ("-1", "nan", "lots"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_shrinkage(bad)
    assert [shrinkage_label(s) for s in (None, 0.0, 0.1)] == ["off", "0", "0.1"]


def test_whitening_needs_a_frozen_encoder():
    from cgns.models.encoders import build_image_encoder
    from cgns.models.unet import SegmentationModel, build_unet
    from cgns.models.yolov3 import build_yolov3

    encoder = build_image_encoder("vit_tiny", 32)
    whitening = MapWhitening(encoder.pyramid_channels)
    with pytest.raises(ValueError, match="fine-tuning"):
        SegmentationModel(encoder, build_unet(encoder, width="small"), finetune=True, whitening=whitening)
    with pytest.raises(ValueError, match="fine-tuning"):
        build_yolov3(encoder, image_size=32, width=16, freeze_encoder=False, whitening=MapWhitening([192]))


def test_segmentation_picks_the_candidate_with_the_best_validation_dice(test_world):
    from cgns.engine.downstream import configure, run_downstream
    from cgns.engine.segment import DEMO, SEGMENTATION

    def run_segmentation(**values):
        config = configure(DEMO, dataset="siim", data_root=str(test_world / "siim"), image_encoder="vit_tiny",
                           image_size=64, random_init=True, device="cpu", **values)
        return run_downstream(SEGMENTATION, config, log=logs.append)

    logs = []
    result = run_segmentation(epochs=1, batch_size=8, decoder_width="small", whiten_shrinkage=(None, 0.0),
                              overlays=0)["1"]
    tried = result["whitening"]["val_dice"]
    assert set(tried) == {"off", "0"}
    assert tried[result["whitening"]["chosen"]] == max(tried.values())   # ties: the lower validation loss
    assert result["val"]["dice"] == pytest.approx(tried[result["whitening"]["chosen"]], abs=1e-6)
    assert any("whitening: validation dice off" in line for line in logs)
    with pytest.raises(ValueError, match="frozen encoder"):
        run_segmentation(finetune=True, whiten_shrinkage=(0.0,))


def test_detection_whitening_is_fitted_the_same_from_cached_maps_and_from_images(test_world):
    """The head trains on whitened maps either way: streamed images and the feature cache give one result."""
    from cgns.engine.detect import DEMO, DETECTION
    from cgns.engine.downstream import configure, run_downstream

    def run_detection(**values):
        config = configure(DEMO, dataset="rsna", data_root=str(test_world / "rsna"), image_encoder="vit_tiny",
                           image_size=64, random_init=True, epochs=2, batch_size=8, head_width=16, lr=3e-3,
                           conf_thresh=0.001, device="cpu", **values)
        return run_downstream(DETECTION, config, log=lambda *a: None)

    runs = [run_detection(feature_cache_gb=budget, whiten_shrinkage=(0.1,))["1"] for budget in (0.0, 2.0)]
    streamed, cached = runs
    assert streamed["whitening"]["chosen"] == cached["whitening"]["chosen"] == "0.1"
    assert abs(streamed["train"]["last_epoch_loss"] - cached["train"]["last_epoch_loss"]) < 1e-4
    assert abs(streamed["test"]["loss"] - cached["test"]["loss"]) < 1e-4
    plain = run_detection()["1"]
    # whitening changes what the head sees: the losses move (else this test could not fail)
    assert not math.isclose(plain["train"]["last_epoch_loss"], cached["train"]["last_epoch_loss"], rel_tol=1e-3)


def test_cli_flag_parses_candidates_and_names_a_bad_value(capsys):
    from cgns.engine.detect import DETECTION
    from cgns.engine.segment import SEGMENTATION

    for task in (SEGMENTATION, DETECTION):
        config = task.parse(["--dataset", "rsna", "--whiten-shrinkage", "off", "0", "0.1"])
        assert config.task.whiten_shrinkage == (None, 0.0, 0.1)
        assert task.parse(["--config", "paper", "--dataset", "rsna"]).task.whiten_shrinkage == (None,)   # the protocol
        with pytest.raises(SystemExit):
            task.parse(["--dataset", "rsna", "--whiten-shrinkage", "-0.5"])
        assert "'-0.5'" in capsys.readouterr().err


def test_resnet_pyramids_whiten_for_both_heads():
    """ResNet-50: five U-Net maps (stem .. layer4) and three YOLOv3 maps (layers 2-4), each whitened."""
    from cgns.models.encoders import build_image_encoder
    from cgns.models.unet import SegmentationModel, build_unet
    from cgns.models.yolov3 import build_yolov3

    torch.manual_seed(0)
    encoder = build_image_encoder("resnet50", 64).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        pyramid = encoder.feature_pyramid(images)
    seg_whitening = MapWhitening(encoder.pyramid_channels).fit(iter([pyramid]), 0.1)
    model = SegmentationModel(encoder, build_unet(encoder, width="small"), whitening=seg_whitening).eval()
    assert model(images).shape == (4, 1, 64, 64)
    detector = build_yolov3(encoder, image_size=64, width=16).eval()
    assert detector.encoded_channels == [512, 1024, 2048]
    with torch.no_grad():
        detector.whitening = MapWhitening(detector.encoded_channels).fit(iter([detector.encode(images)]), 0.1)
        assert [tuple(r.shape[2:4]) for r in detector(images)] == [(8, 8), (4, 4), (2, 2)]
        whitened = detector.whitening(detector.encode(images))
    assert whitened[0].mean(dim=(0, 2, 3)).abs().max() < 1e-3


def test_sweep_reads_the_training_maps_once_for_every_shrinkage():
    """fit_moments (the pass over the training split) runs once however many candidates whiten, never for 'off';
    each candidate's head gets the whitening of its own shrinkage, and the best key wins."""
    from cgns.engine.features import sweep_whitening
    from cgns.models.whitening import MapMoments

    g = torch.Generator().manual_seed(3)
    data = correlated_maps(g, channels=(6,))
    passes, seen = [], []

    def fit_moments():
        passes.append(1)
        return MapMoments([6], iter(data))

    def train_head(whitening):
        seen.append(None if whitening is None else whitening.matrix_0.clone())
        score = 0.0 if whitening is None else float(whitening.matrix_0.trace())
        return object(), {}, {"dice": score}, (score,)

    logs = []
    _, _, chosen, tried, spectrum = sweep_whitening([None, 0.0, 0.1, 1.0], fit_moments, train_head, "dice",
                                                    log=logs.append)
    assert len(passes) == 1 and seen[0] is None
    assert spectrum == MapMoments([6], iter(data)).spectrum()          # the training maps' spectrum, logged once
    assert sum("effective rank" in line for line in logs) == 1
    for shrinkage, matrix in zip((0.0, 0.1, 1.0), seen[1:]):
        assert torch.allclose(matrix, MapWhitening([6]).fit(iter(data), shrinkage).matrix_0)
    assert chosen == 0.0 and set(tried) == {"off", "0", "0.1", "1"}    # full whitening has the largest trace
    passes.clear()
    assert sweep_whitening([None], fit_moments, train_head, "dice", log=lambda *a: None)[4] is None
    assert not passes


def test_spectrum_reports_known_eigenvalues():
    """Channels with independent variances e = 100, 10, 1, ... : top share, e1/e_k and participation ratio as
    computed by hand; isotropic maps give share k/C, ratio ~1 and effective rank ~C (so the measure can tell)."""
    from cgns.models.whitening import MapMoments, describe_spectrum

    g = torch.Generator().manual_seed(4)
    variances = torch.tensor([100.0, 10.0, 1.0, 1.0, 0.5, 0.5])
    # exact second moments: +-sqrt(e) along each axis, every sign pattern (the covariance is exactly diag(e))
    signs = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0])] * 6)                 # [64, 6]
    maps = (signs * variances.sqrt()).T.reshape(1, 6, 8, 8)
    s = MapMoments([6], iter([[maps]])).spectrum(top=2, rank=4)[0]
    e = variances.double()
    assert s["channels"] == 6 and s["top"] == 2 and s["rank"] == 4
    assert s["top_share"] == pytest.approx(float(e[:2].sum() / e.sum()), rel=1e-6)
    assert s["eigen_ratio"] == pytest.approx(100.0, rel=1e-6)
    assert s["effective_rank"] == pytest.approx(float(e.sum() ** 2 / (e ** 2).sum()), rel=1e-6)
    assert s["effective_rank"] < 1.3
    iso = MapMoments([6], iter([[torch.randn(64, 6, 8, 8, generator=g)]])).spectrum(top=2, rank=4)[0]
    assert iso["top_share"] == pytest.approx(2 / 6, abs=0.02) and iso["eigen_ratio"] < 1.1
    assert iso["effective_rank"] > 5.9
    assert describe_spectrum([s]).startswith("map 0 (6 ch): top-2 share 0.97, e1/e4 100, effective rank 1.3")
