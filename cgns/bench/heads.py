"""Benchmark: the vectorised CM-CGNS heads against a loop-structured formulation like the original's.

Heads = per-sentence pooling, report attention pooling, sigmoid cross-attention, the local image loss, and the local
text loss with CGNS (k-means update, hard negatives, false-negative margin). Both sides start from the same token and
patch features and run forward + backward at batch 64; the encoders and the three linear projections are left out
(both sides apply them to the whole batch at once, so they would add the same time to each).
Sizes: tiny = 64 patches, 192-d; base = 196 patches, 768-d.

Ours (vectorised_step, wired as CGNSModel.forward wires the heads): padded batches and masks instead of loops, and
the projections reassociated onto the short side (image projections applied to ~10 sentences per sample instead of
L patches, the pooling's key/value projections to its one query, the predictor's first layer to the sentence values
before the attention product). The loop side follows the original's structure (Python loops over samples and
sentences, one attention call per report, the six projections applied per sample, the hard-negative weights built
from Python lists) and is conservative where the original is slower for other reasons: the original builds its
cosine matrices by broadcasting nn.CosineSimilarity over [N,N,D] (and [N,K,D] for the centroids, several times per
step); here both sides use matrix products for those.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from cgns.losses.clustering import ClusterNegativeSampler
from cgns.losses.local_alignment import Predictor, simsiam_loss
from cgns.models.cgns import SigmoidCrossAttention, sentence_features
from cgns.models.encoders import AttentionPool

SIZES = {"tiny": dict(patches=64, dim=192, tokens=128), "base": dict(patches=196, dim=768, tokens=256)}


class Heads(torch.nn.Module):
    def __init__(self, dim: int, num_clusters: int = 128):
        super().__init__()
        self.pool = AttentionPool(dim, 8)
        self.attention = SigmoidCrossAttention(dim)
        self.predictor = Predictor(dim)
        self.clustering = ClusterNegativeSampler(dim, num_clusters=num_clusters)


def make_inputs(batch: int, patches: int, dim: int, tokens: int, seed: int = 0):
    """Token features [B,T,D], a sentence index with 4-14 sentences of 3-12 tokens per report, patches [B,L,D]."""
    generator = torch.Generator().manual_seed(seed)
    sentence_index = torch.zeros(batch, tokens, dtype=torch.long)
    for b in range(batch):
        position, sentence = 1, 1
        count = int(torch.randint(4, 15, (1,), generator=generator))
        while sentence <= count and position < tokens - 1:
            size = int(torch.randint(3, 13, (1,), generator=generator))
            sentence_index[b, position:min(position + size, tokens - 1)] = sentence
            position, sentence = position + size, sentence + 1
    token_features = F.normalize(torch.randn(batch, tokens, dim, generator=generator), dim=-1)
    patch_features = F.normalize(torch.randn(batch, patches, dim, generator=generator), dim=-1)
    return token_features, sentence_index, patch_features


def vectorised_step(heads: Heads, token_features, sentence_index, patch_features):
    """The heads as CGNSModel.forward wires them (the local image loss fed the text-to-patch factors)."""
    sentences, mask = sentence_features(token_features, sentence_index)
    report = heads.pool(sentences, mask)
    attention = heads.attention(patch_features, sentences, mask)
    loss = simsiam_loss(patch_features, attention["text_to_patch"], heads.predictor,
                        attention["text_to_patch_factors"])["local_image"]
    text, _ = heads.clustering(sentences[mask], attention["image_to_sentence"][mask])
    return loss + text["local_text"] + text["false_negative"] + report.square().mean()


def loop_step(heads: Heads, token_features, sentence_index, patch_features):
    """The original's structure: Python loops over samples and sentences, weights built from lists each step.
    Same value, gradients and k-means step as vectorised_step (checked to 1e-5 in tests/test_models_heads.py)."""
    reports = []
    for b in range(token_features.shape[0]):                 # sentence gather, one torch.where per sentence
        sentences, report_tokens = [], token_features[b]
        for i in range(int(sentence_index[b].max())):
            words = report_tokens[torch.where(sentence_index[b] == i + 1)[0]]
            if words.shape[0]:
                sentences.append(words.mean(dim=0, keepdim=True))
        reports.append(torch.cat(sentences))
    pool = heads.pool
    pooled = []
    for sentences in reports:                                 # report pooling, one attention call per report
        x = torch.cat([sentences.mean(dim=0, keepdim=True), sentences])[:, None]
        out, _ = F.multi_head_attention_forward(
            x, x, x, x.shape[-1], pool.num_heads, None,
            torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), None, None, False, 0.0,
            pool.c_proj.weight, pool.c_proj.bias, need_weights=False, use_separate_proj_weight=True,
            q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight)
        pooled.append(out[0])
    attention, predictor = heads.attention, heads.predictor
    scale = math.sqrt(patch_features.shape[-1])
    image_loss, image_to_sentence = 0.0, []
    for b, sentences in enumerate(reports):                   # cross-attention + SimSiam, one sample at a time
        image = patch_features[b]
        to_sentences = torch.sigmoid(attention.text_query(sentences) @ attention.image_key(image).T / scale)
        image_to_sentence.append(to_sentences @ attention.image_value(image))
        to_patches = torch.sigmoid(attention.image_query(image) @ attention.text_key(sentences).T / scale)
        text_to_patch = to_patches @ attention.text_value(sentences)
        image_loss = image_loss - 0.5 * (F.cosine_similarity(predictor(image), text_to_patch.detach(), dim=-1).mean()
                                         + F.cosine_similarity(predictor(text_to_patch), image.detach(), dim=-1).mean())
    z1 = F.normalize(torch.cat(reports), dim=-1)
    z2 = F.normalize(torch.cat(image_to_sentence), dim=-1)
    text_loss = _loop_cgns(heads.clustering, z1, z2)
    return image_loss / len(reports) + text_loss + torch.cat(pooled).square().mean()


def _loop_cgns(clustering, z1, z2):
    """k-means update, hard negatives and margin loss as the original computes them (weights from Python lists)."""
    n, k = z1.shape[0], clustering.num_clusters
    cos = z1 @ z2.T
    with torch.no_grad():
        centroids = clustering.centroids
        nearest = (z2 @ F.normalize(centroids, dim=-1).T).argmax(dim=1)
        members = F.one_hot(nearest, k).T.to(z2.dtype)                       # [K,N]
        moved = members @ z2 + centroids * (members.sum(1, keepdim=True) == 0)
        centroids.copy_(clustering.lr * moved + (1 - clustering.lr) * centroids)
        similarity = z1 @ F.normalize(centroids, dim=-1).T
        top2 = similarity.topk(2, dim=1).indices
        hard = F.normalize(centroids[top2[:, 1]], dim=-1)
        cluster = F.one_hot(top2[:, 0], k).to(z1.dtype)                      # [N,K]
        same = (cluster @ cluster.T).fill_diagonal_(0)                       # [N,N] same-cluster pairs
    hard_cos = z1 @ hard.T
    weights = torch.tensor([[1.0] * n + [0.0] * i + [clustering.hard_negative_weight] + [0.0] * (n - i - 1)
                            for i in range(n)], dtype=z1.dtype)
    loss = F.cross_entropy(torch.cat([cos, hard_cos], dim=1) * weights, torch.arange(n))
    delta = (cos - cos.diag()[:, None]) * same
    # The original's mean over all N*N entries; its unflagged entries also add the constant relu(alpha), no gradient.
    margin = F.relu(delta + clustering.alpha) + F.relu(-delta - clustering.beta)
    margin = (margin * same).sum() / same.numel()
    return loss + clustering.false_negative_weight * margin


def time_step(step, heads, inputs, warmup, repeats):
    """Median wall-clock and CPU-time ms of forward + backward over `repeats` runs after `warmup` runs."""
    wall, cpu = [], []
    for run_index in range(warmup + repeats):
        leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
        heads.zero_grad(set_to_none=True)
        start, start_cpu = time.perf_counter(), time.process_time()
        step(heads, *leaves).backward()
        if run_index >= warmup:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall) * 1000.0, statistics.median(cpu) * 1000.0


def run(quick: bool = False) -> list[dict]:
    """Rows for `python -m cgns.bench`: each size at 1 thread (stable: what the loops' per-call overhead costs) and
    at the machine's thread count. quick = the tiny size only, fewer repeats (the loop side is the slow one)."""
    torch.manual_seed(0)
    default_threads, rows = torch.get_num_threads(), []
    thread_counts = sorted({1, default_threads})
    try:
        for name in (("tiny",) if quick else ("tiny", "base")):
            size = SIZES[name]
            inputs = make_inputs(64, size["patches"], size["dim"], size["tokens"])
            heads = Heads(size["dim"])
            heads.clustering.centroids.copy_(F.normalize(torch.randn(128, size["dim"]), dim=-1))
            heads.clustering.started.fill_(True)              # time the full CGNS path (hard negatives on)
            sentences = int(sentence_features(inputs[0], inputs[1])[1].sum())
            for threads in thread_counts:
                torch.set_num_threads(threads)
                state = {k: v.clone() for k, v in heads.clustering.state_dict().items()}
                # Medians over more runs where a run is short: wall clock on a shared machine is noisy.
                ours, ours_cpu = time_step(vectorised_step, heads, inputs, warmup=1,
                                           repeats=2 if quick else (7 if name == "tiny" else 3))
                heads.clustering.load_state_dict(state)     # both sides start from the same centroids
                loop_runs = 1 if quick or name == "base" else 3
                baseline, baseline_cpu = time_step(loop_step, heads, inputs, warmup=1 if name == "tiny" else 0,
                                                   repeats=loop_runs)
                rows.append({"section": "heads",
                             "name": f"{name} fwd+bwd B=64 L={size['patches']} D={size['dim']} threads={threads}",
                             "ours": round(ours, 1), "baseline": round(baseline, 1), "unit": "ms",
                             "ratio": round(baseline / ours, 2),
                             "note": f"{sentences} sentences; baseline = per-sample/per-sentence loops like the "
                                     f"original; CPU-time ratio {baseline_cpu / max(ours_cpu, 1e-9):.1f}x; "
                                     f"wall clock on a shared machine is noisy"})
    finally:
        torch.set_num_threads(default_threads)
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
