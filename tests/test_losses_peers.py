"""The peer objectives (ConVIRT, GLoRIA, MGCA): each vectorised loss equals a per-sample loop written here from the
papers' code (value and gradient, float64); 2 gloo ranks equal 1 process on the same global batch (losses, input
and parameter gradients, heads with batch normalisation included); Sinkhorn-Knopp's marginals; frozen prototypes."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cgns.data.words import word_index, word_layout
from cgns.losses.convirt import ConVIRTObjective, convirt_loss, max_pool_tokens, sample_sentence
from cgns.losses.gloria import GLoRIAObjective, gloria_global_loss, gloria_local_loss, word_features
from cgns.losses.mgca import (MGCAObjective, prototype_loss, sinkhorn_knopp, token_alignment_loss,
                              token_importance)
from cgns.models.projection_heads import GlobalBatchNorm

DOUBLE = torch.float64


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=_generator(seed), dtype=DOUBLE), dim=-1)


def _grads(loss, leaves):
    return torch.autograd.grad(loss, leaves)


def _assert_same_value_and_gradient(ours, reference, leaves):
    torch.testing.assert_close(ours, reference)
    for got, want in zip(_grads(ours, leaves), _grads(reference, leaves)):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------------------ ConVIRT
def test_convirt_loss_is_the_weighted_per_pair_sum():
    image, report = _unit(5, 4, seed=1).requires_grad_(), _unit(5, 4, seed=2).requires_grad_()
    reference = 0.0
    for i in range(5):   # lambda l(v->u) + (1 - lambda) l(u->v), tau 0.1, averaged over the pairs
        image_to_report = -torch.log_softmax(torch.stack([image[i] @ report[k] / 0.1 for k in range(5)]), 0)[i]
        report_to_image = -torch.log_softmax(torch.stack([report[i] @ image[k] / 0.1 for k in range(5)]), 0)[i]
        reference = reference + (0.75 * image_to_report + 0.25 * report_to_image) / 5
    _assert_same_value_and_gradient(convirt_loss(image, report)["global"], reference, (image, report))


def test_convirt_text_vector_is_the_max_over_real_tokens():
    tokens = torch.randn(3, 6, 4, generator=_generator(3), dtype=DOUBLE)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    expected = torch.stack([tokens[b, :int(mask[b].sum())].max(dim=0).values for b in range(3)])
    torch.testing.assert_close(max_pool_tokens(tokens, mask), expected)



CLS, SEP, PAD = 2, 3, 0


def _sentence_reports():
    """Reports as lists of sentences (token-id lists), encoded in encode_sentences' layout at width 12: one with a
    sentence number missing (2: no tokens), one truncated inside its last sentence, one with a single sentence,
    one without any."""
    reports = [[[5, 6], [], [7, 8, 9], [10]], [[11, 12, 13], [14, 15, 16, 17, 18, 19, 20, 21]], [[22, 23, 24]], []]
    ids, index, mask = [], [], []
    for sentences in reports:
        row, number = [CLS], [0]
        for s, tokens in enumerate(sentences, start=1):
            row += tokens
            number += [s] * len(tokens)
        row, number = row[:11] + [SEP], number[:11] + [0]
        ids.append(row + [PAD] * (12 - len(row)))
        index.append(number + [0] * (12 - len(number)))
        mask.append([1] * len(row) + [0] * (12 - len(row)))
    return reports, torch.tensor(ids), torch.tensor(mask), torch.tensor(index)


def test_convirt_sentence_view_is_one_present_sentence_drawn_uniformly():
    """Every view is [CLS] + one sentence that has tokens (as far as truncation kept it) + [SEP], padded; over
    3000 draws each such sentence comes up about equally often; no sentence: [CLS] [SEP]."""
    reports, ids, mask, index = _sentence_reports()
    candidates = []                                            # per report: its possible views, by sentence number
    for b in range(len(reports)):
        kept = {int(s): [int(t) for t, n in zip(ids[b], index[b]) if n == s] for s in index[b].unique() if s > 0}
        candidates.append({s: [CLS] + tokens + [SEP] for s, tokens in kept.items()} or {0: [CLS, SEP]})
    assert sorted(candidates[0]) == [1, 3, 4] and candidates[1][2] == [CLS, *range(14, 21), SEP]
    generator, counts = _generator(5), [dict.fromkeys(c, 0) for c in candidates]
    for _ in range(3000):
        view, view_mask = sample_sentence(ids, mask, index, None, PAD, generator)
        assert view.shape == ids.shape and view_mask.dtype == mask.dtype
        for b, choices in enumerate(candidates):
            length = int(view_mask[b].sum())
            assert view_mask[b, :length].all() and not view_mask[b, length:].any()
            assert (view[b, length:] == PAD).all()
            drawn = [s for s, tokens in choices.items() if view[b, :length].tolist() == tokens]
            assert len(drawn) == 1, (b, view[b])
            counts[b][drawn[0]] += 1
    for b, drawn in enumerate(counts):        # binomial sd at p = 1/3, n = 3000: 26; at p = 1/2: 27
        for s, n in drawn.items():
            assert abs(n - 3000 / len(drawn)) < 120, (b, s, drawn)
    # the collate's num_sentences gives the same draws as reading it back
    first = sample_sentence(ids, mask, index, None, PAD, _generator(9))
    second = sample_sentence(ids, mask, index, int(index.max()), PAD, _generator(9))
    assert all(torch.equal(x, y) for x, y in zip(first, second))

# ------------------------------------------------------------------------------------------------ GLoRIA
def _word_index_by_hand(ids, continues, special):
    """GLoRIA's aggregate_tokens rule, token by token: a '##' piece joins the open word, anything else opens one."""
    out, word, open_word = [], 0, False
    for token in ids:
        if special[token]:
            out.append(0)
            open_word = False
            continue
        if not (continues[token] and open_word):
            word += 1
        open_word = True
        out.append(word)
    return out


