"""The vectorised heads equal a per-sample / per-sentence loop formulation (the original's structure) to 1e-5.

The loops below are kept on purpose: they are the readable definition the batched code must reproduce.
"""
import math

import torch
import torch.nn.functional as F

from cgns.losses.clustering import ClusterNegativeSampler
from cgns.losses.local_alignment import Predictor, cosine_to_target, simsiam_loss
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
    """The original: one F.multi_head_attention_forward per report over [mean, sentences], output at position 0
    (with the learned position embedding added first when the pool has one, as for the ResNet grid)."""
    outputs = []
    for sentences in reports:
        x = torch.cat([sentences.mean(dim=0, keepdim=True), sentences])             # [1+S,D]
        if pool.positional_embedding is not None:
            x = x + pool.positional_embedding
        x = x[:, None]                                                               # [1+S,1,D]
        out, _ = F.multi_head_attention_forward(
            x, x, x, x.shape[-1], pool.num_heads, None,
            torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), None, None, False, 0.0,
            pool.c_proj.weight, pool.c_proj.bias, training=False, need_weights=False,
            use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight)
        outputs.append(out[0, 0])
    return torch.stack(outputs)


def loop_cross_attention(attention, patches, reports, maps=None):
    """The original: per sample, sigmoid attention between its patches [L,D] and its real sentences [S,D].
    maps, if a list, receives (patch attention [L,S], sentence attention [S,L]) per sample."""
    text_to_patch, image_to_sentence = [], []
    scale = math.sqrt(attention.image_query.in_features)
    weigh = torch.sigmoid
    for b, sentences in enumerate(reports):
        image = patches[b]
        to_sentences = weigh(attention.text_query(sentences) @ attention.image_key(image).T / scale)
        image_to_sentence.append(to_sentences @ attention.image_value(image))          # [S,D]
        to_patches = weigh(attention.image_query(image) @ attention.text_key(sentences).T / scale)
        text_to_patch.append(to_patches @ attention.text_value(sentences))             # [L,D]
        if maps is not None:
            maps.append((to_patches, to_sentences))
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
    margins = 0.0
    for i in range(n):
        for j in range(n):
            if i != j and cluster[i] == cluster[j]:
                delta = cos[i, j] - cos[i, i]
                margins = margins + F.relu(delta + alpha) + F.relu(-delta - beta)
    # the original's mean runs over all n*n entries (the unflagged ones add a constant, left out on both sides)
    return loss, fn_weight * margins / (n * n), centroids


def test_sentence_pooling_equals_loop():
    tokens, index = make_reports()
    sentences, mask = sentence_features(tokens, index)
    reference = loop_sentences(tokens, index)
    assert mask.sum(1).tolist() == [len(r) for r in reference]
    for b, expected in enumerate(reference):
        torch.testing.assert_close(sentences[b][mask[b]], expected, **TOL)


