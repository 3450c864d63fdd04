"""The grounding term (GLoRIA's local loss over sentences): by hand, gradcheck, 2 gloo ranks = 1 process, and it
learns to attend where a sentence's finding is."""
import math
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cgns.losses.grounding import grounding_attention, grounding_loss, report_image_scores


def _scores_by_hand(z, owner, num_reports, patches, t1, t2):
    """The explicit form: each sentence's context over each image, then log-sum-exp per report."""
    scores = torch.zeros(num_reports, patches.shape[0], dtype=patches.dtype)
    for report in range(num_reports):
        for image in range(patches.shape[0]):
            cosines = []
            for k in (owner == report).nonzero()[:, 0].tolist():
                weights = torch.softmax(t1 * patches[image] @ z[k], dim=0)            # [L]
                context = weights @ patches[image]                                    # [D]
                cosines.append(F.cosine_similarity(z[k], context, dim=0))
            scores[report, image] = torch.logsumexp(t2 * torch.stack(cosines), dim=0) / t2
    return scores


def _inputs(batch=4, sentences=3, patches=5, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, sentences, generator=generator) > 0.4
    mask[:, 0] = True                                                                 # every report has one
    return (torch.randn(batch, sentences, dim, generator=generator, dtype=torch.float64), mask,
            F.normalize(torch.randn(batch, patches, dim, generator=generator, dtype=torch.float64), dim=-1))


def test_scores_and_loss_match_the_explicit_form():
    sentences, mask, patches = _inputs()
    z, owner = F.normalize(sentences[mask], dim=-1), mask.nonzero()[:, 0]
    expected = _scores_by_hand(z, owner, 4, patches, 4.0, 5.0)
    torch.testing.assert_close(report_image_scores(z, owner, 4, patches, 4.0, 5.0), expected)
    logits = 10.0 * expected
    labels = torch.arange(4)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(grounding_loss(sentences, mask, patches)["grounding"], loss)


def test_gradients_pass_gradcheck():
    sentences, mask, patches = _inputs(batch=3, sentences=2, patches=4, dim=5, seed=1)
    sentences.requires_grad_(True)
    raw = patches.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s, p: grounding_loss(s, mask, F.normalize(p, dim=-1), 2.0, 3.0, 4.0)["grounding"], (sentences, raw))


def test_the_attention_is_a_softmax_over_each_images_patches():
    sentences, _, patches = _inputs()
    z = F.normalize(sentences, dim=-1)                                                # [B, S, D]
    attention = grounding_attention(z, patches, 4.0)                                  # [B, S, L]
    assert attention.shape == (4, 3, 5)
    torch.testing.assert_close(attention.sum(-1), torch.ones(4, 3, dtype=attention.dtype))
    torch.testing.assert_close(attention[1, 2], torch.softmax(4.0 * patches[1] @ z[1, 2], 0))


def test_sentences_trained_by_it_attend_to_their_finding():
    """Images share a background and differ only in one finding patch at a random place; sentences learnt from the
    term alone come to attend to their own image's finding patch (the background is what every image has). The
    objective is not convex: a sentence can settle in a poor optimum, so most, not all, must find it."""
    generator = torch.Generator().manual_seed(0)
    batch, num_patches, dim = 8, 16, 64    # at D=16 a sentence or two per seed settled on a confuser: 5 of 8
    background = F.normalize(torch.randn(dim, generator=generator), dim=0)
    findings = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    where = torch.randint(num_patches, (batch,), generator=generator)
    patches = background.repeat(batch, num_patches, 1) + 0.05 * torch.randn(batch, num_patches, dim,
                                                                            generator=generator)
    patches[torch.arange(batch), where] = findings
    patches = F.normalize(patches, dim=-1)
    sentences = torch.nn.Parameter(torch.randn(batch, 1, dim, generator=generator))
    mask = torch.ones(batch, 1, dtype=torch.bool)

    def weight_on_finding():                                                            # [B]
        attention = grounding_attention(F.normalize(sentences.detach(), dim=-1), patches, 4.0)  # [B, 1, L]
        return attention[torch.arange(batch), 0, where]

    before = weight_on_finding()
    optimiser = torch.optim.Adam([sentences], lr=0.05)
    for _ in range(200):
        optimiser.zero_grad()
        grounding_loss(sentences, mask, patches)["grounding"].backward()
        optimiser.step()
    after = weight_on_finding()
    # before: uniform would be 1/16; max 0 over seeds 0-4, 1/2 threads, torch 2.13.0/2.14.1; threshold 1
    assert int((before > 0.5).sum()) <= 1, before
    # min 8 of 8 over seeds 0-4, 1/2 threads, torch 2.13.0/2.14.1 (min 7 over seeds 0-19, 1 thread, 2.13.0);
    # threshold 6
    assert int((after > 0.5).sum()) >= 6, after


