"""The benchmark's matrix of runs: one pretraining and one `evaluate all` per method and pretraining seed, and one
`evaluate all` of random init per seed; each run's folder, command and state (finished / resume / new).

    <output-dir>/pretrain/<method>/seed<s>/     train_pretrain.py --output-dir (checkpoints/final.pt, metrics.json)
    <output-dir>/evaluate/<method>/seed<s>/     python -m cgns.evaluate all --output-dir (table.json, cells)
    <output-dir>/evaluate/random-init/seed<s>/  the same with --random-init

A finished pretraining run (metrics.json and checkpoints/final.pt, or latest.pt where --max-steps ended it) is
reused; an unfinished one is started again with the same command, and train_pretrain.py resumes it from its
checkpoints/latest.pt. `evaluate all` is given the run folder (final.pt, else latest.pt). After each run the
benchmark writes benchmark_run.json beside it (the command, the wall time): a finished pretraining run whose
recorded command differs from the one asked for now is refused, not silently reused; an evaluation is finished
when its table.json exists and its recorded command is the current one (otherwise `evaluate all` runs again and
keeps its finished cells).

Random init: `evaluate all --random-init` draws each downstream encoder (and each text-tower model) from the head
seed, so the random-init row of pretraining seed s takes head seeds RANDOM_INIT_SEED_STRIDE * s + e for each
evaluation seed e: a fresh draw per pretraining seed, as a pretrained row's spread is one pretraining per seed.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cgns.benchmark.methods import RANDOM_INIT, MethodSpec, slug

RECORD = "benchmark_run.json"
RANDOM_INIT_SEED_STRIDE = 1000
REPO_ROOT = Path(__file__).resolve().parents[2]
IGNORED_IN_RECORD = ("--device",)      # where a run ran does not change what it computes
# flags the benchmark sets on each run -> the benchmark flag to use instead
OWNED_PRETRAIN_FLAGS = {"--config": "--preset", "--seed": "--seeds", "--output-dir": "--output-dir",
                        "--data-root": "--data-dir", "--method": "--methods"}
OWNED_EVAL_FLAGS = {"--checkpoint": "--methods", "--seeds": "--eval-seeds", "--output-dir": "--output-dir",
                    "--preset": "--preset", "--random-init": "(random init is a row of every benchmark)",
                    "--data-dir": "--data-dir", "--tasks": "--tasks"}


@dataclass(frozen=True)
class Settings:
    """What a benchmark asks for (the command line of `python -m cgns.benchmark`, parsed)."""
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...]
    output_dir: Path
    eval_seeds: tuple[int, ...] = (0, 1, 2)
    preset: str = "demo"
    data_dir: Path | None = None
    device: str | None = None
    tasks: tuple[str, ...] = ()                 # evaluate all --tasks; () = all of them
    pretrain_args: tuple[str, ...] = ()         # passed to every train_pretrain.py run
    eval_args: tuple[str, ...] = ()             # passed to every evaluate all run


@dataclass
class Job:
    kind: str                                   # "pretrain" | "evaluate"
    method: str                                 # a canonical method name, or RANDOM_INIT
    seed: int                                   # the pretraining seed
    directory: Path
    argv: list[str]                             # train_pretrain.main's / cgns.evaluate's arguments
    head_seeds: tuple[int, ...] = ()
    tasks: tuple[str, ...] = ()
    random_init: bool = False
    needs: list[Path] = field(default_factory=list)    # files that must exist before it runs

    @property
    def name(self) -> str:
        return f"{self.kind} {self.method} seed {self.seed}"

    def command(self) -> list[str]:
        """The subprocess command line."""
        if self.kind == "pretrain":
            return [sys.executable, str(REPO_ROOT / "train_pretrain.py"), *self.argv]
        return [sys.executable, "-m", "cgns.evaluate", *self.argv]

    @property
    def record_path(self) -> Path:
        return self.directory / RECORD

    def record(self) -> dict | None:
        """The benchmark_run.json of its last completed run, or None."""
        return json.loads(self.record_path.read_text()) if self.record_path.is_file() else None

    def comparable_argv(self) -> list[str]:
        return comparable(self.argv)

    def state(self) -> str:
        """'finished', 'resume' (an earlier attempt left checkpoints / cells) or 'new'."""
        record = self.record()
        if self.kind == "pretrain":
            if pretraining_finished(self.directory):
                return "finished"
            return "resume" if (self.directory / "checkpoints" / "latest.pt").is_file() else "new"
        if (self.directory / "table.json").is_file() and record and record["argv"] == self.comparable_argv():
            return "finished"
        return "resume" if any(self.directory.glob("*/seed*/metrics.json")) else "new"


def comparable(argv: list[str]) -> list[str]:
    """argv without the flags (and their values) that do not change a run's result."""
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in IGNORED_IN_RECORD:
            skip = True
        else:
            kept.append(word)
    return kept


def pretrain_dir(settings: Settings, method: str, seed: int) -> Path:
    return settings.output_dir / "pretrain" / slug(method) / f"seed{seed}"