def test_word_index_groups_pieces_like_gloria():
    # vocabulary: 0 [PAD], 1 [CLS], 2 [SEP], 3-5 whole-word pieces, 6-7 '##' pieces
    special = torch.tensor([True, True, True, False, False, False, False, False])
    continues = torch.tensor([False] * 6 + [True, True])
    ids = torch.tensor([[1, 3, 6, 7, 4, 5, 6, 2, 0, 0], [1, 6, 3, 4, 4, 7, 2, 0, 0, 0]])
    expected = torch.tensor([_word_index_by_hand(row.tolist(), continues, special) for row in ids])
    torch.testing.assert_close(word_index(ids, continues, special), expected)
    assert expected[0].tolist() == [0, 1, 1, 1, 2, 3, 3, 0, 0, 0]


def test_word_layout_is_what_the_step_would_read_back():
    """The collate's CPU word layout: word_index as above, W the most words, word_rows the real words' flat rows
    (the mask word_features builds); a report without words is refused by dataset index."""
    special = torch.tensor([True, True, True, False, False, False, False, False])
    continues = torch.tensor([False] * 6 + [True, True])
    ids = torch.tensor([[1, 3, 6, 7, 4, 5, 6, 2, 0, 0], [1, 6, 3, 2, 0, 0, 0, 0, 0, 0]])
    layout = word_layout(ids, continues, special)
    torch.testing.assert_close(layout["word_index"], word_index(ids, continues, special))
    _, mask = word_features(torch.randn(2, 10, 3), layout["word_index"])
    assert layout["num_words"] == mask.shape[1] == 3
    assert layout["word_rows"].tolist() == mask.flatten().nonzero()[:, 0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"without any word in this batch at dataset index \[17\]"):
        word_layout(torch.tensor([[1, 3, 2], [1, 2, 0]]), continues, special, index=torch.tensor([5, 17]))


