"""Benchmark: the grounding term's report-image scores without forming the attended contexts, against the direct form.

Ours (cgns.losses.grounding.report_image_scores): sentence . context = sum_l a_l cos_l and |context|^2 = a^T G a with G
each image's [L,L] patch Gram matrix, so the [n,M,D] contexts of n sentences over M images are never built. The
baseline builds them (attention @ patches, then a cosine), as GLoRIA's code does per word. Both run forward +
backward on the same sentence and patch features (the heads benchmark's inputs: B = 64 reports of 4-14 sentences).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cgns.bench.heads import SIZES, make_inputs, time_step
from cgns.losses.grounding import report_image_scores
from cgns.models.cgns import sentence_features


def direct_scores(sentences, owner, num_reports, patches, attention_temperature, sentence_temperature):
    """The same scores with the contexts formed: sentences [n,D], patches [M,L,D] -> [num_reports, M]."""
    attention = torch.softmax(attention_temperature * torch.einsum("nd,mld->nml", sentences, patches), dim=-1)
    contexts = torch.einsum("nml,mld->nmd", attention, patches)                            # [n,M,D]
    similarity = F.cosine_similarity(sentences[:, None, :], contexts, dim=-1)               # [n,M]
    return torch.stack([torch.logsumexp(sentence_temperature * similarity[owner == r], dim=0) / sentence_temperature
                        for r in range(num_reports)])


def _time(scores_fn, sentences, owner, patches, warmup, repeats):
    """Median wall-clock ms of forward + backward (the heads benchmark's timer; no module holds parameters here)."""
    def step(_, s, owner, p):
        return scores_fn(s, owner, p.shape[0], p, 25.0, 5.0).logsumexp(dim=1).sum()

    return time_step(step, torch.nn.Module(), (sentences, owner, patches), warmup, repeats)[0]


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    for name in (("tiny",) if quick else ("tiny", "base")):
        size = SIZES[name]
        tokens, sentence_index, patches = make_inputs(64, size["patches"], size["dim"], size["tokens"])
        sentences, mask = sentence_features(tokens, sentence_index)
        z, owner = F.normalize(sentences[mask], dim=-1), mask.nonzero()[:, 0]
        ours_value = report_image_scores(z, owner, 64, patches, 25.0, 5.0)
        difference = float((ours_value - direct_scores(z, owner, 64, patches, 25.0, 5.0)).abs().max())
        repeats = 3 if quick else 5
        ours = _time(report_image_scores, z, owner, patches, 1, repeats)
        baseline = _time(direct_scores, z, owner, patches, 1, repeats)
        context_mb = len(z) * 64 * size["dim"] * 4 / 2 ** 20
        rows.append({"section": "grounding", "name": f"{name} scores fwd+bwd B=64 L={size['patches']} D={size['dim']}",
                     "ours": round(ours, 1), "baseline": round(baseline, 1), "unit": "ms",
                     "ratio": round(baseline / ours, 2),
                     "note": f"{len(z)} sentences x 64 images; the baseline forms the contexts ({context_mb:.0f} MB "
                             f"in float32, ours never does); max |difference| {difference:.1e}"})
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
