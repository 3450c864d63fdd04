"""One line per run under a folder (default runs/) from its metrics.json: detection val / test mAP and AP50, other
runs' metrics as JSON; then the mean of each group of seeds (run names ending _s<seed>).

    python scripts/summarise_runs.py OUT.json [RUNS_DIR]
"""
import json
import sys
from pathlib import Path

rows = {}
for m in sorted(Path(sys.argv[2] if len(sys.argv) > 2 else "runs").glob("*/metrics.json")):
    d = json.loads(m.read_text())
    name = m.parent.name
    if "primary_metric" in d and "mAP" in d.get("test", {}):
        t, v = d["test"], d["val"]
        rows[name] = dict(val_mAP=v.get("mAP"), test_mAP=t.get("mAP"), test_AP50=t.get("AP50"),
                          skip_mAP=t.get("skip_empty/mAP"))
        print(f"{name:28s} val mAP {100*v['mAP']:5.1f}  test mAP {100*t['mAP']:5.1f}  AP50 {100*t['AP50']:5.1f}")
    else:
        rows[name] = {k: d[k] for k in d if k not in ("args",)}
        print(name, json.dumps(rows[name])[:600])
groups = {}
for name, r in rows.items():
    if "test_mAP" in r and "_s" in name:
        groups.setdefault(name.rsplit("_s", 1)[0], []).append(r)
for g, rs in sorted(groups.items()):
    n = len(rs)
    print(f"{g:24s} n={n} mean val mAP {100*sum(r['val_mAP'] for r in rs)/n:5.1f} test mAP "
          f"{100*sum(r['test_mAP'] for r in rs)/n:5.1f} AP50 {100*sum(r['test_AP50'] for r in rs)/n:5.1f}")
json.dump(rows, open(sys.argv[1], "w"), indent=1, default=str)
