"""train_pretrain.py --method M: every peer objective on the shared encoders, data, loop, checkpoints and loading."""
import json

import pytest
import torch

import train_pretrain
from cgns.engine import checkpoint as ckpt
from cgns.engine.methods import PRESETS
from test_pretrain_main import records, run

PEERS = ("convirt", "gloria", "mgca")
TERMS = {"convirt": {"global"}, "gloria": {"global", "local"}, "mgca": {"global", "local", "prototype"}}


@pytest.mark.parametrize("method", PEERS)
def test_every_method_trains_saves_and_loads(test_world, tmp_path, method):
    from cgns import load_model

    metrics = run(test_world, tmp_path, "--method", method, "--max-steps", 3)
    assert metrics["steps"] == 3
    train = records(tmp_path, "train")
    assert [r["step"] for r in train] == [1, 2, 3]
    assert {k.removeprefix("loss/") for k in train[0] if k.startswith("loss/")} == TERMS[method] | {"total"}
    assert all(torch.isfinite(torch.tensor(r["loss/total"])) for r in train)
    written = json.loads((tmp_path / "config.json").read_text())
    # the peer's preset: its objective settings and its loop fields (one stage), explicit flags still win (TINY)
    assert written["model"]["method"] == method
    assert written["model"]["objective"] == PRESETS[method]["demo"]["objective"]
    assert written["loop"]["stage2_epochs"] == 0 and written["loop"]["stage1_epochs"] == 17
    assert written["loop"]["batch_size"] == 8 and written["model"]["image_size"] == 32
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert state["config"]["method"] == method
    assert any(key.startswith("objective.") for key in state["model"])
    # what evaluation and the probes read: the image encoder under image_encoder.*, load_model's embeddings
    from cgns.models.encoders import load_image_encoder
    encoder = load_image_encoder("vit_tiny", 32, checkpoint=tmp_path / "checkpoints" / "latest.pt")
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, state["model"][f"image_encoder.{name}"]), name
    loaded = load_model(tmp_path)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    texts = ["small left pleural effusion", "no acute findings", "mild cardiomegaly"]
    image_vectors, text_vectors = loaded.encode_images(images), loaded.encode_texts(texts)
    assert image_vectors.shape == text_vectors.shape == (3, 128)
    torch.testing.assert_close(image_vectors.norm(dim=1), torch.ones(3))
    with torch.no_grad():
        global_feature = loaded.model.image_encoder(images)["global"]
        expected = loaded.model.objective.image_embedding({"image_global": global_feature})
    torch.testing.assert_close(image_vectors, expected)
    # phrase grounding (python -m cgns.evaluate grounding): the word maps of GLoRIA / MGCA; ConVIRT has none
    from cgns.evaluate import cli
    grounding = cli.main(["grounding", "--checkpoint", str(tmp_path), "--data-root", str(test_world / "mimic_cxr"),
                          "--output-dir", str(tmp_path / "grounding")])
    if method == "convirt":
        with pytest.raises(ValueError, match="ConVIRT learns global embeddings only"):
            loaded.similarity_maps(images, texts)
        assert grounding["test"]["cnr"] is None and "no local features" in grounding["skipped"]
    else:
        maps = loaded.similarity_maps(images, texts)
        assert maps.shape == (3, 2, 2) and torch.isfinite(maps).all()
        torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(3))    # an attention over the patches
        assert grounding["test"]["n"] > 0 and grounding["test"]["cnr"] is not None


def straight_and_resumed(world, out, method, killed_at, steps):
    """`steps` steps straight, and killed after `killed_at` then resumed; asserts the two models are equal ->
    (straight's last checkpoint, the resumed one's, the killed run's model weights)."""
    common = ("--method", method, "--save-every", 100)
    run(world, out / "straight", *common, "--max-steps", steps)
    run(world, out / "killed", *common, "--max-steps", killed_at)
    at_kill = ckpt.load_checkpoint(out / "killed" / "checkpoints" / "latest.pt")["model"]
    run(world, out / "killed", *common, "--max-steps", steps)                   # resumes automatically
    a = ckpt.load_checkpoint(out / "straight" / "checkpoints" / "latest.pt")
    b = ckpt.load_checkpoint(out / "killed" / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == steps
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"{method}: model {key} differs after resume"
    return a, b, at_kill


def test_mgca_resumes_bit_exact_across_the_prototype_unfreezing(test_world, tmp_path):
    """32 training pairs, batch 8: epoch 0 is steps 1-4 (prototypes frozen), epoch 1 steps 5-8 (trained)."""
    a, b, at_3 = straight_and_resumed(test_world, tmp_path, "mgca", killed_at=3, steps=6)   # killed mid epoch 0
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), f"optimizer {index}.{name}"
    # epoch 0 leaves the prototypes where they started (re-normalised), epoch 1 trains them
    at_4 = ckpt.load_checkpoint(tmp_path / "straight" / "checkpoints" / "stage1_best.pt")
    assert at_4["step"] == 4
    prototypes = "objective.prototypes"
    torch.testing.assert_close(at_4["model"][prototypes], at_3[prototypes], atol=1e-6, rtol=0)
    assert (a["model"][prototypes] - at_4["model"][prototypes]).abs().max() > 1e-4
    assert (a["model"]["objective.global_image.first.weight"]
            - at_4["model"]["objective.global_image.first.weight"]).abs().max() > 1e-4


