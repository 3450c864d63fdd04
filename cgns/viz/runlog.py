"""Read a run's log.jsonl (written by the pretraining engine) into train and validation records."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunLog:
    """The lines of log.jsonl split by kind, each a dict as written (see CONTRACTS: run directory)."""
    train: list = field(default_factory=list)
    val: list = field(default_factory=list)

    def keys(self, kind: str, prefix: str) -> list[str]:
        """Sorted keys starting with `prefix` that occur in any record of `kind` ('train' or 'val')."""
        found = set()
        for record in getattr(self, kind):
            found.update(k for k in record if k.startswith(prefix))
        return sorted(found)

    def series(self, kind: str, key: str):
        """(steps, values, stages) of the records of `kind` holding a numeric `key`, in file order."""
        steps, values, stages = [], [], []
        for record in getattr(self, kind):
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in record:
                steps.append(record["step"])
                values.append(float(value))
                stages.append(record.get("stage", 1))
        return steps, values, stages


def read_log(path: str | Path) -> RunLog:
    """Parse log.jsonl; a line that is not a JSON object, or lacks 'kind', is an error naming file and line.

    A truncated LAST line (a run killed mid-write) is skipped rather than fatal, since the report is often made
    for interrupted runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a pretraining run directory holds log.jsonl)")
    log = RunLog()
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or "kind" not in record:
            raise ValueError(f"{path}:{number}: expected a JSON object with a 'kind' field, got {line[:80]!r}")
        if record["kind"] == "train":
            log.train.append(record)
        elif record["kind"] == "val":
            log.val.append(record)
        # other kinds (e.g. 'event', 'linear') are not plotted here
    return log
