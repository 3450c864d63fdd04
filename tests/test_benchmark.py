"""`python -m cgns.benchmark`: the plan of methods x seeds, the method -> flags table, reuse of finished runs, the
comparison table against hand computations, the t quantile, the estimate; fake runners (no pretraining) except one
end-to-end run on the test world."""
import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

import train_pretrain
from cgns.benchmark import cli, estimate as estimate_module
from cgns.benchmark.compare import compare
from cgns.benchmark.methods import METHODS, RANDOM_INIT, WEIGHTS, parse_method, parse_methods
from cgns.benchmark.plan import RANDOM_INIT_SEED_STRIDE, Settings, plan
from cgns.benchmark.stats import paired_difference, t_quantile
from test_model_api import TINY


def settings(tmp_path, methods=("cgns", "convirt", "cgns-no-cgns"), seeds=(0, 1, 2), **extra):
    return Settings(methods=tuple(parse_methods(methods)), seeds=tuple(seeds), output_dir=tmp_path,
                    tasks=("linear",), **extra)


def argv_value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_plan_is_methods_by_seeds_then_random_init(tmp_path):
    jobs = plan(settings(tmp_path, seeds=(0, 1), eval_seeds=(0, 5)))
    assert [(j.kind, j.method, j.seed) for j in jobs] == [
        (kind, method, seed) for seed in (0, 1)
        for method, kind in [(m, k) for m in ("cgns", "convirt", "cgns-no-cgns") for k in ("pretrain", "evaluate")]
        + [(RANDOM_INIT, "evaluate")]]
    assert len({j.directory for j in jobs}) == len(jobs)
    for seed in (0, 1):
        mine = {(j.kind, j.method): j for j in jobs if j.seed == seed}
        for method in ("cgns", "convirt", "cgns-no-cgns"):
            pretrain, evaluate = mine["pretrain", method], mine["evaluate", method]
            assert argv_value(pretrain.argv, "--seed") == str(seed)
            assert argv_value(pretrain.argv, "--output-dir") == str(pretrain.directory)
            assert argv_value(evaluate.argv, "--checkpoint") == str(pretrain.directory)      # final.pt, else latest.pt
            assert evaluate.head_seeds == (0, 5) and "--random-init" not in evaluate.argv
        random = mine["evaluate", RANDOM_INIT]      # the first method's architecture, a fresh draw per seed
        assert argv_value(random.argv, "--checkpoint") == str(mine["pretrain", "cgns"].directory)
        assert "--random-init" in random.argv
        assert random.head_seeds == (RANDOM_INIT_SEED_STRIDE * seed, RANDOM_INIT_SEED_STRIDE * seed + 5)


@pytest.mark.parametrize("name, flags, field, value", [
    ("cgns", [], None, None),
    ("cgns-no-cgns", ["--no-cgns"], "cgns", False),
    ("cgns-no-mir", ["--no-mir"], "mir", False),
    ("cgns-no-local", ["--no-local"], "local", False),
    ("cgns@w3=0.50", ["--local-text-weight", "0.5"], "local_text_weight", 0.5),
    ("cgns-no-cgns@w3=2", ["--no-cgns", "--local-text-weight", "2"], "local_text_weight", 2.0),
    ("cgns@wg=0,w2=0.25", ["--local-image-weight", "0.25", "--grounding-weight", "0"], "grounding_weight", 0.0),
])
def test_ablation_and_weight_names_map_to_the_pretraining_flags(tmp_path, name, flags, field, value):
    spec = parse_method(name)
    assert spec.flags == flags
    job = plan(settings(tmp_path, methods=[name], seeds=[3]))[0]
    config, _ = train_pretrain.parse_args(job.argv)          # the flags exist and set what they are meant to
    assert config.loop.seed == 3 and config.run.output_dir == str(job.directory)
    if field is not None:
        assert getattr(config.model, field) == value
    if spec.base == "cgns-no-cgns":
        assert config.model.cgns is False


