"""Tokenizer for reports: a local BERT folder, or a WordPiece trained on the training reports (no hub needed),
and the encoding of a report's sentences with the per-token sentence_index of METHOD.md."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece(reports: list[str], out_dir: str | os.PathLike, vocab_size: int = 8000) -> Path:
    """Train a lower-case BERT-style WordPiece on `reports` and save it as a PreTrainedTokenizerFast folder.

    Written to a temporary sibling then renamed, so a half-written tokenizer is never loaded.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), min_frequency=1,
                                        show_progress=False)
    backend.train_from_iterator(reports, trainer=trainer)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_tokenizer(path: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None):
    """A transformers PreTrainedTokenizerFast.

    path: a local BERT folder (vocab.txt / tokenizer.json, e.g. Bio_ClinicalBERT); None -> the WordPiece saved
    beside the cache in <cache_dir>/tokenizer, trained from the cache's training reports if it is missing.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if path is not None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer folder {path} not found (expected a local BERT folder with "
                                    f"vocab.txt or tokenizer.json)")
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError):
            if not (path / "vocab.txt").is_file():
                raise
            # A bare vocab.txt (no config.json to name the model type): it is a BERT WordPiece vocabulary.
            from transformers import BertTokenizer

            return BertTokenizer(vocab=str(path / "vocab.txt"))
    if cache_dir is None:
        raise ValueError("load_tokenizer needs a tokenizer folder or a cache directory")
    folder = Path(cache_dir) / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        from cgns.data.cache import Cache

        cache = Cache(cache_dir)
        reports = [" ".join(cache.records[i].get("sentences", [])) for i in cache.splits.get("train", [])]
        if not any(reports):
            raise ValueError(f"{cache_dir}: no training reports to train a WordPiece tokenizer on; pass a local "
                             f"BERT folder instead")
        train_wordpiece(reports, folder)
    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def encode_sentences(tokenizer, sentences: list[str], max_length: int = 256) -> dict[str, torch.Tensor]:
    """Tokenise a report given as sentences -> input_ids, attention_mask, sentence_index: long [max_length].

    Layout: [CLS] tokens of sentence 0, sentence 1, ... [SEP] [PAD]...; sentence_index is 0 on [CLS], [SEP] and
    padding and i + 1 on the tokens of sentence i. Sentences are tokenised one by one (WordPiece never merges
    across the space that joins them), so the ids equal those of the joined report; truncated to max_length.
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3, got {max_length}")
    pieces = tokenizer(list(sentences), add_special_tokens=False)["input_ids"] if sentences else []
    ids, index = [tokenizer.cls_token_id], [0]
    budget = max_length - 2
    for number, piece in enumerate(pieces, start=1):
        piece = piece[:budget - (len(ids) - 1)]
        ids.extend(piece)
        index.extend([number] * len(piece))
        if len(ids) - 1 >= budget:
            break
    ids.append(tokenizer.sep_token_id)
    index.append(0)
    length = len(ids)
    pad = max_length - length
    input_ids = torch.tensor(ids + [tokenizer.pad_token_id] * pad, dtype=torch.long)
    attention_mask = torch.tensor([1] * length + [0] * pad, dtype=torch.long)
    sentence_index = torch.tensor(index + [0] * pad, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "sentence_index": sentence_index}
