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


def test_a_field_the_checkpoint_predates_counts_as_its_default():
    from dataclasses import dataclass, field

    @dataclass
    class Config:
        width: int = 8
        mask_ratio: float = 0.0
        crops: list = field(default_factory=lambda: [64, 64])
        name: str = "x"

    defaults = ckpt.config_defaults(Config)
    assert defaults == {"width": 8, "mask_ratio": 0.0, "crops": [64, 64], "name": "x"}
    assert ckpt.config_defaults(Config(width=3)) == defaults and ckpt.config_defaults(None) == {}
    saved = {"width": 8, "name": "x"}                                     # written before mask_ratio and crops
    ckpt.check_compatible("x.pt", saved, {"width": 8, "mask_ratio": 0.0, "crops": (64, 64), "name": "x"}, "model",
                          defaults=defaults)                              # at their defaults: accepted
    with pytest.raises(ValueError) as err:
        ckpt.check_compatible("x.pt", saved, {"width": 8, "mask_ratio": 0.5, "crops": [64, 64], "name": "x"},
                              "model", defaults=defaults)
    message = str(err.value)
    assert ("mask_ratio: checkpoint=<absent: written before the field existed, so trained with its default 0.0>, "
            "now=0.5") in message and "crops" not in message and "width" not in message
    with pytest.raises(ValueError, match=r"mask_ratio: checkpoint=<absent>, now=0.0"):   # no defaults: refused
        ckpt.check_compatible("x.pt", saved, {"width": 8, "mask_ratio": 0.0, "name": "x"}, "model")
    with pytest.raises(ValueError, match=r"extra: checkpoint=<absent>, now=1"):       # no default known: refused
        ckpt.check_compatible("x.pt", saved, {**saved, "extra": 1}, "model", defaults=defaults)


@pytest.mark.parametrize("now", [{}, {"mask_ratio": 0.5, "mir_masking": "input"}], ids=["defaults", "changed"])
def test_the_trainer_resumes_a_checkpoint_written_before_fields_existed(tmp_path, now):
    """An old checkpoint (its model config without the masking fields, its loop without stage2_init) resumes when
    those fields are at their defaults now, and is refused, naming them, when they are not."""
    from cgns.data.datasets import collate_pretrain
    from cgns.distributed import DistInfo
    from cgns.engine.pretrain import LoopConfig, Pretrainer
    from cgns.models.cgns import CGNSModel
    from test_masking import TinyPairs
    from test_models_cgns import tiny_config

    def trainer(output_dir, **overrides):
        torch.manual_seed(0)
        model = CGNSModel(tiny_config(**overrides))
        info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
        cfg = LoopConfig(batch_size=4, lr=1e-3, stage1_epochs=1, stage2_epochs=1, progress=False, validate=False,
                         amp="none")
        return Pretrainer(model, train_set=TinyPairs(8), val_set=None, collate_fn=collate_pretrain, cfg=cfg,
                          info=info, output_dir=output_dir, model_config=model.config.to_dict())

    old = trainer(tmp_path / "old")
    old.save(ckpt.LATEST)
    path = ckpt.checkpoint_dir(tmp_path / "old") / ckpt.LATEST
    state = ckpt.load_checkpoint(path)
    for name in ("mask_ratio", "mir_masking", "mir_target_norm"):
        del state["config"][name]
    del state["loop"]["stage2_init"]
    ckpt.save_checkpoint(path, state)
    resumed = trainer(tmp_path / "new", **now)
    if not now:
        resumed.resume(path)
        for key, value in old.raw.state_dict().items():
            assert torch.equal(value, resumed.raw.state_dict()[key])
        return
    with pytest.raises(ValueError) as err:
        resumed.resume(path)
    message = str(err.value)
    assert "mask_ratio: checkpoint=<absent: written before the field existed, so trained with its default 0.0>, " \
           "now=0.5" in message and "mir_masking: checkpoint=<absent" in message and "mir_target_norm" not in message


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
