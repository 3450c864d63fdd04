"""Tokenizer for reports: a local BERT folder, or a WordPiece vocabulary built from the training reports (no hub
needed, same reports -> same vocabulary), and the encoding of a report's sentences with the per-token
sentence_index of METHOD.md."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import torch

from cgns.io import atomic_directory

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece(reports: list[str], out_dir: str | os.PathLike, vocab_size: int = 8000,
                    min_frequency: int = 1) -> Path:
    """Build a lower-case BERT WordPiece vocabulary from `reports` and save it as a tokenizer folder
    (tokenizer.json, tokenizer_config.json, and vocab.txt: it also loads as BertTokenizerFast).

    The vocabulary is a pure function of the reports' words, so the same reports give byte-identical files in any
    process (the `tokenizers` trainer orders its alphabet and breaks merge ties in hash-map order, which differs
    from run to run). Ids, in order: the special tokens; every character seen, sorted, as a word start and then
    as a `##` continuation, so any word made of seen characters tokenises without [UNK]; then whole words with
    count >= min_frequency, most frequent first, ties by spelling, until vocab_size tokens (the characters are
    kept even past vocab_size). A word left out is spelled in characters by WordPiece's longest-match rule.
    Written to a temporary sibling then renamed, so a half-written tokenizer is never loaded.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    vocab = build_vocabulary(reports, vocab_size, min_frequency)
    ids = {token: index for index, token in enumerate(vocab)}
    # BERT's uncased pipeline, assembled here rather than by BertTokenizer(Fast), whose constructor differs
    # between transformers 4 (a vocab.txt path) and 5 (a dict).
    backend = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    with atomic_directory(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
        (tmp / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    return out_dir


def build_vocabulary(reports: list[str], vocab_size: int = 8000, min_frequency: int = 1) -> list[str]:
    """The WordPiece tokens of train_wordpiece, in id order (see there).

    Words are cut exactly as the saved tokenizer cuts them (BERT normaliser: lower case, accents stripped; BERT
    pre-tokeniser: whitespace and punctuation), so every counted word is one the tokenizer will look up.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for report in reports:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(report)))
    characters = sorted({character for word in counts for character in word})
    vocab = list(SPECIAL_TOKENS) + characters + [f"##{character}" for character in characters]
    taken = set(vocab)
    words = sorted((word for word, count in counts.items() if count >= min_frequency and word not in taken),
                   key=lambda word: (-counts[word], word))
    return vocab + words[:max(0, vocab_size - len(vocab))]


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


def sentence_presence(sentence_index: torch.Tensor, num_sentences: int | None = None) -> torch.Tensor:
    """sentence_index long[B,T] (encode_sentences' layout) -> present bool[B,S+1] on its device: present[b, s] is
    True where sentence s of report b has tokens; column 0 (the number of [CLS], [SEP] and padding) is False.
    S: num_sentences, the batch's largest sentence number (None reads it back from the device)."""
    if num_sentences is None:
        num_sentences = int(sentence_index.max()) if sentence_index.numel() else 0
    present = torch.zeros(sentence_index.shape[0], num_sentences + 1, dtype=torch.bool, device=sentence_index.device)
    present.scatter_(1, sentence_index, True)
    present[:, 0] = False
    return present
