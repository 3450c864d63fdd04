"""Word pieces grouped into words, as GLoRIA's and MGCA's aggregate_tokens group them, from a WordPiece tokenizer's
vocabulary; word_layout computes a batch's grouping on the CPU (the pretraining collate), so that a training step
of those objectives reads nothing back from the device."""
from __future__ import annotations

import torch


def word_piece_table(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """From a WordPiece tokenizer (transformers): (continues_word bool[V] True on '##' pieces, special bool[V] True
    on [CLS] / [SEP] / [PAD] / ...), the tables word_index reads."""
    vocabulary = tokenizer.get_vocab()                                                       # token -> id
    size = max(vocabulary.values()) + 1
    continues_word, special = torch.zeros(size, dtype=torch.bool), torch.zeros(size, dtype=torch.bool)
    continues_word[[i for token, i in vocabulary.items() if token.startswith("##")]] = True
    special[list(tokenizer.all_special_ids)] = True
    return continues_word, special


def word_index(input_ids: torch.Tensor, continues_word: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """Word pieces grouped into words, as GLoRIA's and MGCA's aggregate_tokens group them: a piece that does not
    start with '##' opens a new word, a '##' piece continues the open one; special tokens are in no word.

    input_ids long[B,T], continues_word / special bool[V] (word_piece_table) -> long[B,T]: 0 outside words,
    w + 1 on the pieces of the report's word w (a '##' piece with no open word, after truncation, opens one).
    """
    if int(input_ids.max()) >= continues_word.shape[0]:
        raise ValueError(f"token id {int(input_ids.max())} is outside the word-piece table ({continues_word.shape[0]})")
    is_special = special[input_ids]                                                          # [B,T]
    previous_special = torch.cat([is_special.new_ones(input_ids.shape[0], 1), is_special[:, :-1]], dim=1)
    opens = ~is_special & (~continues_word[input_ids] | previous_special)                  # [B,T]
    return torch.where(is_special, 0, opens.long().cumsum(dim=1))


def empty_reports_error(unit: str, empty: list[int], index=None, advice: str = "") -> ValueError:
    """The refusal of a batch's reports without any `unit` (sentence, word): names their dataset indices (index
    long[B]) when given, else their batch positions."""
    names = [int(index[i]) for i in empty] if index is not None else empty
    where = "dataset index" if index is not None else "batch position"
    return ValueError(f"report(s) without any {unit} in this batch at {where} {names}{advice}")


def no_sentence_error(empty: list[int], index=None) -> ValueError:
    """The refusal of reports without any sentence (the pretraining collate's and CGNSModel's check)."""
    return empty_reports_error("sentence", empty, index, " (sentence_index all 0); such studies must be filtered "
                               "out before training")


def word_layout(input_ids: torch.Tensor, continues_word: torch.Tensor, special: torch.Tensor, index=None) -> dict:
    """The words of a batch, computed on the CPU once per batch (the pretraining collate), so that the step reads
    nothing back from the device: CPU input_ids long[B,T] -> {word_index: long[B,T] (word_index above),
    num_words: int (W, the most words of any report, at least 1), word_rows: long[N] (b*W + w of every real word,
    row-major)}. A report without any word is refused, naming its dataset index (index long[B]) when given."""
    words = word_index(input_ids, continues_word, special)
    counts = words.max(dim=1).values if words.numel() else words.new_zeros(words.shape[0])   # [B] words per report
    empty = (counts == 0).nonzero()[:, 0].tolist()
    if empty:
        raise empty_reports_error("word", empty, index)
    num_words = max(int(counts.max()) if counts.numel() else 0, 1)
    rows = (torch.arange(num_words)[None, :] < counts[:, None]).flatten().nonzero()[:, 0]
    return {"word_index": words, "num_words": num_words, "word_rows": rows}
