"""The report encoder: a transformers BertModel, pretrained from a local folder or small and random for the demo."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from transformers import BertConfig, BertModel


def sentence_attention_mask(attention_mask: torch.Tensor, sentence_index: torch.Tensor) -> torch.Tensor:
    """attention_mask [B,T] (1 = real token), sentence_index long[B,T] (0 = in no sentence, i+1 = sentence i) ->
    bool[B,1,T,T]: token t may attend to token u when both carry the same sentence index and u is a real token, so
    each sentence is encoded as if on its own (positions kept). Every token also attends to itself, so padding
    rows stay defined. Pass it to TextEncoder as its attention_mask."""
    same = sentence_index[:, :, None] == sentence_index[:, None, :]                         # [B,T,T]
    itself = torch.eye(sentence_index.shape[1], dtype=torch.bool, device=sentence_index.device)
    return ((same & attention_mask.bool()[:, None, :]) | itself)[:, None]


class TextEncoder(nn.Module):
    """forward(input_ids long[B,T], attention_mask long[B,T] or bool[B,1,T,T]) -> last_hidden_state
    [B,T,hidden_size]. A [B,1,T,T] mask says which token attends to which (see sentence_attention_mask).

    path: a local BERT folder (config.json + weights, e.g. Bio_ClinicalBERT); None builds a random BERT with the
    given vocabulary and size (the demo configuration). No pooler: only the token states are used. Attention runs
    through torch's scaled_dot_product_attention (transformers' "sdpa"; fused kernels on a GPU).
    """

    def __init__(self, path: str | None = None, vocab_size: int = 30522, hidden_size: int = 256,
                 num_layers: int = 2, num_heads: int = 4, max_positions: int = 512, pad_token_id: int = 0):
        super().__init__()
        if path is not None:
            folder = Path(path)
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"text encoder folder {folder} has no config.json (expected a local BERT "
                                        f"folder such as Bio_ClinicalBERT)")
            self.bert = BertModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True,
                                                  attn_implementation="sdpa")
        else:
            config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                                num_attention_heads=num_heads, intermediate_size=4 * hidden_size,
                                max_position_embeddings=max_positions, pad_token_id=pad_token_id,
                                attn_implementation="sdpa")
            self.bert = BertModel(config, add_pooling_layer=False)
        self.hidden_size = self.bert.config.hidden_size
        self.vocab_size = self.bert.config.vocab_size

    def forward(self, input_ids, attention_mask, max_token_id: int | None = None):
        """max_token_id: the batch's largest token id when the caller knows it on the host (the pretraining
        collate computes it on the CPU); None reads it from the tensor (a host synchronisation on a GPU)."""
        if max_token_id is None:
            max_token_id = int(input_ids.max())
        if max_token_id >= self.vocab_size:  # a clear error instead of an index error deep in BERT
            raise ValueError(f"token id {max_token_id} is outside the text encoder's vocabulary "
                             f"({self.vocab_size}); build the model with the tokenizer's vocabulary size")
        if attention_mask.dim() == 2:
            # As the [B,1,T,T] mask transformers would build from it; given ready-made, transformers does not test
            # it for padding first (a host read of the device on every call).
            length = attention_mask.shape[1]
            attention_mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, length, -1)
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
