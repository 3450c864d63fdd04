"""GLoRIA's text-region matching, shared by two objectives: CM-CGNS's added sentence-region grounding term (below;
not in METHOD.md; the demo preset trains it, the paper preset does not) and the GLoRIA objective's word-region local
loss (cgns/losses/gloria.py: words for sentences, GLoRIA's own attention form and temperatures).

Each sentence attends over the patches of EVERY image in the (global) batch, softmax(t1 cos(sentence, patch)); its
attended context is scored by cos(sentence, context); a report's score for an image aggregates its sentences'
scores, log sum exp(t2 cos) / t2; and reports and images are matched by a symmetric cross-entropy over t3 x score.
Against METHOD.md's local text loss (loss 3), whose negatives are OTHER sentences attending over their own images,
the negatives here are the SAME sentence attending over other images: the attended context must tell the sentence's
own image from the rest, which pays for attending where the sentence's finding is. The sentence features should
describe their own sentence only (CGNSModel.grounding_sentences encodes each on its own): a sentence encoded in its
report's context also describes the report's other findings, and their regions would match it as well.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cgns.distributed import gather_rows, global_mean


def real_rows(values: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor | None = None):
    """The entries of values [...,D] where mask bool[...] is True -> (those rows [n,D] in row-major order, their
    flat indices long[n]). rows: the indices when the caller knows them on the host side (the pretraining
    collate's sentence_rows / word_rows), so that nothing reads the device; None finds them from the mask (nonzero:
    a host synchronisation on a GPU)."""
    if rows is None:
        rows = mask.flatten().nonzero()[:, 0]
    return values.flatten(0, -2).index_select(0, rows), rows


def grounding_attention(sentences: torch.Tensor, patches: torch.Tensor, temperature: float) -> torch.Tensor:
    """Each sentence's attention over its own image's patches, as the term weighs them (the map the visual report
    draws; report_image_scores takes the same softmax over every image of the batch).

    sentences [B,S,D], patches [B,L,D] (both unit norm) -> softmax over L of temperature * cos, [B,S,L].
    """
    return torch.softmax(temperature * sentences @ patches.transpose(-1, -2), dim=-1)


def segment_softmax(logits: torch.Tensor, owner: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax along dim 1 within each segment: logits [M,n,L], owner long[n] (segment of each of the n rows, in
    0..num_segments-1) -> [M,n,L], summing to 1 over the rows of every segment for each (m, l)."""
    index = owner.view(1, -1, 1).expand_as(logits)
    shift = logits.new_zeros(logits.shape[0], num_segments, logits.shape[2]).scatter_reduce(
        1, index, logits.detach(), reduce="amax", include_self=False)                      # [M,R,L] segment max
    weights = torch.exp(logits - shift[:, owner])                                           # [M,n,L] in (0, 1]
    sums = weights.new_zeros(shift.shape).index_add_(1, owner, weights)                     # [M,R,L]
    return weights / sums[:, owner]


ATTENTION_FORMS = ("cosine", "gloria")


