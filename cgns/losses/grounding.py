"""An added sentence-region grounding term (GLoRIA's local loss with sentences for words; not in METHOD.md; the
demo preset trains it, the paper preset does not).

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


def grounding_attention(sentences: torch.Tensor, patches: torch.Tensor, temperature: float) -> torch.Tensor:
    """Each sentence's attention over its own image's patches, as the term weighs them (the map the visual report
    draws; report_image_scores takes the same softmax over every image of the batch).

    sentences [B,S,D], patches [B,L,D] (both unit norm) -> softmax over L of temperature * cos, [B,S,L].
    """
    return torch.softmax(temperature * sentences @ patches.transpose(-1, -2), dim=-1)


def report_image_scores(sentences: torch.Tensor, owner: torch.Tensor, num_reports: int, patches: torch.Tensor,
                        attention_temperature: float, sentence_temperature: float) -> torch.Tensor:
    """Score of every report against every image.

    sentences [n,D] unit norm, owner long[n] (the report, 0..num_reports-1, each sentence belongs to), patches
    [M,L,D] unit norm -> scores [num_reports, M]: (1/t2) log sum over the report's sentences of exp(t2 cos(sentence,
    its context in the image)), the context being the sentence's attention-weighted mean of the image's patches.

    The context [n,M,D] is never formed: sentence . context = sum_l a_l cos_l, and |context|^2 = a^T G a with G the
    image's patch Gram matrix [L,L] (L < D at every size used).
    """
    cosines = torch.einsum("nd,mld->mnl", sentences, patches)                               # [M,n,L]
    attention = torch.softmax(attention_temperature * cosines, dim=-1)                      # [M,n,L]
    along = (attention * cosines).sum(dim=-1)                                               # [M,n] = s . context
    gram = patches @ patches.transpose(1, 2)                                                # [M,L,L]
    norm_sq = ((attention @ gram) * attention).sum(dim=-1)                                  # [M,n] = |context|^2
    similarity = (along / norm_sq.clamp_min(1e-12).sqrt()).T                                # [n,M] in [-1, 1]
    # log-sum-exp per report, shifted by the bound 1 so that every exp lies in [exp(-2 t2), 1]
    weights = torch.exp(sentence_temperature * (similarity - 1.0))                          # [n,M]
    sums = weights.new_zeros(num_reports, weights.shape[1]).index_add_(0, owner, weights)  # [R,M]
    return torch.log(sums.clamp_min(torch.finfo(sums.dtype).tiny)) / sentence_temperature + 1.0


def grounding_loss(sentences: torch.Tensor, sentence_mask: torch.Tensor, patches: torch.Tensor,
                   attention_temperature: float = 4.0, sentence_temperature: float = 5.0,
                   logit_scale: float = 10.0) -> dict:
    """sentences [B,S,D] (any norm), sentence_mask bool[B,S] (every report has one), patches [B,L,D] unit norm.

    This rank's reports against every rank's images and every rank's reports against this rank's images (both
    gathered with gradient), cross-entropy on the matching pairs, averaged over the global batch.
    Returns {'grounding': loss}.
    """
    batch, num_patches, dim = patches.shape
    dtype = torch.promote_types(torch.promote_types(sentences.dtype, patches.dtype), torch.float32)  # as autocast
    z = F.normalize(sentences[sentence_mask].to(dtype), dim=-1)                             # [n,D]
    owner = sentence_mask.nonzero()[:, 0]                                                   # [n] in 0..B-1
    patches = patches.to(dtype)
    patches_all, image_offset = gather_rows(patches.flatten(1))                             # [N,L*D]
    patches_all = patches_all.view(-1, num_patches, dim)                                    # [N,L,D]
    z_all, _ = gather_rows(z)                                                               # [n_all,D]
    owner_all, _ = gather_rows(owner + image_offset, with_grad=False)                       # [n_all] global report
    labels = image_offset + torch.arange(batch, device=patches.device)                      # [B]
    report_to_image = logit_scale * report_image_scores(z, owner, batch, patches_all, attention_temperature,
                                                        sentence_temperature)               # [B,N]
    image_to_report = logit_scale * report_image_scores(z_all, owner_all, patches_all.shape[0], patches,
                                                        attention_temperature, sentence_temperature).T  # [B,N]
    total = (F.cross_entropy(report_to_image, labels, reduction="sum")
             + F.cross_entropy(image_to_report, labels, reduction="sum")) / 2
    return {"grounding": global_mean(total, batch)}
