"""The vectorised heads equal a per-sample / per-sentence loop formulation (the original's structure) to 1e-5.

The loops below are kept on purpose: they are the readable definition the batched code must reproduce.
"""
import math

import torch
import torch.nn.functional as F

from cgns.losses.clustering import ClusterNegativeSampler, weighted_logits
from cgns.losses.local_alignment import Predictor, simsiam_loss
from cgns.models.cgns import SigmoidCrossAttention, sentence_features
from cgns.models.encoders import AttentionPool

TOL = dict(atol=1e-5, rtol=1e-5)


def make_reports(batch=5, length=30, dim=16, seed=0):
    """Token features and a sentence index with varied sentence counts, padding, and one gap (sentence 3 missing)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = F.normalize(torch.randn(batch, length, dim, generator=generator, dtype=torch.float64), dim=-1)
    index = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        position, sentence = 1, 1
        stop = length - 1 - 3 * b                              # later reports are shorter (more padding)
        while position < stop:
            size = int(torch.randint(1, 6, (1,), generator=generator))
            index[b, position:min(position + size, stop)] = sentence
            position += size
            sentence += 1
    index[0][index[0] == 3] = 0                                 # a gap: sentence 3 of report 0 has no tokens
    return tokens, index


def loop_sentences(tokens, index):
    """The original: for each report, for each sentence number, the mean of its tokens (empty ones skipped)."""
    reports = []
    for b in range(tokens.shape[0]):
        sentences = []
        for i in range(int(index[b].max())):
            words = tokens[b][torch.where(index[b] == i + 1)[0]]
            if words.shape[0]:
                sentences.append(words.mean(dim=0))
        reports.append(torch.stack(sentences))
    return reports


def loop_attention_pool(pool, reports):
    """The original: one F.multi_head_attention_forward per report over [mean, sentences], output at position 0."""
    outputs = []
    for sentences in reports:
        x = torch.cat([sentences.mean(dim=0, keepdim=True), sentences])[:, None]    # [1+S,1,D]
        out, _ = F.multi_head_attention_forward(
            x, x, x, x.shape[-1], pool.num_heads, None,
            torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), None, None, False, 0.0,
            pool.c_proj.weight, pool.c_proj.bias, training=False, need_weights=False,
            use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight)
        outputs.append(out[0, 0])
    return torch.stack(outputs)


def loop_cross_attention(attention, patches, reports):
    """The original: per sample, sigmoid attention between its patches [L,D] and its real sentences [S,D]."""
    text_to_patch, image_to_sentence = [], []
    scale = math.sqrt(patches.shape[-1])
    for b, sentences in enumerate(reports):
        image = patches[b]
        to_sentences = torch.sigmoid(attention.text_query(sentences) @ attention.image_key(image).T / scale)
        image_to_sentence.append(to_sentences @ attention.image_value(image))          # [S,D]
        to_patches = torch.sigmoid(attention.image_query(image) @ attention.text_key(sentences).T / scale)
        text_to_patch.append(to_patches @ attention.text_value(sentences))             # [L,D]
    return torch.stack(text_to_patch), image_to_sentence


def loop_simsiam(patches, text_to_patch, predictor):
    total = 0.0
    for x, y in zip(patches, text_to_patch):
        total = total - (F.cosine_similarity(predictor(x), y.detach(), dim=-1).mean()
                         + F.cosine_similarity(predictor(y), x.detach(), dim=-1).mean()) * 0.5
    return total / patches.shape[0]


def loop_cgns_loss(z1, z2, centroids, lr, weight, alpha, beta, fn_weight):
    """The original's text_local_loss_fn once k-means has started, with Python-built weights and loops."""
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    n = z1.shape[0]
    cos = torch.stack([torch.stack([F.cosine_similarity(z1[i], z2[j], dim=0) for j in range(n)]) for i in range(n)])
    # momentum update of the centroids from z2, cluster by cluster
    centroids = centroids.clone()
    nearest = [int(torch.argmax(F.cosine_similarity(z2[i][None], centroids))) for i in range(n)]
    new = centroids.clone()
    for k in range(centroids.shape[0]):
        members = [z2[i].detach() for i in range(n) if nearest[i] == k]
        if members:
            new[k] = lr * torch.stack(members).sum(dim=0) + (1 - lr) * centroids[k]
    centroids = new
    # hard negatives and clusters of z1
    sims = [F.cosine_similarity(z1[i].detach()[None], centroids) for i in range(n)]
    hard = torch.stack([centroids[int(torch.topk(s, 2).indices[1])] for s in sims])
    cluster = [int(torch.argmax(s)) for s in sims]
    hard_cos = torch.stack([torch.stack([F.cosine_similarity(z1[i], hard[j], dim=0) for j in range(n)])
                            for i in range(n)])
    weights = torch.tensor([[1.0] * n + [0.0] * i + [weight] + [0.0] * (n - i - 1) for i in range(n)],
                           dtype=z1.dtype)
    logits = torch.cat([cos, hard_cos], dim=1) * weights
    loss = F.cross_entropy(logits, torch.arange(n))
    margins, pairs = 0.0, 0
    for i in range(n):
        for j in range(n):
            if i != j and cluster[i] == cluster[j]:
                delta = cos[i, j] - cos[i, i]
                margins = margins + F.relu(delta + alpha) + F.relu(-delta - beta)
                pairs += 1
    return loss, fn_weight * margins / max(pairs, 1), centroids