def report_image_scores(sentences: torch.Tensor, owner: torch.Tensor, num_reports: int, patches: torch.Tensor,
                        attention_temperature: float, sentence_temperature: float, attention: str = "cosine",
                        query_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Score of every report against every image, from its queries (sentences, or GLoRIA's words).

    sentences [n,D] (the queries), owner long[n] (the report, 0..num_reports-1, each query belongs to), patches
    [M,L,D] -> scores [num_reports, M]: (1/t2) log sum over the report's queries of exp(t2 cos(query, its context
    in the image)), the context being the query's attention-weighted sum of the image's patches. attention:
      'cosine': a = softmax over L of t1 q.p (queries and patches unit norm: q.p is the cosine; query_norms None);
      'gloria': GLoRIA's attention_fn, a = softmax over L of t1 softmax-over-the-report's-queries(q.p), on raw
                dot products; query_norms [n] = |q| then makes cos(query, context) a cosine for any norm.

    The context [n,M,D] is never formed: query . context = sum_l a_l q.p_l, and |context|^2 = a^T G a with G the
    image's patch Gram matrix [L,L] (L < D at every size used).
    """
    if attention not in ATTENTION_FORMS:
        raise ValueError(f"attention must be one of {ATTENTION_FORMS}, got {attention!r}")
    cosines = torch.einsum("nd,mld->mnl", sentences, patches)                               # [M,n,L]
    if attention == "cosine":
        weights = torch.softmax(attention_temperature * cosines, dim=-1)                    # [M,n,L]
    else:
        weights = torch.softmax(attention_temperature * segment_softmax(cosines, owner, num_reports), dim=-1)
    along = (weights * cosines).sum(dim=-1)                                                 # [M,n] = s . context
    gram = patches @ patches.transpose(1, 2)                                                # [M,L,L]
    norm_sq = ((weights @ gram) * weights).sum(dim=-1)                                      # [M,n] = |context|^2
    similarity = (along / norm_sq.clamp_min(1e-12).sqrt()).T                                # [n,M] in [-1, 1]
    if query_norms is not None:
        similarity = similarity / query_norms.clamp_min(1e-8)[:, None]
    # log-sum-exp per report, shifted by the bound 1 so that every exp lies in [exp(-2 t2), 1]
    terms = torch.exp(sentence_temperature * (similarity - 1.0))                            # [n,M]
    sums = terms.new_zeros(num_reports, terms.shape[1]).index_add_(0, owner, terms)        # [R,M]
    return torch.log(sums.clamp_min(torch.finfo(sums.dtype).tiny)) / sentence_temperature + 1.0


def report_image_matching_loss(queries: torch.Tensor, owner: torch.Tensor, patches: torch.Tensor,
                               attention_temperature: float, sentence_temperature: float, logit_scale: float,
                               attention: str = "cosine", query_norms: torch.Tensor | None = None,
                               query_kind: str | None = None) -> torch.Tensor:
    """The symmetric cross-entropy over logit_scale x report_image_scores, across ranks; a [] tensor.

    queries [n,D] with owner long[n] (0..B-1, this rank's reports), patches [B,L,D], query_norms [n] or None (see
    report_image_scores). This rank's reports against every rank's images and every rank's reports against this
    rank's images (both gathered with gradient), cross-entropy on the matching pairs, the two directions averaged,
    as this rank's share of the mean over the global batch. query_kind: what the queries are for
    cgns.distributed.gather_rows ('sentences': their counts on every rank are known in the training step; None:
    exchanged).
    """
    batch, num_patches, dim = patches.shape
    patches_all, image_offset = gather_rows(patches.flatten(1), kind="reports")             # [N,L*D]
    patches_all = patches_all.view(-1, num_patches, dim)                                    # [N,L,D]
    queries_all, _ = gather_rows(queries, kind=query_kind)                                  # [n_all,D]
    norms_all = None if query_norms is None else gather_rows(query_norms, kind=query_kind)[0]   # [n_all]
    owner_all, _ = gather_rows(owner + image_offset, with_grad=False, kind=query_kind)      # [n_all] global report
    labels = image_offset + torch.arange(batch, device=patches.device)                      # [B]
    report_to_image = logit_scale * report_image_scores(queries, owner, batch, patches_all, attention_temperature,
                                                        sentence_temperature, attention, query_norms)   # [B,N]
    image_to_report = logit_scale * report_image_scores(queries_all, owner_all, patches_all.shape[0], patches,
                                                        attention_temperature, sentence_temperature, attention,
                                                        norms_all).T                                    # [B,N]
    total = (F.cross_entropy(report_to_image, labels, reduction="sum")
             + F.cross_entropy(image_to_report, labels, reduction="sum")) / 2
    return global_mean(total, batch)


def grounding_loss(sentences: torch.Tensor, sentence_mask: torch.Tensor, patches: torch.Tensor,
                   attention_temperature: float = 4.0, sentence_temperature: float = 5.0,
                   logit_scale: float = 10.0, sentence_rows: torch.Tensor | None = None) -> dict:
    """sentences [B,S,D] (any norm), sentence_mask bool[B,S] (every report has one), patches [B,L,D] unit norm.

    report_image_matching_loss with the 'cosine' attention on the unit sentences. sentence_rows long[n] (b*S + s of
    each real sentence, row-major: the pretraining collate's, cgns.data.datasets.sentence_layout) picks the real
    sentences and their reports without reading the device; None finds them from sentence_mask (boolean indexing
    and nonzero: a host synchronisation on a GPU). Returns {'grounding': loss}.
    """
    dtype = torch.promote_types(torch.promote_types(sentences.dtype, patches.dtype), torch.float32)  # as autocast
    real, sentence_rows = real_rows(sentences, sentence_mask, sentence_rows)                # [n,D], [n]
    z = F.normalize(real.to(dtype), dim=-1)                                                 # [n,D]
    owner = torch.div(sentence_rows, sentences.shape[1], rounding_mode="floor")            # [n] in 0..B-1
    return {"grounding": report_image_matching_loss(z, owner, patches.to(dtype), attention_temperature,
                                                    sentence_temperature, logit_scale, query_kind="sentences")}
