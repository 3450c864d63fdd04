"""The one way the entry points report results: <output-dir>/metrics.json and the `final:` line. (Their flags
come from the run configurations, cgns.config.)"""
from __future__ import annotations

import os
from pathlib import Path

from cgns.io import atomic_write_json


def write_metrics(output_dir: str | os.PathLike, metrics: dict) -> Path:
    """Write <output_dir>/metrics.json atomically."""
    return atomic_write_json(Path(output_dir) / "metrics.json", metrics)


def _flatten(metrics: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def print_final(metrics: dict, label: str = "final") -> str:
    """Print the final metrics as one line `final: a=0.8123 b/c=12` and return it."""
    parts = []
    for key, value in _flatten(metrics).items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4f}")
        elif isinstance(value, (int, str)) or value is None:
            parts.append(f"{key}={value}")
    line = f"{label}: " + " ".join(parts)
    print(line, flush=True)
    return line
