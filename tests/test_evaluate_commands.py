"""`python -m cgns.evaluate` end to end on a tiny pretraining run and the test world: each command's metrics.json,
and `all` resuming (a finished cell is kept, not recomputed)."""
import json

import pytest

from cgns.evaluate import cli
from test_model_api import pretrain_tiny


@pytest.fixture(scope="module")
def checkpoint(test_world, tmp_path_factory):
    return pretrain_tiny(test_world, tmp_path_factory.mktemp("evaluate_run")) / "checkpoints" / "latest.pt"


def run(*argv):
    return cli.main([str(a) for a in argv])


def test_zeroshot_writes_the_metrics_of_each_dataset(checkpoint, test_world, tmp_path, capsys):
    out = tmp_path / "chexpert"
    metrics = run("zeroshot", "--checkpoint", checkpoint, "--dataset", "chexpert", "--data-root",
                  test_world / "chexpert", "--output-dir", out)
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] == metrics["test"]["accuracy"]
    five = metrics["test"]
    n = five["n_per_class"]
    assert 1 <= n < 200 and f"using 5x{n}" in capsys.readouterr().out          # the largest N, printed
    assert set(five["per_class"]) == {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"}
    assert sum(v["n"] for v in five["per_class"].values()) == 5 * n and 0 <= five["macro_f1"] <= 1
    assert set(metrics["binary"]["per_label"]) == set(five["per_class"])
    assert (out / "chexpert_5x200.csv").is_file()
    for dataset in ("rsna", "covidx"):
        metrics = run("zeroshot", "--checkpoint", checkpoint, "--dataset", dataset, "--data-root",
                      test_world / dataset, "--output-dir", tmp_path / dataset, "--random-init")
        keys = {"auroc", "accuracy", "f1"} if dataset == "rsna" else {"accuracy", "macro_f1", "per_class"}
        assert keys <= set(metrics["test"]) and metrics["model"]["random_init"]


def test_retrieval_and_grounding(checkpoint, test_world, tmp_path):
    root = test_world / "mimic_cxr"
    truth = json.loads((root / "ground_truth.json").read_text())["images"]
    studies = sorted({str(v["study_id"]) for v in truth.values() if v["split"] == "test"})[:5]
    split = tmp_path / "studies.csv"          # a user's study list (the test world is too small for 5 classes)
    split.write_text("study_id,label\n" + "".join(f"{s},{name}\n" for s, name in zip(
        studies, ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"])))
    metrics = run("retrieval", "--checkpoint", checkpoint, "--data-root", root, "--output-dir", tmp_path / "r",
                  "--split-file", split)
    assert {"P@1", "P@5", "P@10"} <= set(metrics["test"]["image_to_text"])
    assert metrics["test"]["image_to_text"]["P@1"] == pytest.approx(
        sum(v["P@1"] for v in metrics["test"]["image_to_text"]["per_class"].values()) / len(studies))
    assert metrics["exact_pairs"]["test"]["num_pairs"] >= len(studies)
    grounding = run("grounding", "--checkpoint", checkpoint, "--data-root", root, "--output-dir", tmp_path / "g")
    rows = (root / "MS_CXR_Local_Alignment_v1.0.0.csv").read_text().strip().splitlines()
    assert grounding["test"]["n"] == len(rows) - 1 and grounding["test"]["cnr"] >= 0


def test_all_resumes_and_skips_finished_cells(checkpoint, test_world, tmp_path, monkeypatch):
    argv = ["all", "--checkpoint", checkpoint, "--tasks", "linear", "zeroshot", "grounding", "--seeds", "0",
            "--data-dir", test_world, "--output-dir", tmp_path, "--no-progress", "--epochs", "1"]
    first = run(*argv)
    table = (tmp_path / "table.md").read_text()
    assert "CheXpert AUC" in table and "CheXpert 5xN zero-shot ACC" in table and "MS-CXR CNR / mIoU" in table
    assert (tmp_path / "table.csv").is_file() and (tmp_path / "table.png").stat().st_size > 0
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a finished cell was recomputed")

    for name in ("run_zeroshot", "run_grounding", "_downstream"):
        monkeypatch.setattr(cli, name, refuse)
    assert run(*argv)["rows"] == first["rows"] and not calls          # every cell kept
    (tmp_path / "grounding_mimic_cxr" / "seedall" / "metrics.json").unlink()
    monkeypatch.setattr(cli, "run_grounding", lambda *args, **kwargs: calls.append("grounding") or
                        {"test": {"cnr": 1.0, "miou": 0.5}})
    rows = {r["header"]: r for r in run(*argv)["rows"]}
    assert calls == ["grounding"]                                       # only the missing cell ran
    assert [v["mean"] for v in rows["MS-CXR CNR / mIoU"]["values"]] == [1.0, 0.5]


def test_all_refuses_two_encoders(checkpoint):
    with pytest.raises(SystemExit, match="choose one encoder"):
        run("all", "--checkpoint", checkpoint, "--image-weights", "w.pth")


def test_all_with_random_init_refuses_a_seed_it_would_ignore(checkpoint):
    with pytest.raises(SystemExit, match=r"--seed 5 would be ignored: give the seeds you want as --seeds"):
        run("all", "--checkpoint", checkpoint, "--random-init", "--seed", "5", "--seeds", "0")


def test_all_with_random_init_runs_the_text_tasks_once_per_seed(checkpoint, test_world, tmp_path):
    result = run("all", "--checkpoint", checkpoint, "--random-init", "--tasks", "zeroshot", "--seeds", "0", "1",
                 "--data-dir", test_world, "--output-dir", tmp_path, "--no-progress")
    assert sorted(p.name for p in (tmp_path / "zeroshot_rsna").iterdir()) == ["seed0", "seed1"]
    seeds = [json.loads((tmp_path / "zeroshot_rsna" / s / "metrics.json").read_text()) for s in ("seed0", "seed1")]
    assert [m["model"]["seed"] for m in seeds] == [0, 1] and seeds[0]["test"] != seeds[1]["test"]
    rsna = next(r for r in result["rows"] if r["header"] == "RSNA zero-shot AUC")["values"][0]
    assert rsna["n_seeds"] == 2 and rsna["mean"] == pytest.approx((seeds[0]["test"]["auroc"] +
                                                                    seeds[1]["test"]["auroc"]) / 2)
    assert rsna["std"] is not None


def test_all_trains_the_fractions_asked_for_and_refuses_to_mix_them(checkpoint, test_world, tmp_path):
    argv = ["all", "--checkpoint", checkpoint, "--tasks", "linear", "--seeds", "0", "--data-dir", test_world,
            "--output-dir", tmp_path, "--no-progress", "--epochs", "1"]
    result = run(*argv, "--data-pct", "0.5", "1")
    cell = json.loads((tmp_path / "linear_chexpert" / "seed0" / "metrics.json").read_text())
    assert {"0.5", "1"} <= set(cell) and "0.01" not in cell
    chexpert = next(r for r in result["rows"] if r["header"] == "CheXpert AUC")
    assert [v["label"] for v in chexpert["values"]] == ["50%", "100%"]
    with pytest.raises(SystemExit, match="finished with fractions 0.5, 1, but --data-pct asks for 1"):
        run(*argv, "--data-pct", "1")