def test_sentence_pooling_equals_loop():
    tokens, index = make_reports()
    sentences, mask = sentence_features(tokens, index)
    reference = loop_sentences(tokens, index)
    assert mask.sum(1).tolist() == [len(r) for r in reference]
    for b, expected in enumerate(reference):
        torch.testing.assert_close(sentences[b][mask[b]], expected, **TOL)


def test_report_attention_pooling_equals_loop():
    torch.manual_seed(0)
    tokens, index = make_reports(dim=16)
    pool = AttentionPool(16, 8).double()
    sentences, mask = sentence_features(tokens, index)
    torch.testing.assert_close(pool(sentences, mask), loop_attention_pool(pool, loop_sentences(tokens, index)),
                               **TOL)


def test_cross_attention_and_local_image_loss_equal_loop():
    torch.manual_seed(0)
    tokens, index = make_reports(dim=16)
    patches = F.normalize(torch.randn(tokens.shape[0], 9, 16, dtype=torch.float64), dim=-1)
    attention = SigmoidCrossAttention(16).double()
    sentences, mask = sentence_features(tokens, index)
    out = attention(patches, sentences, mask)
    text_to_patch, image_to_sentence = loop_cross_attention(attention, patches, loop_sentences(tokens, index))
    torch.testing.assert_close(out["text_to_patch"], text_to_patch, **TOL)
    torch.testing.assert_close(out["image_to_sentence"][mask], torch.cat(image_to_sentence), **TOL)
    predictor = Predictor(16).double()
    torch.testing.assert_close(simsiam_loss(patches, out["text_to_patch"], predictor)["local_image"],
                               loop_simsiam(patches, text_to_patch, predictor), **TOL)


def test_hard_negative_weights_equal_python_built_matrix():
    torch.manual_seed(0)
    n = 6
    logits, hard = torch.randn(n, n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    labels = torch.arange(n)
    expected_weights = torch.tensor([[1.0] * n + [0.0] * i + [3.0] + [0.0] * (n - i - 1) for i in range(n)],
                                    dtype=torch.float64)
    appended = torch.diag(hard)                                  # only the own column's value matters
    torch.testing.assert_close(weighted_logits(logits, hard, labels, 3.0, "multiply"),
                               torch.cat([logits, appended], 1) * expected_weights, **TOL)
    added = weighted_logits(logits, hard, labels, 3.0, "add")
    assert torch.isneginf(added[:, n:][~torch.eye(n, dtype=torch.bool)]).all()
    torch.testing.assert_close(added[:, n:].diagonal(), hard + math.log(3.0), **TOL)


def test_cgns_loss_equals_loop():
    torch.manual_seed(0)
    n, dim, k = 24, 8, 4
    z1 = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    sampler = ClusterNegativeSampler(dim, num_clusters=k, lr=0.3).double()
    sampler.centroids.copy_(F.normalize(torch.randn(k, dim, dtype=torch.float64), dim=-1))
    sampler.started.fill_(True)
    start = sampler.centroids.clone()
    losses, stats = sampler(z1, z2)
    loop_loss, loop_fn, loop_centroids = loop_cgns_loss(z1, z2, start, 0.3, 3.0, 0.2, 0.5, 1e-4)
    torch.testing.assert_close(sampler.centroids, loop_centroids, **TOL)
    torch.testing.assert_close(losses["local_text"], loop_loss, **TOL)
    torch.testing.assert_close(losses["false_negative"], loop_fn, **TOL)
    assert stats["false_negative_pairs"] > 0 and int(stats["cluster_sizes"].sum()) == n
    grads = torch.autograd.grad(losses["local_text"] + losses["false_negative"], (z1, z2))
    loop_grads = torch.autograd.grad(loop_loss + loop_fn, (z1, z2))
    for ours, theirs in zip(grads, loop_grads):
        torch.testing.assert_close(ours, theirs, **TOL)
