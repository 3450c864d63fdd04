"""`python -m cgns.benchmark`: flags, the runners (subprocess or in-process) and the loop over the matrix."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from cgns.benchmark.compare import compare, write_comparison
from cgns.benchmark.estimate import demo_cell_seconds, describe, estimate
from cgns.benchmark.methods import METHODS, RANDOM_INIT, WEIGHTS, parse_methods
from cgns.benchmark.plan import REPO_ROOT, Job, Settings, check_reuse, plan, pretraining_finished
from cgns.io import atomic_write_json

DEFAULT_METHODS = ("cgns", "convirt", "gloria", "mgca")
LOG = "benchmark.log"


def method_table() -> str:
    rows = [f"  {name:<15} {' '.join(m.flags) or '(no flag: the default objective)':<20} {m.about}"
            + (f" [variants: {', '.join(m.variants)}]" if m.variants else "") for name, m in METHODS.items()]
    weights = [f"  @{key}=W{'':<10} {flag} W ({what})" for key, (flag, what) in WEIGHTS.items()]
    return "methods (train_pretrain.py flags):\n" + "\n".join(rows) + "\nweight variants:\n" + "\n".join(weights)


def build_parser() -> argparse.ArgumentParser:
    from cgns.evaluate.table import TASKS

    parser = argparse.ArgumentParser(
        "python -m cgns.benchmark", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain each method per pretraining seed on the same data, encoders and loop, run "
                    "`evaluate all` on each checkpoint and on random init, and write one comparison table.",
        epilog=method_table())
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="methods to compare, e.g. cgns convirt gloria mgca cgns-no-cgns cgns@w3=0.5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining seeds")
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="head seeds of every evaluation (a seed's value is the mean over them; one head seed "
                             "leaves the probes' head noise in the seed-to-seed spread)")
    parser.add_argument("--output-dir", default="runs/benchmark")
    parser.add_argument("--preset", choices=("demo", "paper"), default="demo",
                        help="train_pretrain.py --config and evaluate all --preset")
    parser.add_argument("--data-dir", "--data-root", dest="data_dir", default=None,
                        help="a folder holding one sub-folder per data set (mimic_cxr, chexpert, rsna, covidx, siim, "
                             "object_cxr); default: the demo world")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help="evaluate all --tasks (default: all)")
    parser.add_argument("--reference", default="convirt",
                        help="the method each other one is paired against (by pretraining seed)")
    parser.add_argument("--device", default=None, help="passed to every run (default: theirs)")
    parser.add_argument("--pretrain-args", default="", help="more train_pretrain.py flags for every run, one string "
                                                            "(e.g. \"--max-steps 100\")")
    parser.add_argument("--eval-args", default="", help="more `evaluate all` flags for every run, one string")
    parser.add_argument("--in-process", action="store_true",
                        help="call train_pretrain.main / cgns.evaluate in this process instead of a subprocess each")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (runs, commands, estimate) and exit")
    parser.add_argument("--table-only", action="store_true",
                        help="write the comparison table from the evaluations finished so far, run nothing")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def settings_from(args) -> Settings:
    return Settings(methods=tuple(parse_methods(args.methods)), seeds=tuple(args.seeds),
                    output_dir=Path(args.output_dir).resolve(), eval_seeds=tuple(args.eval_seeds),
                    preset=args.preset, data_dir=Path(args.data_dir).resolve() if args.data_dir else None,
                    device=args.device, tasks=tuple(args.tasks or ()),
                    pretrain_args=tuple(shlex.split(args.pretrain_args)), eval_args=tuple(shlex.split(args.eval_args)))


def run_subprocess(job: Job, log_path: Path) -> None:
    """Run the job's command with its output in log_path; a non-zero exit is an error quoting the log's end."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(job.command())}\n")
        log.flush()
        code = subprocess.run(job.command(), stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{job.name} failed (exit status {code}); its log: {log_path}\n{tail}")


def run_in_process(job: Job, log_path: Path) -> None:
    """Call train_pretrain.main / cgns.evaluate.cli.main with stdout to log_path."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    if job.kind == "pretrain":
        import train_pretrain
        entry = train_pretrain.main
    else:
        from cgns.evaluate.cli import main as entry
    with open(log_path, "a") as log, contextlib.redirect_stdout(log):
        print(f"$ (in process) {shlex.join(job.argv)}", flush=True)
        entry(list(job.argv))


def unfinished(job: Job) -> str | None:
    """What a job that just ran failed to leave behind, or None."""
    if job.kind == "pretrain":
        done = pretraining_finished(job.directory)
        return None if done else f"metrics.json and a checkpoint in {job.directory}"
    return None if (job.directory / "table.json").is_file() else str(job.directory / "table.json")


def run_job(job: Job, runner: Callable[[Job, Path], None]) -> dict:
    """Run one unfinished job and record it (benchmark_run.json) -> the record."""
    missing = [str(p) for p in job.needs if not p.is_file()]
    if missing:
        raise RuntimeError(f"{job.name} needs {', '.join(missing)}, which the run before it did not produce")
    resumed = job.state() == "resume"
    demo_seconds = demo_cell_seconds(job) if job.kind == "evaluate" else None
    job.directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runner(job, job.directory / LOG)
    seconds = time.perf_counter() - start
    gap = unfinished(job)
    if gap:
        raise RuntimeError(f"{job.name} ended without {gap}; its log: {job.directory / LOG}")
    record = {"argv": job.comparable_argv(), "seconds": round(seconds, 1), "resumed": resumed,
              "demo_seconds": demo_seconds, "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    atomic_write_json(job.record_path, record)
    return record


def print_plan(jobs: list[Job], settings: Settings, out=print, commands: bool = True) -> None:
    out(f"benchmark: {len(settings.methods)} method(s) x {len(settings.seeds)} pretraining seed(s) "
        f"({', '.join(m.name for m in settings.methods)}; seeds {' '.join(map(str, settings.seeds))}), "
        f"random init per seed, {settings.preset} preset, head seeds {' '.join(map(str, settings.eval_seeds))}, "
        f"output {settings.output_dir}")
    for job in jobs if commands else ():
        out(f"  [{job.state():>8}] {job.name}: {shlex.join(job.command())}")


def title(settings: Settings) -> str:
    return (f"Benchmark, {settings.preset} preset: pretraining seeds {' '.join(map(str, settings.seeds))}, head "
            f"seeds {' '.join(map(str, settings.eval_seeds))}")


def write_table(jobs: list[Job], settings: Settings, reference: str, with_plot: bool = True) -> dict:
    methods = [RANDOM_INIT] + [m.name for m in settings.methods]
    return write_comparison(settings.output_dir, compare(jobs, methods, reference), title(settings), with_plot)


def run_benchmark(settings: Settings, reference: str = "convirt", runner: Callable[[Job, Path], None] = run_subprocess,
                  progress: bool = True, dry_run: bool = False, table_only: bool = False, out=print) -> dict:
    """Plan, estimate, run what is not finished, write the table -> {"jobs", "estimate", "paths"}."""
    from tqdm import tqdm

    jobs = plan(settings)
    check_reuse(jobs)
    if reference not in [m.name for m in settings.methods]:
        out(f"note: the reference {reference!r} is not benchmarked; the table has no paired differences")
    expected = estimate(jobs, settings.preset, extra_flags=bool(settings.pretrain_args or settings.eval_args))
    if not table_only:
        print_plan(jobs, settings, out, commands=dry_run)
        out(describe(expected))
    if dry_run:
        return {"jobs": jobs, "estimate": expected, "paths": None}
    if not table_only:
        bar = tqdm(jobs, desc="benchmark", unit="run", disable=not progress, dynamic_ncols=True)
        for job in bar:
            bar.set_postfix_str(job.name)
            if job.state() != "finished":
                run_job(job, runner)
                if job.kind == "evaluate":      # the table so far, readable while the matrix runs
                    write_table(jobs, settings, reference, with_plot=False)
    paths = write_table(jobs, settings, reference)
    out(Path(paths["markdown"]).read_text(), end="")
    out(f"table: {paths['markdown']} {paths['csv']} {paths['plot']}")
    return {"jobs": jobs, "estimate": expected, "paths": paths}


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
        return run_benchmark(settings, args.reference, run_in_process if args.in_process else run_subprocess,
                             progress=not args.no_progress, dry_run=args.dry_run, table_only=args.table_only)
    except ValueError as err:
        parser.error(str(err))
    except RuntimeError as err:             # a run failed: what finished is kept, the same command continues
        raise SystemExit(f"benchmark stopped: {err}\nthe runs that finished are kept; the same command continues "
                         f"from here") from None
