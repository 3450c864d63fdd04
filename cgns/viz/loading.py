"""Rebuild a finished (or interrupted) pretraining run for inspection: model from its checkpoint, validation data."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

CHECKPOINT_ORDER = ("final.pt", "latest.pt", "stage1_last.pt", "stage1_best.pt")
DATASET = "mimic_cxr"


@dataclass
class LoadedRun:
    model: torch.nn.Module        # CGNSModel in eval mode
    dataset: object               # the validation PretrainDataset
    data_root: Path               # the MIMIC-CXR folder the run trained on
    cache_size: int
    checkpoint: Path
    stage: int                    # the stage the checkpoint was written in


def pick_checkpoint(run_dir: Path) -> Path:
    """final.pt, else latest.pt, else a stage-1 checkpoint."""
    for name in CHECKPOINT_ORDER:
        path = run_dir / "checkpoints" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{run_dir}/checkpoints: none of {', '.join(CHECKPOINT_ORDER)} found")


def model_from_checkpoint(state: dict, path: Path, device: str = "cpu") -> torch.nn.Module:
    from cgns.models.cgns import CGNSConfig
    from cgns.models.peer import build_model

    if "config" not in state:
        raise ValueError(f"{path}: no 'config' in the checkpoint (not written by train_pretrain.py)")
    # backbone weights come with the state dict; the original weight file may no longer exist
    config = CGNSConfig.from_dict({**state["config"], "image_weights": None})
    model = build_model(config, state.get("tokenizer_dir"))     # CGNSModel, or a peer's (its word-piece table)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def load_run(run_dir: str | Path, *, device: str = "cpu", data_root: str | Path | None = None,
             checkpoint: str | Path | None = None) -> LoadedRun:
    """The run's model and validation set, built exactly as training built them (image size, cache, tokenizer)."""
    from cgns.data.roots import resolve_data_root
    from cgns.data.datasets import build
    from cgns.engine.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    path = Path(checkpoint) if checkpoint is not None else pick_checkpoint(run_dir)
    state = load_checkpoint(path)
    model = model_from_checkpoint(state, path, device)
    config_path = run_dir / "config.json"
    settings = json.loads(config_path.read_text()) if config_path.is_file() else dict(state.get("args") or {})
    data, loop = settings.get("data", {}), settings.get("loop", {})
    root = resolve_data_root(DATASET, data_root if data_root is not None else data.get("data_root"))
    cache_size = int(data.get("cache_size", 256))
    tokenizer_dir = state.get("tokenizer_dir") or state["config"].get("tokenizer_dir")
    tokenizer = tokenizer_dir if tokenizer_dir and Path(tokenizer_dir).is_dir() else None
    config = model.config
    dataset = build("pretrain", DATASET, "valid", data_root=root, image_size=config.image_size, tokenizer=tokenizer,
                    max_length=config.max_length, cache_size=cache_size, seed=int(loop.get("seed", 42)))
    return LoadedRun(model, dataset, Path(root), cache_size, path, int(state.get("stage", 1)))
