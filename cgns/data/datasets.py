"""torch Datasets over the image cache: report pairs, classification, detection, segmentation.

build(task, dataset, split, ...) prepares the cache on first use (cgns.preprocess.prepare) and returns the Dataset;
collate(task) gives the matching collate_fn. Items are dicts (see each class).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from cgns.data.cache import Cache
from cgns.data.splits import data_pct_subset
from cgns.data.tokenizer import sentence_presence
from cgns.data.transforms import (CropTransform, DetectionTransform, Placement, SegmentationTransform,
                                  boxes_mask)
from cgns.data.words import no_sentence_error, word_layout

TASKS = ("pretrain", "classification", "detection", "segmentation")
SPLITS = ("train", "valid", "test")
SUPPORTED = {
    "pretrain": ("mimic_cxr",),
    "classification": ("chexpert", "rsna", "covidx"),
    "detection": ("rsna", "object_cxr"),
    "segmentation": ("siim", "rsna"),
}
# Tables whose name differs from the split name: RSNA detection has its own protocol split.
TABLE_NAMES = {("detection", "rsna"): "det_{split}"}


class CachedDataset(Dataset):
    """Common part: the rows of one split table (optionally a data_pct subset of the training split)."""

    def __init__(self, cache: Cache, table: str, data_pct: float = 1.0, seed: int = 42):
        if table not in cache.splits:
            raise KeyError(f"{cache.path}: no split table {table!r} (has {', '.join(cache.splits)})")
        rows = cache.splits[table]
        if data_pct < 1.0:
            keep = data_pct_subset([cache.records[r]["id"] for r in rows], data_pct, seed)
            rows = [rows[i] for i in keep]
        self.cache = cache
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, index: int) -> dict:
        return self.cache.records[self.rows[index]]

    def image(self, index: int) -> torch.Tensor:
        """uint8 [S, S] cached image (S = cache size)."""
        return torch.from_numpy(np.array(self.cache.images[self.rows[index]]))

    def cache_boxes(self, index: int) -> np.ndarray:
        """[n, 4] xyxy boxes in pixels of the cached square."""
        record = self.record(index)
        placement = Placement(record["scale"], record["top"], record["left"])
        return placement.boxes(np.asarray(record.get("boxes", []), dtype=np.float64))


class PretrainDataset(CachedDataset):
    """Items: image float[3,S,S], input_ids / attention_mask / sentence_index long[T], report str, index int."""

    def __init__(self, cache, table, tokenizer, max_length=256, image_size=224, augment=False, **kw):
        super().__init__(cache, table, **kw)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.transform = CropTransform(image_size, train=augment)

    def __getitem__(self, index: int) -> dict:
        from cgns.data.tokenizer import encode_sentences

        sentences = self.record(index)["sentences"]
        item = encode_sentences(self.tokenizer, sentences, self.max_length)
        item["image"] = self.transform(self.image(index))
        item["report"] = ". ".join(sentences) + "."
        item["index"] = index
        return item


class ClassificationDataset(CachedDataset):
    """Items: image float[3,S,S], label (float[C] multi-label, or long scalar for single-label), index int."""

    def __init__(self, cache, table, class_names, multi_label, image_size=224, augment=False, **kw):
        super().__init__(cache, table, **kw)
        self.class_names = tuple(class_names)
        self.num_classes = len(class_names)
        self.multi_label = multi_label
        self.transform = CropTransform(image_size, train=augment)

    def __getitem__(self, index: int) -> dict:
        label = self.record(index)["label"]
        label = (torch.tensor(label, dtype=torch.float32) if self.multi_label
                 else torch.tensor(int(label), dtype=torch.long))
        return {"image": self.transform(self.image(index)), "label": label, "index": index}


class DetectionDataset(CachedDataset):
    """Items: image float[3,S,S], boxes float[n,4] xyxy in pixels of the returned image, index int."""

    num_classes = 1

    def __init__(self, cache, table, image_size=224, augment=False, **kw):
        super().__init__(cache, table, **kw)
        self.transform = DetectionTransform(image_size)

    def __getitem__(self, index: int) -> dict:
        boxes = torch.as_tensor(self.cache_boxes(index), dtype=torch.float32).reshape(-1, 4)
        image, boxes = self.transform(self.image(index), boxes)
        return {"image": image, "boxes": boxes, "index": index}


class SegmentationDataset(CachedDataset):
    """Items: image float[3,S,S], mask float[1,S,S] in {0,1}, index int. Masks come from the cache (SIIM) or are
    the filled boxes (RSNA)."""

    num_classes = 1

    def __init__(self, cache, table, image_size=224, augment=False, **kw):
        super().__init__(cache, table, **kw)
        self.transform = SegmentationTransform(image_size, train=augment)

    def mask(self, index: int) -> torch.Tensor:
        """uint8 [S, S] mask in pixels of the cached square."""
        if self.cache.has_masks:
            return torch.from_numpy(np.array(self.cache.masks[self.rows[index]]))
        size = self.cache.cache_size
        return torch.from_numpy(boxes_mask(self.cache_boxes(index), size, size))

    def __getitem__(self, index: int) -> dict:
        image, mask = self.transform(self.image(index), self.mask(index))
        return {"image": image, "mask": mask, "index": index}


def build(task: str, dataset: str, split: str, *, data_root: str | os.PathLike | None = None, image_size: int = 224,
          data_pct: float = 1.0, seed: int = 42, augment: bool = False, tokenizer=None, max_length: int = 256,
          cache_size: int = 256) -> Dataset:
    """The torch Dataset of `task` on `dataset`/`split`, preparing the cache on first use.

    data_root None -> the generated demo copy. data_pct < 1 keeps a seeded, nested subset of the TRAINING split
    (valid/test always whole). tokenizer (pretrain): None -> WordPiece beside the cache, a str -> local BERT folder,
    or a tokenizer object.
    """
    from cgns.data.roots import resolve_data_root
    from cgns.data.sources import get_source
    from cgns.preprocess import prepare

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if dataset not in SUPPORTED[task]:
        raise ValueError(f"task {task!r} is not defined on {dataset!r}; it runs on {', '.join(SUPPORTED[task])}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = resolve_data_root(dataset, data_root)
    cache = Cache(prepare(dataset, root, cache_size=cache_size))
    table = TABLE_NAMES.get((task, dataset), "{split}").format(split=split)
    common = dict(image_size=image_size, augment=augment, data_pct=data_pct if split == "train" else 1.0, seed=seed)
    if task == "pretrain":
        from cgns.data.tokenizer import load_tokenizer

        tokenizer_dir = None
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer_dir = str(tokenizer if tokenizer is not None else cache.path / "tokenizer")
            tokenizer = load_tokenizer(tokenizer, cache.path)
        dataset = PretrainDataset(cache, table, tokenizer, max_length=max_length, **common)
        dataset.tokenizer_dir = tokenizer_dir  # the folder to record in checkpoints (None for a passed object)
        return dataset
    if task == "classification":
        names = get_source(dataset).CLASS_NAMES
        return ClassificationDataset(cache, table, names, multi_label=dataset != "covidx", **common)
    if task == "detection":
        return DetectionDataset(cache, table, **common)
    return SegmentationDataset(cache, table, **common)


def collate(task: str):
    """collate_fn for `task`: default stacking, except detection boxes stay a list of float[n_i, 4] and pretraining
    batches carry their sentence layout (collate_pretrain)."""
    if task == "detection":
        return _collate_detection
    if task == "pretrain":
        return collate_pretrain
    return default_collate


def collate_pretrain(items: list[dict], word_table: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Stacked pretraining items plus their sentence_layout and, given a word-piece table (continues_word, special
    bool[V]: the GLoRIA / MGCA models' word_table()), their word layout (cgns.data.words.word_layout): what the
    step would otherwise have to read back from the device, computed here on the CPU once per batch."""
    batch = default_collate(items)
    batch.update(sentence_layout(batch["sentence_index"], batch["input_ids"], batch.get("index")))
    if word_table is not None:
        batch.update(word_layout(batch["input_ids"], *word_table, batch.get("index")))
        batch["row_counts"]["words"] = int(batch["word_rows"].shape[0])
    return batch


