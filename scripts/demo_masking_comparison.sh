#!/usr/bin/env bash
# The demo (`python train_pretrain.py`, the demo preset) as it is, with --mask-ratio 0.5, and with --mask-ratio 0.5
# --mir-masking input (MAE-style CM-MIR, which needs input masking), three seeds each; every run in its own folder
# (a finished one, with its metrics.json, is skipped; an interrupted one resumes), then one table of retrieval
# R@1/5/10 both ways, the CheXpert linear probe's test AUROC at 1/10/100% and the wall time, mean ± std over seeds.
#
#   scripts/demo_masking_comparison.sh [OUT_DIR]                  # about 3 x 3 x 11 min on 2 CPU cores
#   SEEDS="42" EXTRA="--max-steps 3" scripts/demo_masking_comparison.sh /tmp/check   # a quick check of the script
#   TABLE_ONLY=1 scripts/demo_masking_comparison.sh [OUT_DIR]     # only print the table of what is there
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/demo_masking_comparison}"
python=${PYTHON:-python}
read -r -a seeds <<< "${SEEDS:-0 1 2}"
read -r -a extra <<< "${EXTRA:-}"
declare -A variants=(
  [demo]=""
  [mask0.5]="--mask-ratio 0.5"
  [mask0.5_mir_input]="--mask-ratio 0.5 --mir-masking input"
)
if [ -z "${TABLE_ONLY:-}" ]; then
  for name in demo mask0.5 mask0.5_mir_input; do
    read -r -a flags <<< "${variants[$name]}"
    for seed in "${seeds[@]}"; do
      dir="$out/$name/seed$seed"
      if [ -f "$dir/metrics.json" ]; then echo "skip $dir (finished)"; continue; fi
      mkdir -p "$dir"
      echo "run $dir: train_pretrain.py --seed $seed ${flags[*]} ${extra[*]}"
      start=$(date +%s.%N)
      "$python" train_pretrain.py --seed "$seed" --output-dir "$dir" --no-progress --no-report \
        "${flags[@]}" "${extra[@]}" > "$dir/stdout.log" 2>&1
      # wall time of this invocation, added up over resumed invocations
      "$python" - "$dir" "$start" <<'PY'
import pathlib, sys, time
path = pathlib.Path(sys.argv[1]) / "wall_seconds"
before = float(path.read_text()) if path.is_file() else 0.0
path.write_text(f"{before + time.time() - float(sys.argv[2]):.1f}\n")
PY
    done
  done
fi
"$python" - "$out" "${seeds[@]}" <<'PY'
"""One table: mean ± std over seeds of each variant's metrics.json (retrieval, linear probe) and wall_seconds."""
import json, pathlib, statistics, sys

out, seeds = pathlib.Path(sys.argv[1]), sys.argv[2:]
columns = [(f"{way} R@{k}", ("val", f"retrieval/{way}_R@{k}")) for way in ("i2t", "t2i") for k in (1, 5, 10)]
columns += [(f"probe {pct}", ("linear_probe", "pretrained", key))
            for pct, key in (("1%", "0.01"), ("10%", "0.1"), ("100%", "1"))]
columns += [("wall min", ("wall",))]


def lookup(metrics, path):
    value = metrics
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def cell(values, scale=1.0):
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


rows = []
for name in ("demo", "mask0.5", "mask0.5_mir_input"):
    runs = []
    for seed in seeds:
        folder = out / name / f"seed{seed}"
        if not (folder / "metrics.json").is_file():
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        wall = folder / "wall_seconds"
        metrics["wall"] = float(wall.read_text()) / 60 if wall.is_file() else None
        runs.append(metrics)
    row = [f"{name} ({len(runs)} seed{'s' if len(runs) != 1 else ''})"]
    row += [cell([lookup(m, path) for m in runs]) for _, path in columns]
    rows.append(row)
header = ["variant"] + [title for title, _ in columns]
widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
print("-|-".join("-" * w for w in widths))
for row in rows:
    print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
PY
