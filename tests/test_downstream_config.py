"""The downstream entry points' configuration (cgns.config through cgns.engine.downstream): presets, --help,
config.json round trips, refusals, and the several-seeds path of the driver."""
import dataclasses
import json
import re
import statistics

import pytest

import train_detect
import train_linear
import train_seg
from cgns.config import flag_fields, sections, write_config
from cgns.engine import detect, linear, segment

SCRIPTS = [(train_linear, linear.LINEAR, linear.LinearConfig, "chexpert"),
           (train_detect, detect.DETECTION, detect.DetectionConfig, "rsna"),
           (train_seg, segment.SEGMENTATION, segment.SegmentationConfig, "siim")]


def _flags(config):
    """[(flag, value)] of every option of a run configuration, in --help order."""
    return [("--" + f.name.replace("_", "-"), getattr(getattr(config, section), f.name))
            for section, cls in sections(type(config)).items() for f in flag_fields(cls)]


def _shown(value, flag: str = "") -> str:
    """How --help writes a preset value: None as "none"; a whitening candidate as "off" or its number."""
    if isinstance(value, tuple):
        return " ".join(_shown(v, flag) for v in value)
    if flag == "--whiten-shrinkage":
        return "off" if value is None else f"{value:g}"
    return "none" if value is None else str(value)


@pytest.mark.parametrize("script, task, config_cls, dataset", SCRIPTS)
def test_presets_are_instances_and_the_default_is_demo(script, task, config_cls, dataset):
    presets = task.parser.presets
    assert set(presets) == {"demo", "paper"}
    assert all(type(preset) is config_cls for preset in presets.values())
    config, demo = task.parse(["--dataset", dataset]), presets["demo"]      # no --config: the demo preset
    assert config.encoder == demo.encoder
    assert config.run == dataclasses.replace(demo.run, output_dir=f"runs/{task.prefix}_{dataset}")
    assert config.task == dataclasses.replace(demo.task, dataset=dataset)
    paper = task.parse(["--config", "paper", "--dataset", dataset]).run
    assert paper.data_pct == (0.01, 0.1, 1.0) and paper.epochs == 50


def test_the_demo_segmentation_preset_holds_the_recipe_that_works_on_the_demo():
    demo = segment.DEMO
    assert (demo.task.decoder_width, demo.run.epochs, demo.task.patience) == ("small", 40, 15)


@pytest.mark.parametrize("preset", ["demo", "paper"])
@pytest.mark.parametrize("script, task, config_cls, dataset", SCRIPTS)
def test_help_shows_every_flag_with_the_preset_value(script, task, config_cls, dataset, preset, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--config", preset, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    text = text[text.index("options:"):]
    flags = _flags(task.parser.presets[preset])
    starts = [text.index(f" {flag} " if f" {flag} " in text else f" {flag},") for flag, _ in flags]
    for (flag, value), start, end in zip(flags, starts, starts[1:] + [len(text)]):
        assert f"(default: {_shown(value, flag)})" in text[start:end], (flag, text[start:end])


@pytest.mark.parametrize("script, task, config_cls, dataset", SCRIPTS)
def test_config_json_reproduces_the_resolved_configuration(script, task, config_cls, dataset, tmp_path):
    extra = {"linear": ["--no-cache", "--select-by", "metric"],
             "detect": ["--whiten-shrinkage", "off", "0", "0.1", "--vit-blocks", "all", "--lr", "1e-3"],
             "seg": ["--foreground-prior", "auto", "--whiten-shrinkage", "off", "0.1", "--decoder-width", "base"]}
    argv = ["--config", "paper", "--dataset", dataset, "--random-init", "--image-encoder", "vit_tiny",
            "--image-size", "64", "--data-pct", "0.5", "1", "--seed", "3", "--output-dir", str(tmp_path / "run"),
            *extra[task.prefix]]
    config = task.parse(argv)
    assert config.run.seeds == (3,)            # --seed, as the scripts spelt it before --seeds, still reads
    path = write_config(tmp_path / "run", config)
    assert task.parse(["--config", str(path)]) == config
    again = task.parse(["--config", str(path), "--epochs", "7"])
    assert again == dataclasses.replace(config, run=dataclasses.replace(config.run, epochs=7))


def test_an_unknown_field_in_a_config_file_is_refused_naming_it(tmp_path):
    config = segment.SEGMENTATION.parse(["--dataset", "siim"])
    values = json.loads(write_config(tmp_path, config).read_text())
    values["task"]["decoder_depth"] = 5
    (tmp_path / "bad.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match="decoder_depth"):
        segment.SEGMENTATION.parser.parse(["--config", str(tmp_path / "bad.json")])


def test_dataset_is_required_and_encoder_sources_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_seg.main(["--random-init"])
    assert "--dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="cannot be combined"):
        train_linear.main(["--dataset", "rsna", "--checkpoint", str(tmp_path / "x.pt"), "--random-init"])
    with pytest.raises(SystemExit):
        train_detect.main(["--dataset", "rsna", "--encoder-lr-scale", "0.1"])     # the flag was removed


def _probe(root, out, seeds):
    return train_linear.main(["--dataset", "chexpert", "--data-root", str(root), "--random-init", "--image-encoder",
                              "vit_tiny", "--image-size", "64", "--data-pct", "0.5", "1", "--epochs", "3",
                              "--batch-size", "8", "--seeds", *seeds, "--output-dir", str(out)])


def _without_seconds(entry: dict) -> dict:
    return {**entry, "train": {k: v for k, v in entry["train"].items() if k != "seconds"}}


def test_several_seeds_give_mean_and_std_and_each_seed_its_own_run(test_world, tmp_path, capsys):
    root = test_world / "chexpert"
    results = _probe(root, tmp_path / "both", ["1", "2"])
    printed = capsys.readouterr().out
    alone = _probe(root, tmp_path / "alone", ["2"])
    full = results["1"]
    # seed 2 inside the two-seed run is the run with --seeds 2 alone
    assert _without_seconds(full["seeds"]["2"]) == _without_seconds(alone["1"])
    scores = [full["seeds"][s]["test"]["auroc"] for s in ("1", "2")]
    assert scores[0] != scores[1]
    assert full["test"]["auroc"] == pytest.approx(statistics.fmean(scores))
    assert full["std"]["test"]["auroc"] == pytest.approx(statistics.stdev(scores))
    row = re.search(r"chexpert  test auroc \(%\)  50%: \S+ ± \S+ \| 100%: (\S+) ± (\S+)", printed)
    assert row and row.groups() == (f"{100 * full['test']['auroc']:.1f}", f"{100 * full['std']['test']['auroc']:.1f}")
    metrics = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert metrics["test"] == full["test"] and set(metrics["1"]["seeds"]) == {"1", "2"}
    config = linear.LINEAR.parse(["--config", str(tmp_path / "both" / "config.json")])
    assert config.run.seeds == (1, 2) and config.run.data_root == str(root)


def test_configure_refuses_an_unknown_field():
    from cgns.engine.downstream import configure

    with pytest.raises(TypeError, match="select_bye"):
        configure(linear.DEMO, select_bye="loss")