def _gloria_local_by_hand(words, word_mask, patches, t1, t2, t3):
    """GLoRIA's local_loss and attention_fn, report by report: the words attend over every image's regions
    (softmax over the words, then t1 x softmax over the regions), cos(word, context), log sum exp(t2 cos)."""
    batch = patches.shape[0]
    columns = []
    for i in range(batch):
        word = words[i][word_mask[i]]                                                        # [n_i,D]
        row = []
        for m in range(batch):
            over_words = torch.softmax(patches[m] @ word.T, dim=1)                           # [L,n_i]
            attention = torch.softmax(t1 * over_words.T, dim=1)                              # [n_i,L]
            context = attention @ patches[m]                                                 # [n_i,D]
            cosine = F.cosine_similarity(word, context, dim=1)                               # [n_i]
            row.append(torch.log(torch.exp(t2 * cosine).sum()))
        columns.append(torch.stack(row))                                                     # images, report i
    similarities = t3 * torch.stack(columns, dim=1)                                          # [images, reports]
    labels = torch.arange(batch)
    return F.cross_entropy(similarities, labels) + F.cross_entropy(similarities.T, labels)


def _words(batch=4, words=5, dim=6, seed=4):
    mask = torch.rand(batch, words, generator=_generator(seed)) > 0.3
    mask[:, 0] = True
    return torch.randn(batch, words, dim, generator=_generator(seed + 1), dtype=DOUBLE), mask


@pytest.mark.parametrize("given_rows", [False, True], ids=["mask", "collate-rows"])
def test_gloria_local_loss_equals_its_per_report_loop(given_rows):
    words, mask = _words()
    words.requires_grad_()
    patches = torch.randn(4, 3, 6, generator=_generator(6), dtype=DOUBLE, requires_grad=True)
    rows = mask.flatten().nonzero()[:, 0] if given_rows else None
    _assert_same_value_and_gradient(gloria_local_loss(words, mask, patches, 4.0, 5.0, 10.0, word_rows=rows),
                                    _gloria_local_by_hand(words, mask, patches, 4.0, 5.0, 10.0), (words, patches))


def test_gloria_global_loss_and_word_sums():
    image, report = _unit(4, 5, seed=7).requires_grad_(), _unit(4, 5, seed=8).requires_grad_()
    logits = 10.0 * torch.stack([torch.stack([image[i] @ report[k] for k in range(4)]) for i in range(4)])
    labels = torch.arange(4)
    _assert_same_value_and_gradient(gloria_global_loss(image, report),
                                    F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels),
                                    (image, report))
    tokens = torch.randn(2, 5, 3, generator=_generator(9), dtype=DOUBLE)
    summed, mask = word_features(tokens, torch.tensor([[0, 1, 1, 2, 0], [0, 1, 0, 0, 0]]))
    torch.testing.assert_close(summed[0, 0], tokens[0, 1] + tokens[0, 2])
    assert mask.tolist() == [[True, True], [True, False]] and not summed[1, 1].any()


# ------------------------------------------------------------------------------------------------ MGCA
def _alignment_by_hand(queries, query_mask, keys, key_mask, weights, t, normalize):
    """MGCA's token-wise loss, pair by pair and token by token, on the real tokens only."""
    total = 0.0
    for b in range(queries.shape[0]):
        q, k = queries[b][query_mask[b]], keys[b][key_mask[b]]                               # [Q_b,D], [K_b,D]
        w = weights[b][query_mask[b]]
        contexts = []
        for j in range(len(q)):
            context = torch.softmax(k @ q[j] / t, dim=0) @ k
            contexts.append(F.normalize(context, dim=0) if normalize else context)
        similarity = torch.stack([torch.stack([q[i] @ c / t for c in contexts]) for i in range(len(q))])
        for i in range(len(q)):
            row = -torch.log_softmax(similarity[i], dim=0)[i]
            column = -torch.log_softmax(similarity[:, i], dim=0)[i]
            total = total + w[i] * (row + column) / 2
    return total / queries.shape[0]