@pytest.mark.parametrize("peer", ["convirt", "gloria", "mgca"])
def test_the_peers_flag_selects_them(tmp_path, peer):
    parser = train_pretrain.config_parser().build(train_pretrain.config_parser().base("demo"))
    if "--method" not in parser._option_string_actions:
        pytest.skip("train_pretrain.py has no --method yet")
    job = plan(settings(tmp_path, methods=[peer], seeds=[0]))[0]
    config, args = train_pretrain.config_parser().parse(job.argv, namespace=True)
    places = [config, args] + [getattr(config, f.name) for f in dataclasses.fields(config)]
    assert peer in [getattr(place, "method", None) for place in places]       # wherever the lead puts the field


def test_canonical_names_and_the_peers_flag():
    assert parse_method("cgns@w3=0.50").name == "cgns@w3=0.5"
    assert parse_method("cgns@wg=0,w3=1e-1").name == "cgns@w3=0.1,wg=0"
    for peer in ("convirt", "gloria", "mgca"):
        assert parse_method(peer).flags == ["--method", peer]


@pytest.mark.parametrize("name, words", [
    ("simclr", ["simclr"] + list(METHODS)),
    ("convirt@w3=0.5", ["convirt", "w3", "none"]),
    ("cgns-no-local@w3=1", ["cgns-no-local", "w3", "wg"]),
    ("cgns@w9=1", ["w9", "w2", "w3", "wg"]),
    ("cgns@w3=x", ["'x'"]),
    ("cgns@w3=-1", [">= 0"]),
    ("cgns@", ["KEY=VALUE"]),
])
def test_a_bad_method_is_a_clear_error(name, words):
    with pytest.raises(ValueError) as error:
        parse_method(name)
    for word in words:
        assert word in str(error.value)


def test_extra_flags_may_not_override_what_the_benchmark_sets(tmp_path):
    with pytest.raises(ValueError, match="--pretrain-args may not set --seed: .* --seeds"):
        plan(settings(tmp_path, pretrain_args=("--max-steps", "3", "--seed", "4")))
    with pytest.raises(ValueError, match="--eval-args may not set --output-dir"):
        plan(settings(tmp_path, eval_args=("--output-dir=elsewhere",)))


def test_unknown_method_on_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--methods", "cgns", "medclip", "--output-dir", str(tmp_path), "--dry-run"])
    message = capsys.readouterr().err
    assert "unknown method 'medclip'" in message and all(name in message for name in METHODS)
    with pytest.raises(ValueError, match="same run"):
        parse_methods(["cgns@w3=0.5", "cgns@w3=.5"])


def table_json(chexpert, cnr):
    return {"method": "fake", "columns": [
        {"header": "MS-CXR CNR / mIoU", "task": "grounding", "dataset": "mimic_cxr", "percent": False,
         "values": [{"label": "CNR", "mean": cnr, "std": None, "n_seeds": 1},
                    {"label": "mIoU", "mean": None, "std": None, "n_seeds": 1}]},
        {"header": "CheXpert AUC", "task": "linear", "dataset": "chexpert", "percent": True,
         "values": [{"label": "100%", "mean": chexpert, "std": None, "n_seeds": 1}]}]}


# a method's CheXpert AUC and CNR at pretraining seeds 0, 1, 2
VALUES = {"cgns": ([0.80, 0.84, 0.83], [1.0, 1.5, 0.5]), "convirt": ([0.78, 0.80, 0.82], [0.5, 0.5, 0.5]),
          "cgns-no-cgns": ([0.81, 0.81, 0.81], [1.0, 1.0, 1.0]), RANDOM_INIT: ([0.60, 0.62, 0.58], [0.0, 0.1, 0.2])}


def fake_runner(calls, values=VALUES):
    """Writes what a finished pretraining / evaluation leaves: final.pt + metrics.json, or table.json."""
    def run(job, log_path):
        calls.append((job.kind, job.method, job.seed, tuple(job.argv)))
        if job.kind == "pretrain":
            (job.directory / "checkpoints").mkdir(parents=True, exist_ok=True)
            (job.directory / "checkpoints" / "final.pt").write_bytes(b"weights")
            (job.directory / "metrics.json").write_text("{}")
        else:
            assert all(p.is_file() for p in job.needs)
            chexpert, cnr = values[job.method]
            (job.directory / "table.json").write_text(json.dumps(table_json(chexpert[job.seed], cnr[job.seed])))
    return run


