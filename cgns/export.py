"""Hand a pretrained model to someone else: a folder of safetensors, transformers and JSON files, no pickles needed.

    python -m cgns.export runs/pretrain_demo/checkpoints/final.pt --out exported/
    python -m cgns.export runs/pretrain_demo --out exported/          # a run folder: its final.pt, else latest.pt

Layout of DIR:
    image_encoder.safetensors   the image backbone as a timm ViT / torchvision ResNet-50 state dict (the checkpoint's
    image_encoder.pth           `image_encoder.backbone.` prefix removed; no classifier), the same tensors twice:
                                  timm.create_model("vit_tiny_patch16_224", img_size=S, num_classes=0)
                                  torchvision.models.resnet50() with .fc = torch.nn.Identity()
                                load either with strict=True (this project depends on neither library: the in-repo
                                ViT / ResNet-50 use their parameter names, tests/test_models_weights.py)
    text_encoder/               the BERT and the tokenizer as a transformers folder (AutoModel / AutoTokenizer)
    heads.safetensors           every other parameter and buffer of the CGNSModel (projections, report pooling,
                                ResNet attention pooling, cross-attention, ...) or of a peer's PeerModel
                                (objective.*: its heads, MGCA's prototypes), under their model names
    config.json                 the model configuration, the image cache size (preprocessing) and how to load each part

`cgns.load_model(DIR)` reads the folder back into the same model (same embeddings as the checkpoint).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from cgns.io import atomic_directory

FORMAT = "cgns-export"
VERSION = 1
CONFIG = "config.json"
IMAGE_FILE, IMAGE_PTH, HEADS_FILE, TEXT_DIR = ("image_encoder.safetensors", "image_encoder.pth", "heads.safetensors",
                                               "text_encoder")
IMAGE_PREFIX, TEXT_PREFIX = "image_encoder.backbone.", "text_encoder.bert."
TIMM_NAMES = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
              "vit_base": "vit_base_patch16_224"}


def loading_recipe(image_encoder: str, image_size: int) -> str:
    """How a timm / torchvision user builds the module that image_encoder.pth loads into with strict=True."""
    if image_encoder == "resnet50":
        return "model = torchvision.models.resnet50(); model.fc = torch.nn.Identity()"
    return f'model = timm.create_model("{TIMM_NAMES[image_encoder]}", img_size={image_size}, num_classes=0)'


def split_state(state: dict) -> tuple[dict, dict, dict]:
    """A CGNSModel state dict -> (image backbone without its prefix, BERT without its prefix, everything else)."""
    image, text, heads = {}, {}, {}
    for key, value in state.items():
        if key.startswith(IMAGE_PREFIX):
            image[key[len(IMAGE_PREFIX):]] = value
        elif key.startswith(TEXT_PREFIX):
            text[key[len(TEXT_PREFIX):]] = value
        else:
            heads[key] = value
    return image, text, heads


def export_model(model, tokenizer, out: str | os.PathLike, cache_size: int, source: str = "") -> Path:
    """Write `model` (a CGNSModel) and its tokenizer to the folder `out` (replaced whole, never half-written)."""
    from safetensors.torch import save_file

    out = Path(out)
    config = model.config.to_dict()
    image, _, heads = split_state(model.state_dict())
    plain = lambda tensors: {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}  # noqa: E731
    with atomic_directory(out) as tmp:
        save_file(plain(image), str(tmp / IMAGE_FILE), metadata={"format": "pt"})
        torch.save(plain(image), tmp / IMAGE_PTH)
        save_file(plain(heads), str(tmp / HEADS_FILE), metadata={"format": "pt"})
        model.text_encoder.bert.save_pretrained(str(tmp / TEXT_DIR), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp / TEXT_DIR))
        description = {
            "format": FORMAT, "version": VERSION, "source": source,
            "model": {**config, "image_weights": None, "text_encoder": TEXT_DIR, "tokenizer_dir": TEXT_DIR},
            "cache_size": int(cache_size),
            "image_encoder": {"architecture": config["image_encoder"], "image_size": config["image_size"],
                              "files": [IMAGE_FILE, IMAGE_PTH], "removed_prefix": IMAGE_PREFIX,
                              "load": loading_recipe(config["image_encoder"], config["image_size"])},
            "text_encoder": {"folder": TEXT_DIR, "load": f'transformers.AutoModel.from_pretrained("{TEXT_DIR}"), '
                                                          f'AutoTokenizer.from_pretrained("{TEXT_DIR}")'},
            "heads": HEADS_FILE,
        }
        (tmp / CONFIG).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    return out


def is_export(path: str | os.PathLike) -> bool:
    """True for a folder written by export_model (its config.json says so)."""
    config = Path(path) / CONFIG
    if not (Path(path).is_dir() and config.is_file()):
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except (ValueError, AttributeError):
        return False


def read_export(path: str | os.PathLike, random_init: bool = False):
    """(CGNSModel, tokenizer folder, image cache size) from an exported folder; weights read with safetensors.

    random_init: the same architecture with fresh weights (a random BERT of the exported one's sizes)."""
    from safetensors.torch import load_file
    from transformers import BertConfig

    from cgns.models.cgns import CGNSConfig
    from cgns.models.peer import build_model

    path = Path(path)
    description = json.loads((path / CONFIG).read_text())
    if description.get("version") != VERSION:
        raise ValueError(f"{path / CONFIG}: export version {description.get('version')!r}, this code reads "
                         f"{VERSION}")
    text_dir = path / TEXT_DIR
    values = {**description["model"], "text_encoder": str(text_dir), "tokenizer_dir": str(text_dir)}
    if random_init:
        bert = BertConfig.from_pretrained(str(text_dir), local_files_only=True)
        values.update(text_encoder=None, text_vocab_size=bert.vocab_size, text_hidden_size=bert.hidden_size,
                      text_layers=bert.num_hidden_layers, text_heads=bert.num_attention_heads,
                      text_max_positions=bert.max_position_embeddings)
    model = build_model(CGNSConfig.from_dict(values))        # the BERT loads from text_encoder/ (safetensors)
    if not random_init:
        _, text, _ = split_state(model.state_dict())
        state = {**{IMAGE_PREFIX + k: v for k, v in _load(load_file, path / IMAGE_FILE).items()},
                 **{TEXT_PREFIX + k: v for k, v in text.items()}, **_load(load_file, path / HEADS_FILE)}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: the exported files do not match the model its config.json describes: "
                             f"{err}") from None
    return model.eval(), str(text_dir), int(description.get("cache_size", 256))


def _load(load_file, file: Path) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"exported model: {file} is missing")
    return load_file(str(file))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m cgns.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a pretraining checkpoint (.pt) or run folder (checkpoints/final.pt, "
                                           "else latest.pt)")
    parser.add_argument("--out", required=True, help="the folder to write (replaced if it exists)")
    return parser


def main(argv=None) -> Path:
    from cgns.model_api import load_model, resolve_checkpoint

    args = get_args_parser().parse_args(argv)
    checkpoint = resolve_checkpoint(Path(args.checkpoint))
    loaded = load_model(checkpoint)
    out = export_model(loaded.model, loaded.tokenizer, args.out, loaded.cache_size,
                       source="/".join(checkpoint.resolve().parts[-3:]))
    print(f"exported {loaded.config.image_encoder}@{loaded.image_size}px model to {out}: "
          f"{', '.join(sorted(p.name for p in out.iterdir()))}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