def test_token_alignment_equals_its_loop_in_both_directions():
    words, word_mask = _words(batch=3, words=5, dim=4, seed=10)
    words = F.normalize(words, dim=-1).requires_grad_()
    patches = _unit(3, 4, 4, seed=12).requires_grad_()
    patch_mask = torch.ones(3, 4, dtype=torch.bool)
    word_weights = token_importance(torch.rand(3, 5, generator=_generator(13), dtype=DOUBLE), word_mask)
    patch_weights = token_importance(torch.rand(3, 4, generator=_generator(14), dtype=DOUBLE), patch_mask)
    for normalize in (True, False):
        _assert_same_value_and_gradient(
            token_alignment_loss(words, word_mask, patches, patch_mask, word_weights, 0.1, normalize),
            _alignment_by_hand(words, word_mask, patches, patch_mask, word_weights, 0.1, normalize), (words, patches))
        _assert_same_value_and_gradient(
            token_alignment_loss(patches, patch_mask, words, word_mask, patch_weights, 0.1, normalize),
            _alignment_by_hand(patches, patch_mask, words, word_mask, patch_weights, 0.1, normalize),
            (words, patches))


def test_token_importance_clips_each_row_to_its_deciles():
    attention = torch.rand(3, 7, generator=_generator(15), dtype=DOUBLE)
    mask = torch.rand(3, 7, generator=_generator(16)) > 0.3
    mask[:, :2] = True
    weights = token_importance(attention, mask)
    for b in range(3):
        real = attention[b][mask[b]]
        clipped = real.clip(torch.quantile(real, 0.1), torch.quantile(real, 0.9))
        torch.testing.assert_close(weights[b][mask[b]], clipped / clipped.sum())
        assert not weights[b][~mask[b]].any()


def _sinkhorn_by_hand(scores, epsilon, iterations):
    """MGCA's single-process sinkhorn, step by step on Q = exp(scores / eps)^T."""
    q = torch.exp(scores / epsilon).T
    q = q / q.sum()
    prototypes, samples = q.shape
    for _ in range(iterations):
        q = q * (1 / prototypes / q.sum(dim=1))[:, None]
        q = q * (1 / samples / q.sum(dim=0))[None, :]
    return (q / q.sum(dim=0, keepdim=True)).T


def test_sinkhorn_knopp_matches_mgca_and_has_the_right_marginals():
    scores = _unit(12, 5, seed=17) @ _unit(8, 5, seed=18).T                                 # [B=12, K=8]
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, 3), _sinkhorn_by_hand(scores, 0.05, 3))
    codes = sinkhorn_knopp(scores, 0.05, 3)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(12, dtype=DOUBLE))               # each sample: 1
    converged = sinkhorn_knopp(scores, 0.3, 500)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(12, dtype=DOUBLE))
    # equal partition: every prototype holds B / K of the batch's mass (loosely after 3 iterations)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((8,), 12 / 8, dtype=DOUBLE), atol=1e-6, rtol=0)
    plain_softmax = F.softmax(scores / 0.05, 1)
    assert float((codes.sum(dim=0) - 12 / 8).abs().max()) < float((plain_softmax.sum(0) - 1.5).abs().max())


def test_prototype_loss_equals_its_per_sample_loop():
    image, report = _unit(6, 5, seed=19).requires_grad_(), _unit(6, 5, seed=20).requires_grad_()
    prototypes = _unit(7, 5, seed=21).requires_grad_()
    image_codes = _sinkhorn_by_hand((image @ prototypes.T).detach(), 0.05, 3)
    report_codes = _sinkhorn_by_hand((report @ prototypes.T).detach(), 0.05, 3)
    reference = 0.0
    for i in range(6):
        report_probability = torch.softmax(report[i] @ prototypes.T / 0.2, dim=0)
        image_probability = torch.softmax(image[i] @ prototypes.T / 0.2, dim=0)
        reference = reference - ((image_codes[i] * torch.log(report_probability)).sum()
                                 + (report_codes[i] * torch.log(image_probability)).sum()) / 2 / 6
    _assert_same_value_and_gradient(prototype_loss(image, report, prototypes), reference,
                                    (image, report, prototypes))


