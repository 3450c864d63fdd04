"""A trained CM-CGNS model behind one small interface, for evaluation and for anyone the model is handed to.

    from cgns import load_model
    model = load_model("runs/pretrain_demo")            # a run folder, a checkpoint file, or an exported folder
    images = model.encode_images([pil_image, "x.png"])  # [B, D] unit norm
    texts = model.encode_texts(["small left pleural effusion"])   # [N, D] unit norm
    maps = model.similarity_maps(images_or_tensor, texts)         # [B, gh, gw], text i against image i

Everything a checkpoint's training used is read from it: the model configuration, the tokenizer folder, the image
cache size. Images go through the pretraining pipeline (grey, long side resized to the cache size and zero-padded
to a square, resized to image_size / (7/8) and centre-cropped, normalised to [-1, 1]); texts through its sentence
splitting (cgns.data.reports.split_sentences) and tokenisation (cgns.data.tokenizer.encode_sentences).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch

DEFAULT_CACHE_SIZE = 256
RUN_CHECKPOINTS = ("final.pt", "latest.pt")


class PretrainedModel:
    """A CGNSModel (or a peer objective's PeerModel, cgns.models.peer) in eval mode with its tokenizer and
    preprocessing; every method runs without gradients and splits its input into chunks of `batch_size`. Outputs
    are float32 on the CPU."""

    def __init__(self, model, tokenizer, cache_size: int = DEFAULT_CACHE_SIZE, batch_size: int = 32,
                 device: str | torch.device = "cpu", source: str = ""):
        from cgns.data.transforms import CropTransform

        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.cache_size = int(cache_size)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.source = source
        self.config = model.config                          # the CGNSConfig the model was built from
        self.image_size = int(model.config.image_size)
        self.patch_grid = tuple(model.image_encoder.grid)   # (gh, gw)
        self._crop = CropTransform(self.image_size, train=False)

    def __repr__(self) -> str:
        return (f"PretrainedModel({self.config.image_encoder}@{self.image_size}px, embed_dim "
                f"{self.config.embed_dim}, from {self.source or 'random init'})")

    # ---- inputs ------------------------------------------------------------------------------------------------
    def preprocess(self, image) -> torch.Tensor:
        """A PIL image, an image file (PNG, JPEG, DICOM) or a uint8 grey array [H, W] -> float [3, S, S], the
        pretraining eval transform (the image cache's resize-and-pad, then the centre crop; S = image_size)."""
        import numpy as np
        from PIL import Image

        from cgns.data.cache import _to_grey, read_image_sized
        from cgns.data.transforms import resize_pad

        if isinstance(image, (str, os.PathLike)):
            grey, size = read_image_sized(image, min_size=self.cache_size)   # as the cache decoded it
        elif isinstance(image, Image.Image):
            grey = _to_grey(image)
            size = grey.shape
        elif isinstance(image, np.ndarray) and image.ndim == 2 and image.dtype == np.uint8:
            grey, size = image, image.shape
        else:
            raise TypeError(f"preprocess takes a PIL image, a file path or a uint8 [H, W] array, got "
                            f"{type(image).__name__}")
        square, _ = resize_pad(grey, self.cache_size, original_shape=size)
        return self._crop(torch.from_numpy(square))

    def image_batch(self, images) -> torch.Tensor:
        """A preprocessed float tensor [B, 3, S, S] as it is, or a list of images / paths preprocessed and stacked."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"an image tensor must be [B, 3, H, W] (preprocessed), got {tuple(images.shape)}")
            return images.float()
        images = list(images)
        if not images:
            return torch.zeros(0, 3, self.image_size, self.image_size)
        return torch.stack([self.preprocess(image) for image in images])

    def text_sentences(self, text: str, report: bool = False) -> list[str]:
        """The sentences pretraining would make of `text`: split_sentences (lower case, word tokens, split on '.' and
        enumerations, one-word pieces dropped); report=True first takes IMPRESSION then FINDINGS of a full radiology
        report, as the MIMIC-CXR reader does. A text with no sentence of two words (a single word) is kept whole."""
        from cgns.data.reports import report_parts, split_sentences

        parts = report_parts(text) if report else [text]
        sentences = [sentence for part in parts for sentence in split_sentences(part)]
        if not sentences and text.strip():
            sentences = [" ".join(text.lower().split())]
        return sentences

    def tokenize(self, texts: Sequence[str], report: bool = False) -> dict[str, torch.Tensor]:
        """-> input_ids, attention_mask, sentence_index: long [N, max_length], as the pretraining dataset makes them."""
        from cgns.data.tokenizer import encode_sentences

        rows = []
        for number, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {number} is a {type(text).__name__}, not a str")
            sentences = self.text_sentences(text, report)
            if not sentences:
                raise ValueError(f"text {number} ({text!r}) has no words to encode")
            rows.append(encode_sentences(self.tokenizer, sentences, self.config.max_length))
        if not rows:
            empty = torch.zeros(0, self.config.max_length, dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone(), "sentence_index": empty.clone()}
        return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}

    # ---- outputs -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        """images: float [B, 3, S, S] preprocessed, or a list of PIL images / paths -> [B, D], unit norm."""
        chunks = []
        for chunk in self._image_chunks(images):
            chunks.append(self.model.encode_image(chunk.to(self.device)).float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.config.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], report: bool = False) -> torch.Tensor:
        """texts: list of str (report=True: full radiology reports, see text_sentences) -> [N, D], unit norm."""
        texts = _as_list(texts)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenize(texts[start:start + self.batch_size], report)
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            chunks.append(self.model.encode_text(tokens["input_ids"], tokens["attention_mask"],
                                                 tokens["sentence_index"]).float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.config.embed_dim)

    @torch.no_grad()
    def similarity_maps(self, images, texts: Sequence[str], kind: str | None = None,
                        report: bool = False) -> torch.Tensor:
        """Text i against image i: the sentence-to-patch map of the model's local representation, averaged over
        the text's sentences -> float [B, gh, gw] (gh, gw = patch_grid).

        kind: the map CGNSModel.local_attention gives, as the visual report draws it: 'grounding' (softmax over
        the patches of t1 * cos(sentence, patch)) or 'cross' (the sigmoid cross-attention); default: the one the
        run trained to ground (cgns.viz.inference.default_attention_kind).
        """
        from cgns.viz.inference import default_attention_kind

        texts = _as_list(texts)
        images = images if isinstance(images, torch.Tensor) else list(images)
        if len(images) != len(texts):
            raise ValueError(f"similarity_maps pairs text i with image i: got {len(images)} images and "
                             f"{len(texts)} texts")
        kind = kind or default_attention_kind(self.model)
        maps, start = [], 0
        for chunk in self._image_chunks(images):
            tokens = self.tokenize(texts[start:start + len(chunk)], report)
            start += len(chunk)
            batch = {"image": chunk.to(self.device), **{k: v.to(self.device) for k, v in tokens.items()}}
            attention = self.model.local_attention(batch, kind=kind)
            weight = attention["sentence_mask"].to(attention["maps"].dtype)[..., None, None]     # [B, S, 1, 1]
            maps.append(((attention["maps"] * weight).sum(dim=1) / weight.sum(dim=1)).float().cpu())
        return torch.cat(maps) if maps else torch.zeros(0, *self.patch_grid)

    def _image_chunks(self, images) -> Iterable[torch.Tensor]:
        """[<= batch_size, 3, S, S] tensors; a list is preprocessed one chunk at a time."""
        if isinstance(images, torch.Tensor):
            images = self.image_batch(images)
            for start in range(0, len(images), self.batch_size):
                yield images[start:start + self.batch_size]
            return
        images = list(images)
        for start in range(0, len(images), self.batch_size):
            yield self.image_batch(images[start:start + self.batch_size])


def _as_list(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of str, not one str")
    return list(texts)


# ---- loading ---------------------------------------------------------------------------------------------------
def load_model(path: str | os.PathLike | None, device: str | torch.device = "cpu", *, random_init: bool = False,
               config=None, tokenizer=None, seed: int = 0, batch_size: int = 32) -> PretrainedModel:
    """The model at `path`: a pretraining checkpoint file, a run folder (checkpoints/final.pt, else latest.pt), or a
    folder written by `python -m cgns.export`. Files are read with torch.load(weights_only=True) or safetensors:
    loading never runs code.

    random_init=True: the same architecture, tokenizer and preprocessing with freshly initialised weights (seeded
    by `seed`; the global RNG is left untouched), the baseline of every evaluation: the model as pretraining
    started it (a --text-encoder BERT folder named in the configuration is loaded, as pretraining loaded it). Its
    configuration comes from `path`, or with path None from `config` (a CGNSConfig or its dict).
    tokenizer: a tokenizer object or folder instead of the one the checkpoint / config names.
    """
    from cgns.models.cgns import CGNSConfig
    from cgns.models.peer import build_model

    if path is None:
        if not random_init or config is None:
            raise ValueError("load_model(None) needs random_init=True and a config")
        config = CGNSConfig.from_dict({**(config.to_dict() if isinstance(config, CGNSConfig) else dict(config)),
                                       "image_weights": None})
        tokenizer = _tokenizer(tokenizer, config.tokenizer_dir, "the configuration")
        with _seeded(seed):
            model = build_model(config, tokenizer)
        return PretrainedModel(model, tokenizer, DEFAULT_CACHE_SIZE, batch_size, device, "")
    path = Path(path)
    from cgns.export import is_export, read_export

    with _seeded(seed if random_init else None):     # model construction never moves the global RNG
        if is_export(path):
            model, tokenizer_dir, cache_size = read_export(path, random_init)
        else:
            model, tokenizer_dir, cache_size = read_checkpoint(resolve_checkpoint(path), random_init)
    tokenizer = _tokenizer(tokenizer, tokenizer_dir, path)
    source = f"random init like {path}" if random_init else str(path)
    return PretrainedModel(model, tokenizer, cache_size, batch_size, device, source)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file as given, or a run folder's checkpoints/final.pt, else checkpoints/latest.pt."""
    if path.is_dir():
        for name in RUN_CHECKPOINTS:
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise FileNotFoundError(f"{path}: neither an exported model (config.json + weights) nor a run folder "
                                f"(checkpoints/{' or checkpoints/'.join(RUN_CHECKPOINTS)})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file or folder")
    return path


def read_checkpoint(path: Path, random_init: bool = False):
    """(CGNSModel with the checkpoint's weights, its tokenizer folder, its image cache size); random_init: the
    checkpoint's architecture with fresh weights."""
    from cgns.engine.checkpoint import load_checkpoint
    from cgns.models.cgns import CGNSConfig
    from cgns.models.peer import build_model
    from cgns.viz.loading import model_from_checkpoint

    state = load_checkpoint(path)
    if random_init and "config" in state:
        config = CGNSConfig.from_dict({**state["config"], "image_weights": None})
        model = build_model(config, state.get("tokenizer_dir")).eval()
    else:
        model = model_from_checkpoint(state, path)
    tokenizer_dir = state.get("tokenizer_dir") or state["config"].get("tokenizer_dir")
    return model, tokenizer_dir, _cache_size(state, path)


def _cache_size(state: dict, path: Path) -> int:
    """The run's image cache size: from the checkpoint's run arguments, else the run's config.json, else 256."""
    data = (state.get("args") or {}).get("data") or {}
    if "cache_size" not in data:
        config_file = path.parent.parent / "config.json"
        if config_file.is_file():
            data = json.loads(config_file.read_text()).get("data") or {}
    return int(data.get("cache_size", DEFAULT_CACHE_SIZE))


def _tokenizer(given, recorded, source):
    """The tokenizer object `given`, else the folder `given` or `recorded` (the one the run trained with)."""
    from cgns.data.tokenizer import load_tokenizer

    if given is not None and not isinstance(given, (str, os.PathLike)):
        return given
    folder = given or recorded
    if not folder or not Path(folder).is_dir():
        raise FileNotFoundError(f"{source}: its tokenizer folder {folder!r} does not exist (it lies beside the "
                                f"data cache the run trained on); pass tokenizer=FOLDER, or load an exported model")
    return load_tokenizer(folder)


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Draw from torch's global RNG seeded with `seed` (None: as it is), and put its state back afterwards."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield
