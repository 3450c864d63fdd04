import os

import pytest
import torch

from cgns.engine import checkpoint as ckpt


def test_save_is_atomic_when_the_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "latest.pt"
    ckpt.save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 1})

    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes part of the file, then the process "dies"
        f.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "step": 2})
    monkeypatch.setattr(torch, "save", real_save)
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert os.listdir(path.parent) == ["latest.pt"]  # no temp file left behind


def test_find_resume(tmp_path):
    assert ckpt.find_resume(tmp_path) is None
    assert ckpt.find_resume(None) is None
    ckpt.save_checkpoint(ckpt.checkpoint_dir(tmp_path) / ckpt.LATEST, {"model": {}})
    assert ckpt.find_resume(tmp_path) == tmp_path / "checkpoints" / "latest.pt"


def test_load_rejects_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        ckpt.load_checkpoint(bad)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="'model'"):
        ckpt.load_checkpoint(tmp_path / "other.pt")


def test_mismatch_names_every_field():
    saved = {"image_encoder": "vit_tiny", "proj_dim": 32, "crop": [128, 128]}
    now = {"image_encoder": "resnet50", "proj_dim": 32, "crop": (128, 128)}
    with pytest.raises(ValueError) as err:
        ckpt.check_compatible("x.pt", saved, now, "model configuration")
    message = str(err.value)
    assert "image_encoder: checkpoint='vit_tiny', now='resnet50'" in message
    assert "proj_dim" not in message and "crop" not in message  # equal fields (list vs tuple) are not named
    ckpt.check_compatible("x.pt", saved, dict(saved), "model configuration")  # equal: accepted


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    from cgns.io import atomic_directory
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert [p.name for p in out.iterdir()] == ["old.txt"] and len(list(tmp_path.iterdir())) == 1   # temp removed
    with atomic_directory(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and len(list(tmp_path.iterdir())) == 1