def _objective_inputs(batch=5, patches=4, tokens=8, image_dim=6, text_dim=5, seed=30):
    g = _generator(seed)
    lengths = [8, 6, 5, 7, 4, 8, 6][:batch]
    mask = torch.tensor([[1] * n + [0] * (tokens - n) for n in lengths])
    # word pieces: [CLS] w w ##w w ... [SEP]: word numbers by hand
    index = torch.zeros(batch, tokens, dtype=torch.long)
    for b, n in enumerate(lengths):
        words = [1, 2, 2, 3, 4, 5][:n - 2]
        index[b, 1:n - 1] = torch.tensor(words)
    return {"image_global": torch.randn(batch, image_dim, generator=g, dtype=DOUBLE),
            "patches": torch.randn(batch, patches, image_dim, generator=g, dtype=DOUBLE),
            "tokens": torch.randn(batch, tokens, text_dim, generator=g, dtype=DOUBLE),
            "attention_mask": mask, "word_index": index,
            "text_class_attention": torch.rand(batch, tokens, generator=g, dtype=DOUBLE) * mask,
            "image_class_attention": torch.softmax(torch.randn(batch, patches, generator=g, dtype=DOUBLE), 1)}


def test_prototypes_are_frozen_in_the_first_epoch_only():
    torch.manual_seed(0)
    objective = MGCAObjective(6, 5, embed_dim=4, hidden_dim=8, num_prototypes=7).double()
    inputs = _objective_inputs()
    sum(objective(inputs, epoch=0).values()).backward()
    assert objective.prototypes.grad is None
    assert objective.global_image.first.weight.grad is not None
    torch.testing.assert_close(objective.prototypes.norm(dim=1), torch.ones(7, dtype=DOUBLE))  # re-normalised
    objective.zero_grad()
    sum(objective(inputs, epoch=1).values()).backward()
    assert objective.prototypes.grad is not None and bool(objective.prototypes.grad.abs().sum() > 0)


def test_validation_leaves_the_prototypes_untouched():
    torch.manual_seed(0)
    objective = MGCAObjective(6, 5, embed_dim=4, hidden_dim=8, num_prototypes=7).double()
    with torch.no_grad():
        objective.prototypes.mul_(3.0)                      # off the unit sphere, as after an optimiser step
    before = objective.prototypes.detach().clone()
    objective.eval()
    evaluated = objective(_objective_inputs(), epoch=1)
    assert torch.equal(objective.prototypes, before)       # eval reads a normalised copy
    objective.train()
    trained = objective(_objective_inputs(), epoch=1)
    torch.testing.assert_close(objective.prototypes.norm(dim=1), torch.ones(7, dtype=DOUBLE))
    assert torch.isfinite(evaluated["prototype"]) and torch.isfinite(trained["prototype"])


def test_global_batch_norm_is_batch_norm_in_one_process():
    rows = torch.randn(6, 3, generator=_generator(31), dtype=DOUBLE, requires_grad=True)
    ours, reference = GlobalBatchNorm(3).double(), torch.nn.BatchNorm1d(3).double()
    _assert_same_value_and_gradient(ours(rows).square().sum(), reference(rows).square().sum(), (rows,))
    torch.testing.assert_close(ours.running_var, reference.running_var)
    torch.testing.assert_close(ours.running_mean, reference.running_mean)


# ------------------------------------------------------------------------------------------------ 2 ranks
SPLIT = (2, 3)   # rank 0 holds 2 pairs, rank 1 holds 3: ranks may differ


def _objectives():
    torch.manual_seed(0)
    return {"convirt": ConVIRTObjective(6, 5, embed_dim=4),
            "gloria": GLoRIAObjective(6, 5, embed_dim=4),
            "mgca": MGCAObjective(6, 5, embed_dim=4, hidden_dim=8, num_prototypes=7)}