def run(config, calls, **kwargs):
    return cli.run_benchmark(config, runner=fake_runner(calls), progress=False, out=lambda *a, **k: None, **kwargs)


def test_finished_runs_are_reused_and_unfinished_ones_run_again(tmp_path):
    config = settings(tmp_path)
    calls = []
    run(config, calls)
    assert len(calls) == 3 * (2 * 3 + 1)
    calls.clear()
    run(config, calls)
    assert calls == []                                              # everything finished: nothing runs
    cgns1 = tmp_path / "pretrain" / "cgns" / "seed1"
    (cgns1 / "checkpoints" / "final.pt").rename(cgns1 / "checkpoints" / "latest.pt")     # interrupted pretraining:
    (cgns1 / "metrics.json").unlink()                                                    # no metrics.json yet
    (tmp_path / "evaluate" / "convirt" / "seed2" / "table.json").unlink()                # interrupted evaluation
    jobs = {j.name: j for j in plan(config)}
    assert jobs["pretrain cgns seed 1"].state() == "resume" and jobs["evaluate convirt seed 2"].state() == "new"
    run(config, calls)
    assert [c[:3] for c in calls] == [("pretrain", "cgns", 1), ("evaluate", "convirt", 2)]
    assert calls[0][3] == tuple(jobs["pretrain cgns seed 1"].argv)  # the same command: it resumes itself
    record = json.loads((cgns1 / "benchmark_run.json").read_text())
    assert record["resumed"] is True and record["argv"] == jobs["pretrain cgns seed 1"].argv
    calls.clear()                                                   # more head seeds: every evaluation runs again
    run(settings(tmp_path, eval_seeds=(0, 1)), calls)
    assert {c[0] for c in calls} == {"evaluate"} and len(calls) == 3 * 4


def test_a_finished_run_of_another_command_is_refused(tmp_path):
    run(settings(tmp_path, seeds=(0,)), [])
    with pytest.raises(ValueError) as error:
        run(settings(tmp_path, seeds=(0,), pretrain_args=("--max-steps", "5")), [])
    assert "pretrain/cgns/seed0" in str(error.value) and "--max-steps 5" in str(error.value)
    run(settings(tmp_path, seeds=(0,), device="cpu"), [])          # the device does not change the result


