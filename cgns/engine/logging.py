"""Rank-0 run logging: a tqdm bar with samples/s, and log.jsonl (one JSON object per log step).

log.jsonl lines (CONTRACTS: run directory):
  {"kind": "train", "step", "stage", "epoch", "lr", "samples_per_s", "loss/<term>", "loss/total", "cgns/<stat>"}
  {"kind": "val", "step", "stage", "epoch", "val/loss/<term>", "retrieval/i2t_R@1", ...}
  {"kind": "event", "step", "stage", "message"}   (stage switches, resumes, skipped steps)
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch


def to_json_value(value):
    """Tensors and numpy scalars -> float / list of floats; non-finite floats -> None (JSON has no NaN)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu()
        value = value.item() if value.numel() == 1 and value.dim() == 0 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [to_json_value(v) for v in value]
    return value


class RunLogger:
    """Writes log.jsonl and drives the progress bar; every method is a no-op off rank 0."""

    def __init__(self, output_dir: str | os.PathLike | None, is_main: bool, tensorboard: bool = True):
        self.is_main = is_main and output_dir is not None
        self.bar = None
        self.tb = None
        self._file = None
        if not self.is_main:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "log.jsonl"
        if tensorboard:
            try:
                from cgns.viz.tensorboard import TBWriter
            except ImportError:
                TBWriter = None
            self.tb = TBWriter(str(out)) if TBWriter is not None else None

    def start_bar(self, total: int, initial: int, desc: str) -> None:
        if not self.is_main:
            return
        from tqdm import tqdm

        self.close_bar()
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True,
                        file=sys.stderr, mininterval=1.0)

    def advance(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                     refresh=False)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def write(self, record: dict) -> None:
        """Append one JSON line (values made JSON-safe) and mirror scalars to TensorBoard when present."""
        if not self.is_main:
            return
        clean = {k: to_json_value(v) for k, v in record.items()}
        if self._file is None:  # append: a resumed run continues the same log
            self._file = open(self.path, "a", buffering=1)
        self._file.write(json.dumps(clean) + "\n")
        if self.tb is not None and clean.get("kind") in ("train", "val"):
            self.tb.log(clean)

    def event(self, message: str, **fields) -> None:
        """A human-readable event: printed (above the bar) and logged as kind='event'."""
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, flush=True)
        self.write({"kind": "event", "message": message, "time": time.time(), **fields})

    def close(self) -> None:
        self.close_bar()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tb is not None and hasattr(self.tb, "close"):
            self.tb.close()


class Throughput:
    """Samples per second between two log steps (wall clock; the caller syncs the device at log steps)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.samples = 0
        self.start = time.perf_counter()

    def add(self, samples: int) -> None:
        self.samples += samples

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.samples / elapsed if elapsed > 0 else 0.0
