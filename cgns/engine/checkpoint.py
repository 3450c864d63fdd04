"""Atomic checkpoints, automatic resume, and refusal of a checkpoint written under another configuration.

Layout: <output_dir>/checkpoints/{latest.pt, stage1_last.pt, stage1_best.pt, final.pt}.
A checkpoint is a dict: model, config, optimizer, scaler, step, stage, epoch, args, rng (one state per rank),
data (sampler position), tokenizer_dir, ... (see CONTRACTS: run directory). It holds tensors and plain data only
(the RNG states too, see cgns.distributed.rng_state), so every file is read with torch.load(weights_only=True):
loading never runs code, and a file that would (a pickle carrying a callable) is refused by load_plain.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
from pathlib import Path

import torch

from cgns.io import atomic_torch_save

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
FINAL = "final.pt"


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write a checkpoint atomically (cgns.io.atomic_write): a kill never leaves half a file."""
    return atomic_torch_save(path, state)


class UnsafeFileError(ValueError):
    """A file that torch.load(weights_only=True) refuses: it carries code or objects that are not plain data."""


def _legacy_numpy_globals() -> list:
    """What numpy arrays of numbers need to unpickle: checkpoints written before the RNG states became tensors held
    numpy's generator state as an array. Arrays are rebuilt from their bytes; nothing in them is called."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct   # numpy 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct    # numpy 1
    return [np.ndarray, np.dtype, _reconstruct, type(np.dtype(np.uint32))]


def load_plain(path: str | os.PathLike, what: str = "file", map_location="cpu", legacy_numpy: bool = False):
    """torch.load(path, weights_only=True) with errors that name the file: tensors, numbers, strings, lists,
    tuples and dicts come back; a pickle that would import or call anything else is refused (UnsafeFileError)
    before any of it runs. legacy_numpy: also accept numpy arrays (old checkpoints' RNG states)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    # safe_globals: torch >= 2.5 (older torch reads only the current checkpoints, not the numpy-array ones)
    allowed = _legacy_numpy_globals() if legacy_numpy and hasattr(torch.serialization, "safe_globals") else []
    try:
        with torch.serialization.safe_globals(allowed) if allowed else contextlib.nullcontext():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).split("WeightsUnpickler error:")[-1].strip().split("\n")[0].split(" Please use")[0]
        if "global" not in reason.lower():  # a damaged or foreign file, not one that names code to import
            raise ValueError(f"{what} {path}: cannot be read (not a torch file, or damaged: {reason})") from None
        raise UnsafeFileError(
            f"{what} {path}: refused: it carries code or objects that are not plain data (tensors, numbers, "
            f"strings, lists, dicts), and loading it could run code; nothing in it was executed. Only load files "
            f"written by this project or by torch.save of plain state dicts ({reason})") from None
    except Exception as err:
        raise ValueError(f"{what} {path}: cannot be read ({type(err).__name__}: {err})") from err


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint this project wrote; a clear error if it is missing, not one of ours, or not plain data."""
    path = Path(path)
    state = load_plain(path, "checkpoint", map_location, legacy_numpy=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"checkpoint {path}: not a pretraining checkpoint (expected a dict with a 'model' key)")
    return state


def find_resume(output_dir: str | os.PathLike | None) -> Path | None:
    """The checkpoint to resume from in output_dir (latest.pt), or None for a fresh run."""
    if output_dir is None:
        return None
    latest = checkpoint_dir(output_dir) / LATEST
    return latest if latest.is_file() else None


def config_defaults(config) -> dict:
    """The defaults of a config dataclass (an instance or the class): {field: default} for every field that has one
    (default or default_factory). A field absent from a checkpoint's saved config was added after it was written,
    so that run had the field's default behaviour; config_mismatches compares it as that default."""
    if config is None or not dataclasses.is_dataclass(config):
        return {}
    out = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def config_mismatches(saved: dict, current: dict, keys=None, defaults: dict | None = None) -> list[str]:
    """Names and values of the fields that differ, as 'field: checkpoint=X, now=Y' strings.

    defaults ({field: value}, config_defaults): a field absent from `saved` but named there compares as its default
    (the checkpoint predates the field, so it was trained with the default); it is named only when `current` sets
    it to something else. A field absent from `saved` without a default is always named."""
    names = sorted(set(saved) | set(current)) if keys is None else list(keys)
    defaults = defaults or {}
    missing = object()
    out = []
    for name in names:
        a, b = saved.get(name, missing), current.get(name, missing)
        if a is missing and b is missing:
            continue
        if a is missing and name in defaults:
            if _normalise(defaults[name]) != _normalise(b):
                out.append(f"{name}: checkpoint=<absent: written before the field existed, so trained with its "
                           f"default {defaults[name]!r}>, now={b!r}")
            continue
        if _normalise(a) != _normalise(b):
            show = lambda v: "<absent>" if v is missing else repr(v)  # noqa: E731
            out.append(f"{name}: checkpoint={show(a)}, now={show(b)}")
    return out


def _normalise(value):
    # JSON round-trips turn tuples into lists; compare them as equal
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def check_compatible(path, saved: dict, current: dict, what: str, keys=None, defaults: dict | None = None) -> None:
    """Refuse a checkpoint whose `what` (e.g. 'model config') differs, naming every mismatched field; fields the
    checkpoint predates count as their `defaults` (see config_mismatches)."""
    problems = config_mismatches(saved, current, keys, defaults)
    if problems:
        raise ValueError(f"checkpoint {path} was written with a different {what}; refusing to load it. "
                         f"Mismatched: " + "; ".join(problems)
                         + ". Use another --output-dir, or the original settings.")