def test_convirt_resumes_bit_exact_with_its_sentence_draws(test_world, tmp_path):
    """ConVIRT draws a sentence per report from the global generator at every step: the checkpoint's RNG states
    make a killed run draw, and so train, exactly as the straight one."""
    straight_and_resumed(test_world, tmp_path, "convirt", killed_at=2, steps=4)


def test_resume_under_another_method_is_refused(test_world, tmp_path):
    run(test_world, tmp_path, "--method", "convirt", "--max-steps", 1)
    with pytest.raises(ValueError, match=r"written by a --method convirt run; this run is --method gloria"):
        run(test_world, tmp_path, "--method", "gloria", "--max-steps", 2)
    with pytest.raises(ValueError, match=r"written by a --method convirt run; this run is --method cgns"):
        run(test_world, tmp_path, "--max-steps", 2)
    # the refused runs left the folder's config.json alone; it runs the same peer again, and cannot switch methods
    # (its objective settings are the peer's)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["method"] == "convirt"
    again = train_pretrain.main(["--config", str(tmp_path / "config.json"), "--output-dir", str(tmp_path / "again")])
    assert again["steps"] == 1
    rewritten = json.loads((tmp_path / "again" / "config.json").read_text())
    assert rewritten["model"] == json.loads((tmp_path / "config.json").read_text())["model"]
    with pytest.raises(ValueError, match=r"--method mgca: the objective settings .* are not mgca's"):
        train_pretrain.main(["--config", str(tmp_path / "config.json"), "--method", "mgca",
                             "--output-dir", str(tmp_path / "other")])


def test_peer_presets_and_explicit_flags():
    """--method takes the peer's preset fields; a flag given explicitly wins; --method cgns is the plain preset."""
    from cgns.engine.pretrain_config import PRESETS as RUN_PRESETS

    plain, _ = train_pretrain.parse_args([])
    same, _ = train_pretrain.parse_args(["--method", "cgns"])
    assert plain == same == RUN_PRESETS["demo"]
    paper, _ = train_pretrain.parse_args(["--config", "paper", "--method", "gloria"])
    assert paper.loop.clip_grad == 0.25 and paper.loop.lr == 5e-5 and paper.model.embed_dim == 768
    assert paper.model.objective == PRESETS["gloria"]["paper"]["objective"]
    given, _ = train_pretrain.parse_args(["--method", "convirt", "--stage1-epochs", "2", "--embed-dim", "64"])
    assert given.loop.stage1_epochs == 2 and given.loop.stage2_epochs == 0 and given.model.embed_dim == 64
    with pytest.raises(SystemExit):
        train_pretrain.parse_args(["--method", "clip"])


@pytest.mark.parametrize("flags, named", [(["--no-cgns"], "--no-cgns"),
                                          (["--local-text-weight", "0.5"], "--local-text-weight"),
                                          (["--mask-ratio", "0.5", "--mir-masking", "input"], "--mir-masking"),
                                          (["--num-clusters", "8", "--no-mir"], "--no-mir, --num-clusters")])
def test_cgns_flags_under_a_peer_are_refused(flags, named):
    """CM-CGNS's own flags with a peer's --method stop with the flags named (the peer would ignore them); the
    flags a peer reads (encoders, masking) and every flag under --method cgns pass."""
    with pytest.raises(SystemExit, match=f"--method gloria does not use {named}: CM-CGNS's settings"):
        train_pretrain.parse_args(["--method", "gloria", *flags])
    cgns, _ = train_pretrain.parse_args(["--method", "cgns", *flags])
    assert cgns.model.method == "cgns"
    peer, _ = train_pretrain.parse_args(["--method", "gloria", "--mask-ratio", "0.5", "--embed-dim", "64"])
    assert peer.model.mask_ratio == 0.5 and peer.model.embed_dim == 64


def test_peer_export_round_trip(test_world, tmp_path):
    """python -m cgns.export on an MGCA run (batch-norm running statistics, prototypes) loads back to the same
    embeddings and maps."""
    from cgns import load_model
    from cgns.export import main as export

    run(test_world, tmp_path / "run", "--method", "mgca", "--max-steps", 2)
    export([str(tmp_path / "run"), "--out", str(tmp_path / "exported")])
    original, exported = load_model(tmp_path / "run"), load_model(tmp_path / "exported")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    texts = ["left basal opacity", "heart size is normal"]
    assert torch.equal(original.encode_images(images), exported.encode_images(images))
    assert torch.equal(original.encode_texts(texts), exported.encode_texts(texts))
    assert torch.equal(original.similarity_maps(images, texts), exported.similarity_maps(images, texts))
    fresh = load_model(tmp_path / "exported", random_init=True)
    assert not torch.equal(fresh.encode_images(images), exported.encode_images(images))


def test_peer_with_input_masking_encodes_only_the_kept_patches(test_world, tmp_path):
    """--mask-ratio with a peer: the objective sees the kept patch tokens in training (GLoRIA's local loss on 2 of
    the 4 patches at 32 px), whole images in evaluation."""
    from cgns.models.peer import PeerModel

    seen = []
    real = PeerModel.image_inputs

    def spy(self, images, keep_index=None):
        inputs = real(self, images, keep_index)
        seen.append((self.training, inputs["patches"].shape[1]))
        return inputs

    PeerModel.image_inputs = spy
    try:
        metrics = run(test_world, tmp_path, "--method", "gloria", "--mask-ratio", 0.5, "--max-steps", 2)
    finally:
        PeerModel.image_inputs = real
    assert metrics["steps"] == 2
    assert {n for training, n in seen if training} == {2} and {n for training, n in seen if not training} == {4}
