"""TBWriter: event files when tensorboard is importable, a silent no-op when it is not."""
import sys

import pytest

from cgns.viz.tensorboard import TBWriter

RECORD = {"kind": "train", "step": 7, "stage": 1, "loss/total": 1.25, "lr": 1e-5,
          "cgns/cluster_sizes": [3, 1, 0, 2], "note": "ignored"}


def test_noop_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with TBWriter(tmp_path) as writer:
        assert not writer.enabled
        writer.log(RECORD)
        writer.add_scalar("loss/total", 1.0, 3)
        writer.add_histogram("h", [1.0, 2.0], 3)
    assert not (tmp_path / "tensorboard").exists()


def test_event_files_with_tensorboard(tmp_path):
    pytest.importorskip("torch.utils.tensorboard", reason="tensorboard is an optional dependency")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TBWriter(tmp_path) as writer:
        assert writer.enabled
        writer.log(RECORD)
        writer.add_scalar("val/loss/total", 2.5, 9)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == {"loss/total", "lr", "val/loss/total"}
    assert [(e.step, e.value) for e in events.Scalars("loss/total")] == [(7, 1.25)]
    assert tags["histograms"] == ["cgns/cluster_sizes"]