def _run_objectives(inputs):
    """Every objective on `inputs` (epoch 1: prototypes trained): losses, input gradients, parameter gradients."""
    results = {}
    for name, objective in _objectives().items():
        objective.double()
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items() if v.is_floating_point()}
        losses = objective({**inputs, **leaves}, epoch=1)
        total = sum(losses.values())
        parameters = dict(objective.named_parameters())
        grads = torch.autograd.grad(total, list(leaves.values()) + list(parameters.values()), allow_unused=True)
        results[name] = ({k: float(v.detach()) for k, v in losses.items()},
                         dict(zip(leaves, grads[:len(leaves)])), dict(zip(parameters, grads[len(leaves):])))
    return results


def _rank_rows(inputs, rank):
    rows = slice(0, SPLIT[0]) if rank == 0 else slice(SPLIT[0], sum(SPLIT))
    return {k: v[rows] for k, v in inputs.items()}


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.save(_run_objectives(_rank_rows(_objective_inputs(), rank)), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = _run_objectives(_objective_inputs())
    for name, (losses, input_grads, parameter_grads) in single.items():
        for term, value in losses.items():   # each rank holds its share; their mean is the global value
            assert math.isclose((ranks[0][name][0][term] + ranks[1][name][0][term]) / 2, value, rel_tol=1e-9), \
                (name, term)
        for key, grad in input_grads.items():   # rank gradients / 2 (DDP's average) are the rows' gradients
            if grad is None:
                assert ranks[0][name][1][key] is None, (name, key)
                continue
            torch.testing.assert_close(torch.cat([ranks[0][name][1][key], ranks[1][name][1][key]]) / 2, grad,
                                       msg=f"{name}: gradient of {key}")
        for key, grad in parameter_grads.items():   # DDP averages the ranks' parameter gradients
            assert grad is not None, (name, key)
            torch.testing.assert_close((ranks[0][name][2][key] + ranks[1][name][2][key]) / 2, grad,
                                       msg=f"{name}: gradient of {key}")


# ---------------------------------------------------------------------------------------- token importance inputs
def test_class_attention_equals_the_encoders_own_attention_weights():
    """MGCA's weights: BERT's last-layer [CLS] attention as transformers returns it (eager attention), and the
    ViT's last block's class-token attention written out from its fused qkv."""
    from transformers import BertConfig, BertModel

    from cgns.models.class_attention import LayerInput, bert_class_attention, vit_class_attention
    from cgns.models.vit import VisionTransformer

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=32, attn_implementation="eager"), add_pooling_layer=False).eval()
    ids = torch.randint(3, 30, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    with LayerInput(bert.encoder.layer[-1]) as captured:
        output = bert(input_ids=ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(bert_class_attention(bert.encoder.layer[-1], captured.hidden, mask),
                               output.attentions[-1][:, :, 0].mean(dim=1))

    vit = VisionTransformer(image_size=32, patch_size=16, dim=12, depth=2, num_heads=3).eval()
    images = torch.randn(2, 3, 32, 32)
    block = vit.blocks[-1]
    with LayerInput(block) as captured:
        vit(images)
    q, k, _ = block.attn.qkv(block.norm1(captured.hidden)).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)[:, :, 0, 1:].mean(dim=1)    # [B,L]
    torch.testing.assert_close(vit_class_attention(block, captured.hidden), expected)


def test_every_peer_preset_builds_its_objective_and_names_real_loop_fields():
    import dataclasses

    from cgns.engine.methods import PRESETS, build_objective, loop_settings
    from cgns.engine.pretrain import LoopConfig

    fields = {f.name for f in dataclasses.fields(LoopConfig)}
    for method, presets in PRESETS.items():
        for preset in presets:
            assert set(presets[preset]["loop"]) <= fields, (method, preset)
            assert loop_settings(LoopConfig(), method, preset).stage2_epochs == 0
        objective = build_objective(method, "vit_tiny", 6, 5, "demo").double()
        losses = objective(_objective_inputs(), epoch=1)
        assert all(bool(torch.isfinite(v)) for v in losses.values()), (method, losses)
    try:
        build_objective("gloria", "vit_tiny", 6, 5, "demo", t1=4.0)
    except ValueError as err:
        assert "unknown objective setting" in str(err)
    else:
        raise AssertionError("an unknown setting must be refused")
