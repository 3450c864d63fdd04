"""The log-derived half of the visual report: curves from a hand-written log.jsonl, the HTML's links, errors."""
import json
import re
from pathlib import Path

import pytest

from cgns.viz.plots import cluster_size_matrix, plot_training_curves
from cgns.viz.report import write_report
from cgns.viz.runlog import read_log


def write_fake_run(run_dir: Path, steps_per_stage: int = 30, with_cgns: bool = True) -> Path:
    """A run directory as the pretraining engine writes it (CONTRACTS: run directory), without checkpoints."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for stage in (1, 2):
        for i in range(steps_per_stage):
            step = (stage - 1) * steps_per_stage + i
            record = {"kind": "train", "step": step, "stage": stage, "epoch": i // 10, "lr": 1e-5 * (1 - i / 30),
                      "samples_per_s": 50.0, "loss/global": 2.0 - step / 60, "loss/local_image": -0.5,
                      "loss/local_text": 3.0 - step / 100}
            if stage == 2:
                record["loss/reconstruction"] = 5.0 - i / 10
            record["loss/total"] = sum(v for k, v in record.items() if k.startswith("loss/"))
            if with_cgns and step >= 10:
                record["cgns/kmeans_started_step"] = 10
                record["cgns/hard_negative_sim"] = 0.3 + step / 200
                record["cgns/cluster_sizes"] = [max(0, 20 - k - step // 10) for k in range(16)]
            lines.append(record)
        for i in range(0, steps_per_stage, 10):
            step = (stage - 1) * steps_per_stage + i + 9
            lines.append({"kind": "val", "step": step, "stage": stage, "epoch": i // 10,
                          "val/loss/global": 2.1 - step / 60, "retrieval/i2t_R@1": step / 100,
                          "retrieval/i2t_R@5": step / 60, "retrieval/t2i_R@1": step / 90,
                          "retrieval/t2i_R@5": step / 50})
    lines.append({"kind": "event", "step": 0, "stage": 1, "message": "stage 2 starts"})
    (run_dir / "log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    (run_dir / "config.json").write_text(json.dumps({"model": {"image_encoder": "vit_tiny", "image_size": 64},
                                                     "loop": {"seed": 42}}))
    (run_dir / "metrics.json").write_text(json.dumps({"val": {"i2t_R@1": 0.5, "t2i_R@1": 0.4}}))
    return run_dir


def test_curves_from_a_fake_log(tmp_path):
    run = write_fake_run(tmp_path / "run")
    log = read_log(run / "log.jsonl")
    assert len(log.train) == 60 and len(log.val) == 6
    figures = plot_training_curves(log, tmp_path / "out")
    assert set(figures) == {"losses", "learning_rate", "retrieval_recall", "cluster_sizes", "cgns_stats"}
    for path in figures.values():
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps, sizes = cluster_size_matrix(log)
    assert steps[0] == 10 and sizes.shape == (50, 16)
    assert (sizes[:, :-1] >= sizes[:, 1:]).all(), "cluster sizes are sorted largest first per step"


def test_no_cgns_means_no_cluster_figure(tmp_path):
    run = write_fake_run(tmp_path / "run", with_cgns=False)
    figures = plot_training_curves(read_log(run / "log.jsonl"), tmp_path / "out")
    assert "cluster_sizes" not in figures and "losses" in figures


def test_cli_report_links_only_existing_files(tmp_path):
    from cgns.viz.__main__ import main

    run = write_fake_run(tmp_path / "run")
    page = main([str(run), "--no-model"])
    assert page == run / "report" / "report.html"
    text = page.read_text()
    sources = re.findall(r'(?:src|href)="([^"#]+)"', text)
    assert len(sources) == 5
    for source in sources:
        assert not source.startswith(("http:", "https:", "/")), source
        assert (page.parent / source).is_file(), source
    assert "vit_tiny" in text and "i2t_R@1" in text


def test_bad_log_line_is_named(tmp_path):
    run = write_fake_run(tmp_path / "run")
    with open(run / "log.jsonl", "a") as f:
        f.write("[1, 2]\n")
        f.write('{"kind": "train", "step": 99}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:68: expected a JSON object"):
        read_log(run / "log.jsonl")


def test_truncated_last_line_is_skipped(tmp_path):
    run = write_fake_run(tmp_path / "run")
    with open(run / "log.jsonl", "a") as f:
        f.write('{"kind": "train", "st')
    assert len(read_log(run / "log.jsonl").train) == 60


def test_missing_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        write_report(tmp_path / "nope", with_model=False)