def hand_mean_sd(values):
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_the_table_equals_a_hand_computation(tmp_path):
    config = settings(tmp_path)
    run(config, [])
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert result["reference"] == "convirt" and result["methods"] == [RANDOM_INIT, "cgns", "convirt", "cgns-no-cgns"]
    rows = {(r["header"], r["label"]): r for r in result["rows"]}
    assert list(rows)[0] == ("CheXpert AUC", "100%")                # the published order, not the files'
    chexpert = rows["CheXpert AUC", "100%"]["methods"]
    assert (chexpert["cgns"]["mean"], chexpert["cgns"]["std"]) == pytest.approx(hand_mean_sd([0.80, 0.84, 0.83]))
    assert hand_mean_sd([0.80, 0.84, 0.83]) == pytest.approx((0.8233333, 0.0208167), abs=1e-6)
    differences = [0.80 - 0.78, 0.84 - 0.80, 0.83 - 0.82]           # paired by pretraining seed
    mean, sd = hand_mean_sd(differences)
    half = 4.302652729749 * sd / math.sqrt(3)                       # t_{0.975, 2}
    got = chexpert["cgns"]["difference"]
    assert (got["mean"], got["low"], got["high"], got["n"]) == pytest.approx((mean, mean - half, mean + half, 3))
    assert (mean, half) == pytest.approx((0.0233333, 0.0379461), abs=1e-6)
    assert chexpert["convirt"]["difference"] is None
    flat = chexpert["cgns-no-cgns"]["difference"]                   # constant minus varying: sd of convirt's values
    assert flat["mean"] == pytest.approx(0.01) and flat["std"] == pytest.approx(0.02)
    cnr = rows["MS-CXR CNR / mIoU", "CNR"]["methods"]["cgns"]
    assert cnr["difference"]["mean"] == pytest.approx(0.5) and cnr["std"] == pytest.approx(0.5)
    assert rows["MS-CXR CNR / mIoU", "mIoU"]["methods"]["cgns"]["mean"] is None
    table = (tmp_path / "benchmark.md").read_text()
    assert "| CheXpert AUC | 100% | 60.0 ± 2.0 | 82.3 ± 2.1 | 80.0 ± 2.0 | 81.0 ± 0.0 |" in table
    # random init - convirt: -0.18, -0.18, -0.24 -> mean -0.20, sd 0.0346, half-width 4.3027 * 0.0346 / sqrt(3)
    assert "| CheXpert AUC | 100% | -20.0 [-28.6, -11.4] | +2.3 [-1.5, +6.1] | +1.0 [-4.0, +6.0] |" in table
    assert "| MS-CXR CNR / mIoU | CNR | -0.40 [-0.65, -0.15] | +0.50 [-0.74, +1.74] | +0.50 [+0.50, +0.50] |" in table
    lines = (tmp_path / "benchmark.csv").read_text().splitlines()
    assert lines[0].startswith("method,column,task,dataset,value,n_seeds,mean,std,per_seed,paired_against")
    assert "cgns,CheXpert AUC,linear,chexpert,100%,3,0.823333,0.020817,0:0.800000;1:0.840000;2:0.830000,convirt," \
           "0.023333,-0.014612,0.061279,3" in lines
    assert (tmp_path / "benchmark.png").stat().st_size > 0
    # the ablation: cgns - cgns-no-cgns, paired by seed: -0.01, +0.03, +0.02
    assert result["ablations"] == [["cgns", "cgns-no-cgns"]]
    mean, sd = hand_mean_sd([-0.01, 0.03, 0.02])
    half = 4.302652729749 * sd / math.sqrt(3)
    got = rows["CheXpert AUC", "100%"]["ablations"]["cgns − cgns-no-cgns"]
    assert (got["mean"], got["low"], got["high"], got["n"]) == pytest.approx((mean, mean - half, mean + half, 3))
    assert got["against"] == "cgns-no-cgns"
    assert "| column | value | cgns − cgns-no-cgns |" in table
    assert f"| CheXpert AUC | 100% | {100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}] |" \
        in table
    assert any(line.startswith("cgns,CheXpert AUC,linear,chexpert,100%,3,") and ",cgns-no-cgns,0.013333," in line
               for line in lines)


def test_the_learning_check_is_each_seeds_gain_over_random_init():
    """A method learns where its CheXpert probe at 10% beats random init's at every pretraining seed by 0.05."""
    from cgns.benchmark.compare import LEARNING_ROW, learning_check, learning_markdown

    def at(*scores):
        return {seed: ({} if score is None else {LEARNING_ROW: score}) for seed, score in enumerate(scores)}

    values = {RANDOM_INIT: at(0.60, 0.62, 0.58), "cgns": at(0.70, 0.68, 0.64), "convirt": at(0.70, 0.60, 0.70),
              "gloria": at(0.70, None, 0.70)}
    check = learning_check(values, [RANDOM_INIT, "cgns", "convirt", "gloria", "mgca"])
    assert list(check) == ["cgns", "convirt", "gloria"]                    # mgca has no evaluations at all
    assert check["cgns"]["gains"] == pytest.approx({"0": 0.10, "1": 0.06, "2": 0.06})
    assert check["cgns"]["learns"] and check["cgns"]["min"] == pytest.approx(0.06)
    assert not check["convirt"]["learns"] and check["convirt"]["min"] == pytest.approx(-0.02)
    assert not check["gloria"]["learns"] and check["gloria"]["gains"]["1"] is None     # a seed without the row
    lines = learning_markdown(check)
    assert "| method | seed 0 | seed 1 | seed 2 | smallest | learns |" in lines
    assert "| cgns | +10.0 | +6.0 | +6.0 | +6.0 | yes |" in lines
    assert "| convirt | +10.0 | -2.0 | +12.0 | -2.0 | no |" in lines
    assert "| gloria | +10.0 | n/a | +12.0 | +10.0 | no |" in lines
    assert learning_check({"cgns": at(0.7)}, ["cgns"]) == {} and learning_markdown({}) == []