def randomise_biases(module):
    """Non-zero biases everywhere, so the bias terms of the reassociated products are exercised."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()


def assert_same_gradients(module, inputs, ours, theirs):
    """d(ours)/d(inputs, parameters) == d(theirs)/d(same), where ours and theirs are scalars."""
    names, parameters = zip(*module.named_parameters())
    ours_grads = torch.autograd.grad(ours, (*inputs, *parameters), allow_unused=True)
    theirs_grads = torch.autograd.grad(theirs, (*inputs, *parameters), allow_unused=True)
    for name, a, b in zip(("input",) * len(inputs) + names, ours_grads, theirs_grads):
        if a is None and b is None:                          # a parameter neither side uses
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, **TOL, msg=lambda message: f"gradient of {name}: {message}")


def test_report_attention_pooling_equals_loop():
    torch.manual_seed(0)
    tokens, index = make_reports(dim=16)
    pool = AttentionPool(16, 8).double()
    randomise_biases(pool)
    tokens.requires_grad_(True)
    sentences, mask = sentence_features(tokens, index)
    ours = pool(sentences, mask)
    theirs = loop_attention_pool(pool, loop_sentences(tokens, index))
    torch.testing.assert_close(ours, theirs, **TOL)
    weights = torch.randn_like(ours)                     # a generic scalar of the output
    assert_same_gradients(pool, (tokens,), (ours * weights).sum(), (theirs * weights).sum())


def test_grid_attention_pooling_with_positions_equals_multi_head_attention():
    """The ResNet global pooling: no mask, a learned position embedding, output width != input width."""
    torch.manual_seed(0)
    pool = AttentionPool(16, 4, num_positions=6, output_dim=10).double()
    randomise_biases(pool)
    grid = torch.randn(3, 6, 16, dtype=torch.float64, requires_grad=True)
    ours = pool(grid)
    theirs = loop_attention_pool(pool, list(grid))
    assert ours.shape == (3, 10)
    torch.testing.assert_close(ours, theirs, **TOL)
    assert_same_gradients(pool, (grid,), ours.square().sum(), theirs.square().sum())


def test_cross_attention_and_local_image_loss_equal_loop():
    torch.manual_seed(0)
    tokens, index = make_reports(dim=16)
    patches = F.normalize(torch.randn(tokens.shape[0], 9, 16, dtype=torch.float64), dim=-1).requires_grad_(True)
    tokens.requires_grad_(True)
    attention = SigmoidCrossAttention(16).double()
    randomise_biases(attention)
    sentences, mask = sentence_features(tokens, index)
    out = attention(patches, sentences, mask)
    maps = []
    text_to_patch, image_to_sentence = loop_cross_attention(attention, patches, loop_sentences(tokens, index), maps)
    torch.testing.assert_close(out["text_to_patch"], text_to_patch, **TOL)
    torch.testing.assert_close(out["image_to_sentence"][mask], torch.cat(image_to_sentence), **TOL)
    for b, (to_patches, to_sentences) in enumerate(maps):
        torch.testing.assert_close(out["patch_attention"][b][:, mask[b]], to_patches, **TOL)
        torch.testing.assert_close(out["sentence_attention"][b][mask[b]], to_sentences, **TOL)
        assert not out["patch_attention"][b][:, ~mask[b]].any()                # padding sentences weigh 0
    factors = out["text_to_patch_factors"]
    torch.testing.assert_close(factors[0] @ factors[1], text_to_patch, **TOL)
    # Gradients of a generic function of both outputs reach inputs and all six projections as in the loop.
    w1, w2 = torch.randn_like(text_to_patch), torch.randn_like(torch.cat(image_to_sentence))
    assert_same_gradients(attention, (patches, tokens),
                          (out["text_to_patch"] * w1).sum() + (out["image_to_sentence"][mask] * w2).sum(),
                          (text_to_patch * w1).sum() + (torch.cat(image_to_sentence) * w2).sum())
    predictor = Predictor(16).double()
    torch.testing.assert_close(simsiam_loss(patches, out["text_to_patch"], predictor)["local_image"],
                               loop_simsiam(patches, text_to_patch, predictor), **TOL)


def test_local_image_loss_from_factors_equals_loop():
    """The predictor's first layer applied to the sentence values before the attention product: same loss and
    the same gradients for the patches, the sentences, the attention projections and the predictor."""
    torch.manual_seed(0)
    tokens, index = make_reports(dim=16)
    patches = F.normalize(torch.randn(tokens.shape[0], 9, 16, dtype=torch.float64), dim=-1).requires_grad_(True)
    tokens.requires_grad_(True)
    heads = torch.nn.ModuleDict({"attention": SigmoidCrossAttention(16), "predictor": Predictor(16)}).double()
    randomise_biases(heads)
    sentences, mask = sentence_features(tokens, index)
    out = heads["attention"](patches, sentences, mask)
    ours = simsiam_loss(patches, out["text_to_patch"], heads["predictor"], out["text_to_patch_factors"])
    text_to_patch, _ = loop_cross_attention(heads["attention"], patches, loop_sentences(tokens, index))
    theirs = loop_simsiam(patches, text_to_patch, heads["predictor"])
    torch.testing.assert_close(ours["local_image"], theirs, **TOL)
    assert_same_gradients(heads, (patches, tokens), ours["local_image"], theirs)


def test_cosine_to_target_equals_cosine_similarity_with_stop_gradient():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    x[0, 0] = 0.0                                                # a zero vector: eps keeps it finite (0)
    x.requires_grad_(True)
    target = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    ours, theirs = cosine_to_target(x, target), F.cosine_similarity(x, target.detach(), dim=-1)
    torch.testing.assert_close(ours, theirs, **TOL)
    weights = torch.randn_like(ours)
    ours_grad, = torch.autograd.grad((ours * weights).sum(), x)
    theirs_grad, = torch.autograd.grad((theirs * weights).sum(), x)
    torch.testing.assert_close(ours_grad, theirs_grad, **TOL)
    assert torch.autograd.grad(cosine_to_target(x, target).sum(), target, allow_unused=True) == (None,)  # stop-grad
    low = cosine_to_target(x.detach().half(), target.detach().half())        # half inputs: computed in float32
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), theirs.detach(), atol=2e-3, rtol=0)


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


def test_benchmark_sides_compute_the_same_loss_and_gradients():
    """cgns.bench.heads times two formulations of one function: they must stay equal (value, gradients, and the
    k-means step they take)."""
    from cgns.bench.heads import Heads, loop_step, make_inputs, vectorised_step
    torch.manual_seed(0)
    heads = Heads(16, num_clusters=4).double()
    heads.clustering.false_negative_weight = 1.0                           # so a margin-loss mismatch shows
    heads.clustering.centroids.copy_(F.normalize(torch.randn(4, 16, dtype=torch.float64), dim=-1))
    heads.clustering.started.fill_(True)
    start = {k: v.clone() for k, v in heads.clustering.state_dict().items()}
    inputs = [t.double() if t.is_floating_point() else t for t in make_inputs(6, 9, 16, 60)]
    results = []
    for step in (vectorised_step, loop_step):
        heads.clustering.load_state_dict(start)
        leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
        loss = step(heads, *leaves)
        grads = torch.autograd.grad(loss, [leaves[0], leaves[2], *heads.parameters()], allow_unused=True)
        results.append((loss.detach(), grads, heads.clustering.centroids.clone()))
    (loss, grads, centroids), (loop_loss, loop_grads, loop_centroids) = results
    torch.testing.assert_close(loss, loop_loss, **TOL)
    torch.testing.assert_close(centroids, loop_centroids, **TOL)
    assert not torch.equal(centroids, start["centroids"])                  # the k-means step did move them
    for ours, theirs in zip(grads, loop_grads):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            torch.testing.assert_close(ours, theirs, **TOL)
