"""Optional TensorBoard event files for a run: TBWriter(run_dir) writes to <run_dir>/tensorboard when the
`tensorboard` package is importable, and is a silent no-op otherwise (it is not a dependency of this project).

The pretraining loop hands it the same records it appends to log.jsonl:
    writer = TBWriter(run_dir)            # on rank 0 only
    writer.log(record)                    # record = {"kind": "train", "step": 10, "loss/total": 1.2, ...}
    writer.add_scalar("loss/total", 1.2, step=10)   # or one value at a time
    writer.close()
Numbers become scalars, lists of numbers (e.g. cgns/cluster_sizes) become histograms; other values are ignored.
"""
from __future__ import annotations

import numbers
from pathlib import Path


def _summary_writer_class():
    """torch's SummaryWriter, or None when tensorboard (or a working protobuf under it) is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # ImportError, or a protobuf/tensorboard version clash surfacing as another error
        return None
    return SummaryWriter


class TBWriter:
    """Event-file writer for <run_dir>/<subdir>; `enabled` is False (and every call a no-op) without tensorboard."""

    def __init__(self, run_dir: str | Path, subdir: str = "tensorboard", enabled: bool = True):
        self.log_dir = Path(run_dir) / subdir
        writer_class = _summary_writer_class() if enabled else None
        self._writer = writer_class(log_dir=str(self.log_dir)) if writer_class is not None else None

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def log(self, record: dict, step: int | None = None) -> None:
        """Write every numeric field of `record` at `step` (default: record['step'])."""
        if self._writer is None:
            return
        step = record.get("step", 0) if step is None else step
        for key, value in record.items():
            if key in ("kind", "step", "stage", "epoch", "time") or isinstance(value, bool):
                continue
            if isinstance(value, numbers.Real):
                self._writer.add_scalar(key, float(value), step)
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, numbers.Real) for v in value):
                self._writer.add_histogram(key, _as_array(value), step)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), step)

    def add_histogram(self, tag: str, values, step: int) -> None:
        if self._writer is not None:
            self._writer.add_histogram(tag, _as_array(values), step)

    def add_image(self, tag: str, image, step: int) -> None:
        """image: uint8 array [H, W, 3] (e.g. an attention overlay)."""
        if self._writer is not None:
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TBWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_array(values):
    import numpy as np

    return np.asarray(values, dtype=np.float64)