def test_one_seed_has_no_interval_and_no_reference_no_difference(tmp_path):
    run(settings(tmp_path / "one", seeds=(1,)), [])
    assert "| CheXpert AUC | 100% | -18.0 [n/a] | +4.0 [n/a] | +1.0 [n/a] |" in (tmp_path / "one" / "benchmark.md") \
        .read_text()
    jobs = plan(settings(tmp_path / "one", seeds=(1,)))
    comparison = compare(jobs, ["cgns", "cgns-no-cgns"], reference="convirt")   # convirt not compared here
    assert comparison["reference"] is None and comparison["rows"][0]["methods"]["cgns"]["difference"] is None


def test_weight_variants_pair_against_the_reference_at_the_same_weights(tmp_path):
    names = ("cgns", "cgns-no-cgns", "cgns@w3=0.5", "cgns-no-cgns@w3=0.5", "cgns@w3=2")
    values = {name: ([0.7 + 0.01 * i] * 2, [float(i)] * 2) for i, name in enumerate((RANDOM_INIT,) + names)}
    calls = []
    cli.run_benchmark(settings(tmp_path, methods=names, seeds=(0, 1)), reference="cgns-no-cgns",
                      runner=fake_runner(calls, values), progress=False, out=lambda *a, **k: None)
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert result["partners"] == {RANDOM_INIT: "cgns-no-cgns", "cgns": "cgns-no-cgns", "cgns-no-cgns": None,
                                  "cgns@w3=0.5": "cgns-no-cgns@w3=0.5", "cgns-no-cgns@w3=0.5": "cgns-no-cgns",
                                  "cgns@w3=2": "cgns-no-cgns"}
    cnr = next(r for r in result["rows"] if r["label"] == "CNR")["methods"]
    assert cnr["cgns@w3=0.5"]["difference"]["mean"] == pytest.approx(3.0 - 4.0)
    assert cnr["cgns@w3=2"]["difference"]["mean"] == pytest.approx(5.0 - 2.0)
    assert "| cgns@w3=0.5 − cgns-no-cgns@w3=0.5 |" in (tmp_path / "benchmark.md").read_text()
    assert result["ablations"] == [["cgns", "cgns-no-cgns"], ["cgns@w3=0.5", "cgns-no-cgns@w3=0.5"]]


@pytest.mark.parametrize("df, textbook", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571),
                                          (10, 2.228), (30, 2.042), (120, 1.980)])
def test_t_quantile_equals_the_tables(df, textbook):
    assert t_quantile(0.975, df) == pytest.approx(textbook, abs=5e-4)
    scipy_stats = pytest.importorskip("scipy.stats")
    for p in (0.9, 0.975, 0.995):
        assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)


def test_paired_difference_skips_seeds_missing_on_either_side():
    result = paired_difference({0: 1.0, 1: None, 2: 3.0, 3: 2.0}, {0: 0.5, 1: 0.0, 2: 1.0})
    assert result["seeds"] == [0, 2] and result["mean"] == pytest.approx(1.25)
    # differences 0.5, 2.0: sd = 0.75 * sqrt(2), sd / sqrt(2) = 0.75, t_{0.975, 1} = 12.7062
    assert result["high"] - result["mean"] == pytest.approx(12.706204736 * 0.75)


