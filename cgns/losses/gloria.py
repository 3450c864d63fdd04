"""GLoRIA: Huang, Shen, Lungren, Yeung, "GLoRIA: A Multimodal Global-Local Representation Learning Framework for
Label-efficient Medical Image Recognition", ICCV 2021 (code: marshuang80/gloria).

The loss as computed here, over the global batch of N pairs (both terms gathered across ranks with gradient):
  global:  L_g = (1/N) sum_i [CE(t3 cos(v_i, u_.), i) + CE(t3 cos(u_i, v_.), i)]                  (t3 = 10)
  local:   each word w (word pieces summed into words) of report r attends over the L patches p_l of image m,
             a_l = softmax_l(t1 softmax_over_r's_words(w . p_l))                                 (t1 = 4)
             c = sum_l a_l p_l,   Z(r, m) = log sum_{w in r} exp(t2 cos(w, c))                   (t2 = 5)
           L_l = (1/N) sum_i [CE(t3 Z(i, .), i) + CE(t3 Z(., i), i)]                              (t3 = 10)
  total = global_weight L_g + local_weight L_l                                                    (1, 1)
Z is GLoRIA's code form (its paper has (1/t2) log sum exp); the code is what we follow: t3 Z = (t3 t2) x the
(1/t2)-scaled score of cgns.losses.grounding.report_image_scores, which computes it (the same function as CM-CGNS's
sentence-region grounding term, with GLoRIA's attention form). Departures and sources: docs/METHODS.md#gloria.

Inputs (the dict `inputs` of GLoRIAObjective.forward):
    image_global [B,Di]   the image encoder's global feature, before any projection
    patches [B,L,Di]      the image encoder's local tokens (ViT patch tokens / ResNet layer4 cells)
    tokens [B,T,Dt]       the text encoder's last hidden states
    word_index long[B,T]  0 on [CLS], [SEP], padding; w + 1 on every word piece of word w (cgns.data.words)
    num_words, word_rows  optional: the batch's word layout computed on the CPU (cgns.data.words.word_layout),
                          so that the step reads nothing back from the device
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgns.losses.global_contrastive import bidirectional_info_nce
from cgns.losses.grounding import real_rows, report_image_matching_loss


def word_features(tokens: torch.Tensor, word_index: torch.Tensor,
                  num_words: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B,T,D], word_index long[B,T] -> (words [B,W,D]: the SUM of each word's piece features (GLoRIA's and
    MGCA's aggregation), mask bool[B,W] True on real words), W the most words of any report in the batch: num_words
    when the caller knows it (cgns.data.words.word_layout), else read from the device (one host sync)."""
    if num_words is None:
        num_words = max(int(word_index.max()), 1)
    membership = F.one_hot(word_index, num_words + 1)[..., 1:].to(tokens.dtype)             # [B,T,W]
    return membership.transpose(1, 2) @ tokens, membership.sum(dim=1) > 0


def gloria_global_loss(image: torch.Tensor, report: torch.Tensor, temperature: float = 10.0) -> torch.Tensor:
    """image [B,D], report [B,D] (unit norm) -> CE(image->report) + CE(report->image), logits t3 cos; a [] tensor."""
    return bidirectional_info_nce(image, report, temperature, 1.0, 1.0)


def gloria_local_loss(words: torch.Tensor, word_mask: torch.Tensor, patches: torch.Tensor,
                      attention_temperature: float = 4.0, word_temperature: float = 5.0,
                      logit_temperature: float = 10.0, word_rows: torch.Tensor | None = None) -> torch.Tensor:
    """words [B,W,D], word_mask bool[B,W] (every report has a word), patches [B,L,D], any norm (GLoRIA normalises
    neither) -> the word-region loss, CE(report->image) + CE(image->report) on t3 Z; a [] tensor.
    word_rows long[n]: the real words' flat rows (cgns.data.words.word_layout, checked there), so that nothing is
    read back from the device; without it they are found from word_mask (host syncs)."""
    dtype = torch.promote_types(torch.promote_types(words.dtype, patches.dtype), torch.float32)   # as autocast
    kind = "words" if word_rows is not None else None        # the collate's row counts know the words' numbers
    if word_rows is None and not bool(word_mask.any(dim=1).all()):
        raise ValueError("GLoRIA's local loss: a report without any word in this batch")
    queries, word_rows = real_rows(words, word_mask, word_rows)                              # [n,D], [n]
    queries = queries.to(dtype)
    owner = torch.div(word_rows, words.shape[1], rounding_mode="floor")                      # [n] in 0..B-1
    mean = report_image_matching_loss(queries, owner, patches.to(dtype), attention_temperature, word_temperature,
                                      logit_temperature * word_temperature, attention="gloria",
                                      query_norms=torch.linalg.vector_norm(queries, dim=-1), query_kind=kind)
    return 2 * mean                                                                          # GLoRIA sums both


class GLoRIAObjective(nn.Module):
    """GLoRIA's projections and loss. forward(inputs, epoch) -> {'global': w_g L_g, 'local': w_l L_l}.

    Projections: image global Linear(Di, D) (GLoRIA's global_embedder), image local Linear(Di, D) without bias
    (its 1x1 local_embedder), and, because our text width need not be D, text Linear(Dt, D) for words and report
    (GLoRIA uses BERT's 768-d states as they are). The report vector is the mean of the report's word vectors.
    """

    requires = ("image_global", "patches", "tokens", "word_index")

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int = 768, attention_temperature: float = 4.0,
                 word_temperature: float = 5.0, logit_temperature: float = 10.0, global_weight: float = 1.0,
                 local_weight: float = 1.0):
        super().__init__()
        self.temperatures = (attention_temperature, word_temperature, logit_temperature)
        self.global_weight, self.local_weight = global_weight, local_weight
        self.global_image = nn.Linear(image_dim, embed_dim)
        self.local_image = nn.Linear(image_dim, embed_dim, bias=False)
        self.word_projection = nn.Linear(text_dim, embed_dim)
        self.report_projection = nn.Linear(text_dim, embed_dim)

    def words(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (projected words [B,W,D], word_mask bool[B,W], summed word features [B,W,Dt])."""
        summed, mask = word_features(inputs["tokens"], inputs["word_index"], inputs.get("num_words"))
        return self.word_projection(summed), mask, summed

    def image_embedding(self, inputs: dict) -> torch.Tensor:
        """-> v [B,D], unit norm."""
        return F.normalize(self.global_image(inputs["image_global"]), dim=-1)

    def report_embedding(self, inputs: dict, words: tuple | None = None) -> torch.Tensor:
        """-> u [B,D], unit norm: the projected mean of the report's (summed) word features."""
        _, mask, summed = words if words is not None else self.words(inputs)
        weight = mask.to(summed.dtype)[..., None]                                            # [B,W,1]
        mean = (summed * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)               # [B,Dt]
        return F.normalize(self.report_projection(mean), dim=-1)

    def forward(self, inputs: dict, epoch: int = 0) -> dict:
        words = self.words(inputs)
        t1, t2, t3 = self.temperatures
        local = gloria_local_loss(words[0], words[1], self.local_image(inputs["patches"]), t1, t2, t3,
                                  inputs.get("word_rows"))
        global_ = gloria_global_loss(self.image_embedding(inputs), self.report_embedding(inputs, words), t3)
        return {"global": self.global_weight * global_, "local": self.local_weight * local}
