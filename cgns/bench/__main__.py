"""`python -m cgns.bench [--quick] [--only AREA ...] [--json FILE]`: every benchmark, one table.

Each area is a module cgns/bench/<area>.py with run(quick: bool) -> list of rows
{section, name, ours, baseline, unit, ratio, note}; ratio > 1 means ours is better than the baseline
measured in the same run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback

AREAS = ("kernels", "heads", "grounding", "pretrain", "masking", "loader", "linear", "synthetic")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--only", nargs="+", choices=AREAS, default=None, help="areas to run")
    parser.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    return parser


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    columns = ("section", "name", "ours", "baseline", "unit", "ratio", "note")
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    rows, failed = [], []
    for area in args.only or AREAS:
        try:
            module = importlib.import_module(f"cgns.bench.{area}")
        except ModuleNotFoundError as err:
            if err.name == f"cgns.bench.{area}":
                continue
            raise
        start = time.perf_counter()
        try:
            area_rows = module.run(quick=args.quick)
        except Exception:  # one broken area must not hide the others' numbers
            traceback.print_exc()
            failed.append(area)
            continue
        print(f"[bench] {area}: {len(area_rows)} rows in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        rows.extend(area_rows)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2, default=float)
    if failed:
        raise SystemExit(f"benchmark areas failed: {', '.join(failed)}")
    return rows


if __name__ == "__main__":
    main()