def sentence_layout(sentence_index: torch.Tensor, input_ids: torch.Tensor, index=None) -> dict:
    """CPU tensors sentence_index / input_ids long[B,T] -> {num_sentences: int (the largest sentence number S),
    sentence_rows: long[N] (b*S + s of every sentence that has tokens, row-major), max_token_id: int,
    row_counts: {'reports': B, 'sentences': N} (what the losses gather across ranks; cgns.distributed
    exchange_row_counts)}. Reports without any sentence are refused, naming their dataset indices (index long[B])
    when given."""
    present = sentence_presence(sentence_index)[:, 1:]                                    # [B,S]
    num_sentences = present.shape[1]
    empty = (~present.any(dim=1)).nonzero()[:, 0].tolist()
    if empty:
        raise no_sentence_error(empty, index)
    rows = present.flatten().nonzero()[:, 0]
    return {"num_sentences": num_sentences, "sentence_rows": rows,
            "max_token_id": int(input_ids.max()) if input_ids.numel() else 0,
            "row_counts": {"reports": int(sentence_index.shape[0]), "sentences": int(rows.shape[0])}}


def _collate_detection(items: list[dict]) -> dict:
    return {"image": torch.stack([i["image"] for i in items]), "boxes": [i["boxes"] for i in items],
            "index": torch.tensor([i["index"] for i in items])}
