"""MGCA: Wang, Zhou, Wang, Ding, Yu, "Multi-Granularity Cross-modal Alignment for Generalized Medical Visual
Representation Learning", NeurIPS 2022 (code: HKU-MedAI/MGCA).

The loss as computed here (image v_i, report u_i, patches p_il, words w_ik: unit vectors after their heads):
  instance (ITA):  L_ita = (1/N) sum_i [CE(<v_i, u_.>/tau, i) + CE(<u_i, v_.>/tau, i)], tau = 0.07, gathered across
                   ranks with gradient
  token (local):   within each pair, every word attends over the patches, c_k = norm(sum_l softmax_l(<w_k,p_l>/t) p_l);
                   s_kj = <w_k, c_j>/t (t = 0.1); L_word = (1/N) sum_i sum_k a_ik [CE(s_k., k) + CE(s_.k, k)] / 2,
                   a_ik = the [CLS] token's last-layer attention on word k (summed over its pieces, clipped to the
                   10th-90th percentile of the report's words, normalised to sum 1); L_patch likewise with patches
                   attending over the words (context not normalised for a ViT, normalised for a ResNet, as MGCA's
                   code does) and the ViT class token's last-block attention on each patch (uniform for a ResNet);
                   L_local = L_word + L_patch
  prototype:       K = 500 unit prototypes c_j (re-normalised before every step, frozen in the first epoch);
                   q_i = SinkhornKnopp(exp(<v_i, c_.>/eps)), eps = 0.05, 3 iterations over the global batch;
                   p_i = softmax(<u_i, c_.>/0.2); L_proto = (1/N) sum_i [H(q^v_i, p^u_i) + H(q^u_i, p^v_i)] / 2
  total = lambda1 L_ita + lambda2 L_local + lambda3 L_proto                                      (1, 1, 1)
Departures and sources: docs/METHODS.md#mgca.

Inputs (the dict `inputs` of MGCAObjective.forward):
    image_global [B,Di]           the image encoder's global feature, before any projection
    patches [B,L,Di]              the image encoder's local tokens
    tokens [B,T,Dt]               the text encoder's last hidden states ([CLS] at position 0: the report feature)
    word_index long[B,T]          word-piece -> word grouping (cgns.losses.gloria.word_index)
    text_class_attention [B,T]    the text encoder's last layer: [CLS]'s attention on each token, mean over heads
    image_class_attention [B,L]   the ViT's last block: the class token's attention on each patch, mean over heads;
                                  None (or absent) for a ResNet: uniform patch weights
and the epoch (0-based): the prototypes get no gradient while epoch < freeze_prototype_epochs.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgns.distributed import all_reduce_min, all_reduce_sum, global_mean
from cgns.losses.global_contrastive import bidirectional_info_nce
from cgns.losses.gloria import word_features
from cgns.models.projection_heads import ProjectionHead


def token_importance(attention: torch.Tensor, mask: torch.Tensor, low: float = 0.1,
                     high: float = 0.9) -> torch.Tensor:
    """attention [B,N] (the class token's attention on each token), mask bool[B,N] (real tokens) -> weights [B,N]:
    each row clipped to its own [low, high] quantiles over the real tokens, 0 elsewhere, normalised to sum 1.
    No gradient (MGCA computes it under no_grad)."""
    with torch.no_grad():
        attention = attention.float() if attention.dtype in (torch.float16, torch.bfloat16) else attention
        real = attention.masked_fill(~mask, float("nan"))
        bounds = torch.nanquantile(real, torch.tensor([low, high], dtype=attention.dtype, device=attention.device),
                                   dim=1, keepdim=True)                                      # [2,B,1]
        clipped = torch.where(mask, torch.minimum(torch.maximum(attention, bounds[0]), bounds[1]), 0.0)
        return clipped / clipped.sum(dim=1, keepdim=True).clamp_min(torch.finfo(clipped.dtype).tiny)


def token_alignment_loss(queries: torch.Tensor, query_mask: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor,
                         weights: torch.Tensor, temperature: float = 0.1, normalize_context: bool = True):
    """MGCA's cross-modal token-wise alignment, one direction, within each pair.

    queries [B,Q,D], keys [B,K,D] (unit norm), query_mask bool[B,Q], key_mask bool[B,K], weights [B,Q] (token
    importance, 0 on padding). Each query attends over its own pair's keys, context c_j = sum softmax(<q_j,k>/t) k
    (normalised when normalize_context); s_ij = <q_i, c_j>/t; per pair sum_i weights_i (CE(s_i., i) + CE(s_.i, i))/2
    over the real queries only; returns this rank's share of the mean over the global batch, a [] tensor.
    """
    scores = (queries @ keys.transpose(1, 2) / temperature).masked_fill(~key_mask[:, None, :], float("-inf"))
    context = torch.softmax(scores, dim=-1) @ keys                                            # [B,Q,D]
    if normalize_context:
        context = F.normalize(context, dim=-1)
    similarity = queries @ context.transpose(1, 2) / temperature                              # [B,Q,Q] i x j
    similarity = similarity.masked_fill(~(query_mask[:, :, None] & query_mask[:, None, :]), float("-inf"))
    by_row = -torch.log_softmax(similarity, dim=2).diagonal(dim1=1, dim2=2)                  # [B,Q] CE(s_i., i)
    by_column = -torch.log_softmax(similarity, dim=1).diagonal(dim1=1, dim2=2)               # [B,Q] CE(s_.i, i)
    per_token = torch.where(query_mask, (by_row + by_column) / 2, 0.0)                       # [B,Q]
    return global_mean((weights * per_token).sum(), queries.shape[0])


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equal-partition soft assignments of the global batch to the prototypes (SwAV's, as MGCA runs it).

    scores [B,K] (this rank's samples against the K prototypes) -> codes [B,K], each row summing to 1. Q = exp(
    scores/eps)^T is scaled to total 1, then `iterations` times: rows (prototypes) to 1/K each, columns (samples) to
    1/N each, the row sums taken over every rank's columns (N = the global batch); finally each column to 1. The
    exponent is shifted by the global maximum score (exact: the first scaling cancels any constant factor).
    """
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    shift = -all_reduce_min(-scores.max())                                                    # global max
    q = torch.exp((scores - shift) / epsilon).T                                               # [K,B]
    q = q / all_reduce_sum(q.sum())
    num_prototypes = q.shape[0]
    num_samples = all_reduce_sum(torch.full((), float(q.shape[1]), dtype=q.dtype, device=q.device))   # a fill
    for _ in range(iterations):
        q = q * ((1.0 / num_prototypes) / all_reduce_sum(q.sum(dim=1)))[:, None]
        q = q * ((1.0 / num_samples) / q.sum(dim=0))[None, :]
    return (q / q.sum(dim=0, keepdim=True)).T


def prototype_loss(image: torch.Tensor, report: torch.Tensor, prototypes: torch.Tensor, temperature: float = 0.2,
                   epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """MGCA's cross-modal prototype alignment: image [B,D], report [B,D], prototypes [K,D] (unit norm) ->
    mean over the global batch of (H(codes(image), softmax(report scores / t)) + H(codes(report), softmax(image
    scores / t))) / 2, codes by sinkhorn_knopp (no gradient); a [] tensor (this rank's share)."""
    image_scores, report_scores = image @ prototypes.T, report @ prototypes.T                 # [B,K] each
    image_codes = sinkhorn_knopp(image_scores, epsilon, iterations).to(image_scores.dtype)
    report_codes = sinkhorn_knopp(report_scores, epsilon, iterations).to(report_scores.dtype)
    image_to_report = -(image_codes * torch.log_softmax(report_scores / temperature, dim=1)).sum(dim=1)   # [B]
    report_to_image = -(report_codes * torch.log_softmax(image_scores / temperature, dim=1)).sum(dim=1)   # [B]
    return global_mean(((image_to_report + report_to_image) / 2).sum(), image.shape[0])


class MGCAObjective(nn.Module):
    """MGCA's heads, prototypes and loss. forward(inputs, epoch) -> {'global': l1 L_ita, 'local': l2 L_local,
    'prototype': l3 L_proto}.

    Heads (MGCA's GlobalEmbedding / LocalEmbedding): Linear -> BatchNorm -> ReLU -> Linear -> BatchNorm (no affine),
    width hidden_dim then embed_dim, batch statistics over the global batch's real rows (GlobalBatchNorm).
    """

    requires = ("image_global", "patches", "tokens", "word_index", "text_class_attention", "image_class_attention")

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int = 128, hidden_dim: int = 2048,
                 num_prototypes: int = 500, instance_temperature: float = 0.07, local_temperature: float = 0.1,
                 prototype_temperature: float = 0.2, sinkhorn_epsilon: float = 0.05, sinkhorn_iterations: int = 3,
                 freeze_prototype_epochs: int = 1, instance_weight: float = 1.0, local_weight: float = 1.0,
                 prototype_weight: float = 1.0, normalize_patch_context: bool = False):
        super().__init__()
        self.instance_temperature, self.local_temperature = instance_temperature, local_temperature
        self.prototype_temperature = prototype_temperature
        self.sinkhorn_epsilon, self.sinkhorn_iterations = sinkhorn_epsilon, sinkhorn_iterations
        self.freeze_prototype_epochs = freeze_prototype_epochs
        self.weights = {"global": instance_weight, "local": local_weight, "prototype": prototype_weight}
        self.normalize_patch_context = normalize_patch_context       # MGCA: False for a ViT, True for a ResNet
        self.global_image = ProjectionHead(image_dim, hidden_dim, embed_dim, batch_norm=True)
        self.local_image = ProjectionHead(image_dim, hidden_dim, embed_dim, batch_norm=True)
        self.global_text = ProjectionHead(text_dim, hidden_dim, embed_dim, batch_norm=True)
        self.local_text = ProjectionHead(text_dim, hidden_dim, embed_dim, batch_norm=True)
        bound = 1.0 / math.sqrt(embed_dim)                           # nn.Linear(embed_dim, K)'s initial range
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, embed_dim).uniform_(-bound, bound))

    def image_embedding(self, inputs: dict) -> torch.Tensor:
        """-> v [B,D], unit norm."""
        return F.normalize(self.global_image(inputs["image_global"]), dim=-1)

    def report_embedding(self, inputs: dict) -> torch.Tensor:
        """-> u [B,D], unit norm: the head on the [CLS] token's state."""
        return F.normalize(self.global_text(inputs["tokens"][:, 0]), dim=-1)

    def local_losses(self, inputs: dict) -> torch.Tensor:
        """L_word + L_patch, a [] tensor."""
        num_words = inputs.get("num_words")                                                     # word_layout's
        summed, word_mask = word_features(inputs["tokens"], inputs["word_index"], num_words)   # [B,W,Dt], [B,W]
        words = F.normalize(self.local_text(summed, word_mask, inputs.get("word_rows"), "words"), dim=-1)   # [B,W,D]
        patches = F.normalize(self.local_image(inputs["patches"]), dim=-1)                      # [B,L,D]
        patch_mask = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
        text_attention = inputs["text_class_attention"]
        word_attention = word_features(text_attention[..., None].to(summed.dtype), inputs["word_index"],
                                       num_words)[0][..., 0]
        word_weights = token_importance(word_attention, word_mask).to(words.dtype)              # [B,W]
        image_attention = inputs.get("image_class_attention")
        patch_weights = (patch_mask / patch_mask.shape[1] if image_attention is None
                         else token_importance(image_attention, patch_mask)).to(patches.dtype)   # [B,L]
        word_side = token_alignment_loss(words, word_mask, patches, patch_mask, word_weights, self.local_temperature)
        patch_side = token_alignment_loss(patches, patch_mask, words, word_mask, patch_weights,
                                          self.local_temperature, self.normalize_patch_context)
        return word_side + patch_side

    def forward(self, inputs: dict, epoch: int = 0) -> dict:
        if self.training:                                            # MGCA re-normalises the prototypes every step
            with torch.no_grad():
                self.prototypes.copy_(F.normalize(self.prototypes, dim=1))
            unit = self.prototypes
        else:                                                        # validation leaves the parameters untouched
            unit = F.normalize(self.prototypes, dim=1)
        prototypes = unit if epoch >= self.freeze_prototype_epochs else unit.detach()
        image, report = self.image_embedding(inputs), self.report_embedding(inputs)
        losses = {"global": bidirectional_info_nce(image, report, 1.0 / self.instance_temperature, 1.0, 1.0),
                  "local": self.local_losses(inputs),
                  "prototype": prototype_loss(image, report, prototypes, self.prototype_temperature,
                                              self.sinkhorn_epsilon, self.sinkhorn_iterations)}
        return {name: self.weights[name] * value for name, value in losses.items()}