def evaluate_dir(settings: Settings, method: str, seed: int) -> Path:
    return settings.output_dir / "evaluate" / slug(method) / f"seed{seed}"


def pretraining_finished(run_dir: Path) -> bool:
    """train_pretrain.py writes metrics.json when its run ends: at the end of the schedule (checkpoints/final.pt),
    or at --max-steps (its last state is checkpoints/latest.pt, which `evaluate all` reads from the run folder when
    there is no final.pt)."""
    checkpoints = run_dir / "checkpoints"
    return (run_dir / "metrics.json").is_file() and any((checkpoints / n).is_file() for n in ("final.pt", "latest.pt"))


def pretrain_job(settings: Settings, method: MethodSpec, seed: int) -> Job:
    directory = pretrain_dir(settings, method.name, seed)
    argv = ["--config", settings.preset, "--seed", str(seed), "--output-dir", str(directory), "--no-linear-eval",
            "--no-report", "--no-progress", *method.flags]
    if settings.data_dir is not None:
        argv += ["--data-root", str(Path(settings.data_dir) / "mimic_cxr")]
    if settings.device is not None:
        argv += ["--device", settings.device]
    return Job("pretrain", method.name, seed, directory, argv + list(settings.pretrain_args))


def evaluate_job(settings: Settings, method: str, seed: int, run_dir: Path, random_init: bool = False) -> Job:
    """`evaluate all` of the pretraining run in run_dir (its folder: final.pt, else latest.pt), or of its
    architecture at random init."""
    directory = evaluate_dir(settings, method, seed)
    heads = tuple(RANDOM_INIT_SEED_STRIDE * seed + e if random_init else e for e in settings.eval_seeds)
    argv = ["all", "--checkpoint", str(run_dir), "--seeds", *map(str, heads), "--preset", settings.preset,
            "--output-dir", str(directory), "--no-progress"]
    if random_init:
        argv.append("--random-init")
    if settings.tasks:
        argv += ["--tasks", *settings.tasks]
    if settings.data_dir is not None:
        argv += ["--data-dir", str(settings.data_dir)]
    if settings.device is not None:
        argv += ["--device", settings.device]
    tasks = settings.tasks or _all_tasks()
    return Job("evaluate", method, seed, directory, argv + list(settings.eval_args), heads, tuple(tasks),
               random_init, needs=[run_dir / "metrics.json"])


def _all_tasks() -> tuple[str, ...]:
    from cgns.evaluate.table import TASKS

    return TASKS


def plan(settings: Settings) -> list[Job]:
    """The matrix in the order it runs: per pretraining seed, each method's pretraining then its evaluation, then
    random init (the architecture and tokenizer of the first method's checkpoint of that seed)."""
    if not settings.methods:
        raise ValueError("no methods to benchmark")
    if not settings.seeds or len(set(settings.seeds)) != len(settings.seeds):
        raise ValueError(f"--seeds must be distinct integers, got {list(settings.seeds)}")
    if not settings.eval_seeds or len(set(settings.eval_seeds)) != len(settings.eval_seeds):
        raise ValueError(f"--eval-seeds must be distinct integers, got {list(settings.eval_seeds)}")
    if any(not 0 <= e < RANDOM_INIT_SEED_STRIDE for e in settings.eval_seeds):
        raise ValueError(f"--eval-seeds must lie in [0, {RANDOM_INIT_SEED_STRIDE}) (random init uses "
                         f"{RANDOM_INIT_SEED_STRIDE} * seed + e), got {list(settings.eval_seeds)}")
    for extra, owned, what in ((settings.pretrain_args, OWNED_PRETRAIN_FLAGS, "--pretrain-args"),
                               (settings.eval_args, OWNED_EVAL_FLAGS, "--eval-args")):
        taken = sorted({word.split("=")[0] for word in extra} & set(owned))
        if taken:
            raise ValueError(f"{what} may not set {', '.join(taken)}: the benchmark sets it per run (use "
                             f"{', '.join(owned[f] for f in taken)})")
    jobs = []
    for seed in settings.seeds:
        for method in settings.methods:
            pretrain = pretrain_job(settings, method, seed)
            jobs += [pretrain, evaluate_job(settings, method.name, seed, pretrain.directory)]
        first = pretrain_dir(settings, settings.methods[0].name, seed)
        jobs.append(evaluate_job(settings, RANDOM_INIT, seed, first, random_init=True))
    return jobs


def check_reuse(jobs: list[Job]) -> None:
    """A finished pretraining run whose recorded command is not the one asked for now is an error (its folder
    would silently stand for another configuration)."""
    for job in jobs:
        if job.kind != "pretrain" or job.state() != "finished":
            continue
        record = job.record()
        if record is not None and record["argv"] != job.comparable_argv():
            raise ValueError(f"{job.directory} holds a finished run of another command:\n  recorded: "
                             f"{' '.join(record['argv'])}\n  asked:    {' '.join(job.comparable_argv())}\n"
                             f"use another --output-dir, or delete that run to pretrain it again")
