"""ConVIRT: Zhang, Jiang, Miura, Manning, Langlotz, "Contrastive Learning of Medical Visual Representations from
Paired Images and Text", MLHC 2022 (arXiv 2010.00747).

The loss as computed here, over the global batch of N pairs (gathered across ranks with gradient):
    v_i = g_v(h_v,i) / |.|,   u_i = g_u(maxpool_t h_u,i,t) / |.|          (g: Linear-ReLU-Linear, d = 512)
    h_u,i encodes t_u(report i): ONE of the report's sentences, drawn uniformly at random at every step
          (the paper's text transformation, section 2.3; sample_sentence); evaluation encodes the whole report
    l_i(v->u) = -log exp(<v_i,u_i>/tau) / sum_k exp(<v_i,u_k>/tau),   l_i(u->v) likewise with v and u swapped
    L = (1/N) sum_i [lambda l_i(v->u) + (1 - lambda) l_i(u->v)],      tau = 0.1, lambda = 0.75
Departures and sources: docs/METHODS.md#convirt.

Inputs (the dict `inputs` of ConVIRTObjective.forward; names shared by every peer objective, see `requires`):
    image_global [B,Di]   the image encoder's global feature (ViT class token / ResNet pooled), before any projection
    tokens [B,T,Dt]       the text encoder's last hidden states
    attention_mask [B,T]  1 on real tokens ([CLS], the text, [SEP]), 0 on padding
The sentence is drawn before the text encoder runs (cgns.models.peer.PeerModel.forward calls sample_sentence when
the objective's `samples_sentence` is set), so the objective itself sees an encoded text as any other.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgns.data.tokenizer import sentence_presence
from cgns.losses.global_contrastive import bidirectional_info_nce
from cgns.models.projection_heads import ProjectionHead


def convirt_loss(image: torch.Tensor, report: torch.Tensor, temperature: float = 0.1,
                 image_to_report_weight: float = 0.75) -> dict:
    """image [B,D], report [B,D] (unit norm) -> {'global': lambda l(v->u) + (1 - lambda) l(u->v)}, the global mean."""
    return {"global": bidirectional_info_nce(image, report, 1.0 / temperature, image_to_report_weight,
                                             1.0 - image_to_report_weight)}


def max_pool_tokens(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """tokens [B,T,D], attention_mask [B,T] -> the element-wise maximum over each report's real tokens, [B,D]."""
    real = attention_mask.bool()[..., None]                                                  # [B,T,1]
    return tokens.masked_fill(~real, torch.finfo(tokens.dtype).min).amax(dim=1)


def sample_sentence(input_ids: torch.Tensor, attention_mask: torch.Tensor, sentence_index: torch.Tensor,
                    num_sentences: int | None = None, pad_token_id: int = 0,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ConVIRT's t_u: each report replaced by one of its sentences, drawn uniformly at random.

    input_ids / attention_mask / sentence_index long[B,T] in the layout of cgns.data.tokenizer.encode_sentences
    ([CLS] at position 0, then the sentences' tokens numbered 1, 2, ..., [SEP], padding; sentence_index 0 on
    [CLS], [SEP] and padding) -> input_ids, attention_mask long[B,T]: [CLS] + the drawn sentence's tokens + the
    report's own [SEP], then padding (pad_token_id), at the same width T. The sentence is drawn among the numbers
    that have tokens (a sentence cut off by truncation is one with fewer tokens); a report without any sentence
    becomes [CLS] [SEP] (the pretraining collate refuses such reports). num_sentences: the batch's largest sentence
    number (the collate's; None reads it back from the device). generator: None draws from the global generator
    of the tensors' device, whose state the checkpoints keep, so a resumed run draws the same sentences.
    Everything happens on the tensors' device, without reading anything back.
    """
    batch, width = input_ids.shape
    device = input_ids.device
    present = sentence_presence(sentence_index, num_sentences)                          # [B,S+1], column 0 False
    draw = torch.rand(present.shape, device=device, generator=generator)
    chosen = draw.masked_fill(~present, -1.0).argmax(dim=1, keepdim=True)             # [B,1]; 0: no sentence
    position = torch.arange(width, device=device)
    kept = (sentence_index == chosen) & (chosen > 0)
    kept[:, 0] = True                                                                 # [CLS]
    order = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)                # kept tokens first, in order
    length = kept.sum(dim=1, keepdim=True)                                            # [CLS] + sentence, [B,1]
    ids = torch.where(position < length, input_ids.gather(1, order), pad_token_id)
    separator = input_ids.gather(1, attention_mask.sum(dim=1, keepdim=True) - 1)      # the report's [SEP]
    ids = ids.scatter(1, length, separator)
    return ids, (position <= length).to(attention_mask.dtype)


class ConVIRTObjective(nn.Module):
    """ConVIRT's projection heads and loss. forward(inputs, epoch) -> {'global': loss}.

    samples_sentence: the model encodes one drawn sentence per report in forward (sample_sentence), the paper's
    t_u; False encodes the whole report (an ablation, and what the 2-rank equality test needs, as it needs
    dropout off: each rank draws from its own generator)."""

    requires = ("image_global", "tokens", "attention_mask")

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int = 512, temperature: float = 0.1,
                 image_to_report_weight: float = 0.75, sample_sentence: bool = True):
        super().__init__()
        if not 0 <= image_to_report_weight <= 1:
            raise ValueError(f"ConVIRT's lambda must be in [0, 1], got {image_to_report_weight}")
        self.temperature, self.image_to_report_weight = temperature, image_to_report_weight
        self.samples_sentence = sample_sentence
        self.image_head = ProjectionHead(image_dim, image_dim, embed_dim)                     # g_v
        self.text_head = ProjectionHead(text_dim, text_dim, embed_dim)                       # g_u

    def image_embedding(self, inputs: dict) -> torch.Tensor:
        """-> v [B,D], unit norm (also what retrieval and zero-shot evaluation compare)."""
        return F.normalize(self.image_head(inputs["image_global"]), dim=-1)

    def report_embedding(self, inputs: dict) -> torch.Tensor:
        """-> u [B,D], unit norm."""
        return F.normalize(self.text_head(max_pool_tokens(inputs["tokens"], inputs["attention_mask"])), dim=-1)

    def forward(self, inputs: dict, epoch: int = 0) -> dict:
        return convirt_loss(self.image_embedding(inputs), self.report_embedding(inputs), self.temperature,
                            self.image_to_report_weight)
