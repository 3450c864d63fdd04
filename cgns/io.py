"""The one atomic write of the project: a file is either the old one or the whole new one, never half of either.

Every writer of a result (checkpoints, metrics.json, config.json, feature caches, report pages) goes through
`atomic_write`: write a temp file in the target's folder, flush and fsync it, rename it over the target, then fsync
the folder so that the rename itself survives a crash.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = True) -> Path:
    """Call write(f) on a temp file beside `path`, fsync, rename it to `path`, fsync the folder; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """with atomic_directory(out) as tmp: write the folder's files into tmp (beside `out`); on success tmp replaces
    `out` (an old `out` is removed first), on any error tmp is removed and `out` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """JSON with sorted keys and 2-space indent; non-JSON numbers (numpy, tensors) written as floats."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