def test_estimate_from_the_demo_table_then_from_runs_here(tmp_path, monkeypatch):
    monkeypatch.setattr(estimate_module, "DEMO_CELL_SECONDS", {("linear", "chexpert"): 7.0, ("linear", "rsna"): 3.0,
                                                               ("linear", "covidx"): 0.0})
    config = settings(tmp_path, methods=("cgns", "convirt"), seeds=(0, 1), eval_seeds=(0, 1))
    first = estimate_module.estimate(plan(config), "demo")
    # 4 pretraining runs at the demo figure; 6 evaluations x 2 head seeds x (7 + 3 + 0) s
    assert first.seconds == pytest.approx(4 * estimate_module.DEMO_PRETRAIN_SECONDS + 6 * 2 * 10.0)
    assert estimate_module.estimate(plan(config), "paper").seconds is None
    run(settings(tmp_path, methods=("cgns", "convirt"), seeds=(0,), eval_seeds=(0, 1)), [])
    for method, seconds in (("cgns", 100.0), ("convirt", 40.0)):
        path = tmp_path / "pretrain" / method / "seed0" / "benchmark_run.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "seconds": seconds}))
    for method in ("cgns", "convirt", RANDOM_INIT):        # evaluations ran at twice the demo table's time
        path = tmp_path / "evaluate" / method / "seed0" / "benchmark_run.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "seconds": 40.0}))
    second = estimate_module.estimate(plan(config), "paper")
    assert second.seconds == pytest.approx(100.0 + 40.0 + 2.0 * 3 * 2 * 10.0)
    assert "cgns's 1 finished run(s) here" in "\n".join(second.lines)


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "bench"
    cli.main(["--methods", "cgns", "cgns-no-mir", "--seeds", "0", "1", "--output-dir", str(out), "--dry-run"])
    printed = capsys.readouterr().out
    assert "expected CPU time:" in printed and "pretraining: 4 run(s)" in printed
    assert printed.count("train_pretrain.py --config demo") == 4 and printed.count("-m cgns.evaluate all") == 6
    assert "--no-mir" in printed and not out.exists()


def test_a_failing_run_names_its_log(tmp_path):
    job = plan(settings(tmp_path, methods=("cgns",), seeds=(0,)))[0]
    job.directory.mkdir(parents=True)
    job.command = lambda: [sys.executable, "-c", "import sys; print('out of memory'); sys.exit(3)"]
    with pytest.raises(RuntimeError) as error:
        cli.run_job(job, cli.run_subprocess)
    message = str(error.value)
    assert "pretrain cgns seed 0 failed (exit status 3)" in message and "out of memory" in message
    assert str(job.directory / "benchmark.log") in message and job.state() == "new"
    job.command = lambda: [sys.executable, "-c", "print('stopped early')"]
    with pytest.raises(RuntimeError, match="ended without metrics.json and a checkpoint"):
        cli.run_job(job, cli.run_subprocess)


def test_end_to_end_on_the_test_world(test_world, tmp_path):
    """Two CM-CGNS variants, one seed, two-step pretraining, a one-epoch probe: the table holds each evaluation's own
    numbers, and a second call runs nothing."""
    argv = ["--methods", "cgns", "cgns-no-cgns", "--reference", "cgns", "--seeds", "0", "--output-dir", str(tmp_path),
            "--data-dir", str(test_world), "--tasks", "linear", "grounding", "--in-process", "--no-progress",
            "--pretrain-args", " ".join(TINY), "--eval-args", "--epochs 1"]
    result = cli.main(argv)
    assert [j.state() for j in result["jobs"]] == ["finished"] * 5
    table = json.loads((tmp_path / "benchmark.json").read_text())
    for method in (RANDOM_INIT, "cgns", "cgns-no-cgns"):
        own = json.loads((tmp_path / "evaluate" / method / "seed0" / "table.json").read_text())["columns"]
        for column in own:
            for value in column["values"]:
                row = next(r for r in table["rows"] if (r["header"], r["label"]) == (column["header"],
                                                                                     value["label"]))
                assert row["methods"][method]["mean"] == value["mean"]
    assert any(r["methods"]["cgns"]["mean"] is not None for r in table["rows"])

    def refuse(job, log_path):
        raise AssertionError(f"{job.name} ran again")

    again = cli.run_benchmark(cli.settings_from(cli.build_parser().parse_args(argv)), "cgns", runner=refuse,
                              progress=False, out=lambda *a, **k: None)
    assert again["paths"]["markdown"] == str(tmp_path / "benchmark.md")


def test_the_docs_table_is_the_method_table():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "BENCHMARK.md").read_text()
    for name, method in METHODS.items():
        assert f"| {name} | {' '.join(method.flags) or '(none)'} |" in doc
    for key, (flag, _) in WEIGHTS.items():
        assert f"| {key} | {flag} |" in doc