# ------------------------------------------------------------------------------------------------ 2 ranks
def _rank_inputs(rank):
    sentences, mask, patches = _inputs(batch=4, sentences=3)
    rows = slice(0, 1) if rank == 0 else slice(1, 4)                     # ranks hold 1 and 3 reports
    return sentences[rows].float(), mask[rows], patches[rows].float()


def _run(sentences, mask, patches):
    leaves = sentences.clone().requires_grad_(True), patches.clone().requires_grad_(True)
    loss = grounding_loss(leaves[0], mask, F.normalize(leaves[1], dim=-1))["grounding"]
    loss.backward()
    return float(loss.detach()), leaves[0].grad, leaves[1].grad


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.save(_run(*_rank_inputs(rank)), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    sentences, mask, patches = _inputs(batch=4, sentences=3)
    loss, sentence_grad, patch_grad = _run(sentences.float(), mask, patches.float())
    # each rank's value is its share (world * local sum / global count): their mean is the global loss
    assert math.isclose((ranks[0][0] + ranks[1][0]) / 2, loss, rel_tol=1e-5)
    # DDP averages gradients over ranks: rank gradients / 2 are the one-process gradients of that rank's rows
    torch.testing.assert_close(torch.cat([ranks[0][1], ranks[1][1]]) / 2, sentence_grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([ranks[0][2], ranks[1][2]]) / 2, patch_grad, atol=1e-6, rtol=1e-5)


def test_the_benchmarks_direct_form_is_the_same_function():
    """cgns.bench.grounding times the contexts-formed form against ours: same scores, same gradients."""
    from cgns.bench.grounding import direct_scores

    sentences, mask, patches = _inputs(batch=5, sentences=4, patches=6, dim=7, seed=3)
    raw = sentences[mask].clone().requires_grad_(True)
    owner = mask.nonzero()[:, 0]
    # both take unit sentences (ours uses |sentence| = 1): the gradient is taken through the normalisation
    ours = report_image_scores(F.normalize(raw, dim=-1), owner, 5, patches, 25.0, 5.0)
    direct = direct_scores(F.normalize(raw, dim=-1), owner, 5, patches, 25.0, 5.0)
    torch.testing.assert_close(ours, direct)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), raw)
    (grad_direct,) = torch.autograd.grad(direct.square().sum(), raw)
    torch.testing.assert_close(grad_ours, grad_direct)


def test_the_collates_sentence_rows_give_the_masks_loss_and_gradients_exactly():
    """The step passes the collate's sentence_rows (no host read); the loss and its gradients are bit-identical to
    the boolean-mask form (sentences[mask], owner = mask.nonzero()[:, 0]), gaps between sentences included."""
    from cgns.data.datasets import sentence_layout
    from cgns.losses.grounding import report_image_matching_loss
    sentences, mask, patches = _inputs(batch=5, sentences=4, patches=6, dim=7, seed=2)
    mask[0, -1], mask[1, 1] = True, False                                             # S is used; a gap
    sentence_index = torch.zeros(5, 12, dtype=torch.long)
    for b, s in mask.nonzero().tolist():
        sentence_index[b, 1 + 2 * s:3 + 2 * s] = s + 1                                # two tokens per sentence
    rows = sentence_layout(sentence_index, torch.ones_like(sentence_index))["sentence_rows"]
    results = []
    for form in ("rows", "mask"):
        s, p = sentences.clone().requires_grad_(True), patches.clone().requires_grad_(True)
        if form == "rows":
            loss = grounding_loss(s, mask, p, 2.0, 3.0, 4.0, sentence_rows=rows)["grounding"]
        else:
            loss = report_image_matching_loss(F.normalize(s[mask], dim=-1), mask.nonzero()[:, 0], p, 2.0, 3.0, 4.0)
        loss.backward()
        results.append((loss.detach(), s.grad, p.grad))
    for x, y in zip(*results):
        assert torch.equal(x, y)
    assert results[0][1].abs().sum() > 0
