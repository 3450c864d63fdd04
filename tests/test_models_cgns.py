"""The pretraining model end to end on tiny inputs: loss terms per stage and ablation, gradients, bad batches."""
import pytest
import torch

from cgns.models.cgns import CGNSConfig, CGNSModel

VOCAB = 60


def tiny_config(**overrides):
    values = dict(image_encoder="vit_tiny", image_size=32, text_vocab_size=VOCAB, text_hidden_size=32,
                  text_layers=1, text_heads=2, text_max_positions=64, embed_dim=32, pool_heads=4,
                  num_clusters=4, kmeans_start_cosine=1.0, decoder_layers=2, decoder_heads=4, decoder_feedforward=64)
    values.update(overrides)
    return CGNSConfig(**values)


def tiny_batch(batch=4, length=16, seed=0, image_size=32):
    generator = torch.Generator().manual_seed(seed)
    sentence_index = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        sentences = 2 + b % 3
        for s in range(sentences):
            sentence_index[b, 1 + 3 * s:4 + 3 * s] = s + 1
    attention_mask = (sentence_index > 0).long()
    attention_mask[:, 0] = 1
    return {"image": torch.rand(batch, 3, image_size, image_size, generator=generator) * 2 - 1,
            "input_ids": torch.randint(5, VOCAB, (batch, length), generator=generator) * attention_mask,
            "attention_mask": attention_mask, "sentence_index": sentence_index, "index": torch.arange(10, 10 + batch)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CGNSModel(tiny_config())


def test_loss_terms_per_stage_and_gradients_reach_every_part(model):
    batch = tiny_batch()
    losses, stats = model(batch, stage=1)
    assert set(losses) == {"global", "local_image", "local_text", "false_negative"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert all(isinstance(v, torch.Tensor) for v in stats.values())
    assert float(stats["kmeans_started"]) == 1.0                      # threshold 1.0: starts at once
    model.zero_grad()
    losses, stats = model(batch, stage=2)                              # second step: hard negatives in use
    assert "reconstruction" in losses and float(stats["false_negative_pairs"]) >= 0
    sum(losses.values()).backward()
    for part in ("image_encoder", "text_encoder", "local_text_projection", "report_pool", "cross_attention",
                 "predictor", "decoder", "global_image_projection", "local_image_projection"):
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, part
    assert model.log_logit_scale.grad is not None


def test_ablations_remove_their_terms():
    torch.manual_seed(0)
    batch = tiny_batch()
    assert set(CGNSModel(tiny_config(cgns=False))(batch, 2)[0]) == {"global", "local_image", "local_text",
                                                                        "reconstruction"}
    assert set(CGNSModel(tiny_config(mir=False))(batch, 2)[0]) == {"global", "local_image", "local_text",
                                                                       "false_negative"}
    global_only = CGNSModel(tiny_config(cgns=False, mir=False, local=False))
    assert set(global_only(batch, 2)[0]) == {"global"}
    assert tiny_config(local=False).cgns is False                  # CGNS acts on the local text loss


def test_encoders_give_unit_vectors_and_attention_maps(model):
    batch = tiny_batch()
    image = model.encode_image(batch["image"])
    text = model.encode_text(batch["input_ids"], batch["attention_mask"], batch["sentence_index"])
    assert image.shape == text.shape == (4, 32)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(4))
    maps = model.local_attention(batch)
    assert maps["maps"].shape == (4, 4, 2, 2) and maps["sentence_mask"].sum(1).tolist() == [2, 3, 4, 2]
    assert float(maps["maps"].min()) >= 0 and float(maps["maps"].max()) <= 1


def test_report_without_sentence_is_refused_naming_the_sample(model):
    batch = tiny_batch()
    batch["sentence_index"][2] = 0
    with pytest.raises(ValueError, match=r"without any sentence.*dataset index \[12\]"):
        model(batch, stage=1)


def test_eval_does_not_move_the_centroids_and_config_round_trips(model):
    model.eval()
    before = model.clustering.centroids.clone()
    model(tiny_batch(seed=1), stage=2)
    assert torch.equal(before, model.clustering.centroids)
    model.train()
    config = tiny_config()
    assert CGNSConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown field\(s\) colour"):
        CGNSConfig.from_dict(dict(config.to_dict(), colour="red"))
    restored = CGNSModel(config)
    restored.load_state_dict(model.state_dict(), strict=True)       # k-means state included
    assert torch.equal(restored.clustering.centroids, model.clustering.centroids)


def test_resnet_model_runs_both_stages_with_its_decoder():
    torch.manual_seed(0)
    model = CGNSModel(tiny_config(image_encoder="resnet50", image_size=32))
    losses, _ = model(tiny_batch(batch=3, image_size=32), stage=2)
    assert set(losses) == {"global", "local_image", "local_text", "false_negative", "reconstruction"}
    sum(losses.values()).backward()
    assert float(model.decoder.head[0].weight.grad.abs().sum()) > 0
    assert float(model.image_encoder.attention_pool.q_proj.weight.grad.abs().sum()) > 0


def test_the_grounding_term_is_added_weighted_and_its_attention_mapped():
    torch.manual_seed(0)
    batch = tiny_batch()
    plain = CGNSModel(tiny_config(cgns=False, mir=False, local=False))
    torch.manual_seed(0)
    grounded = CGNSModel(tiny_config(cgns=False, mir=False, local=False, grounding_weight=0.5))
    losses = grounded(batch, 1)[0]
    assert set(losses) == {"global", "grounding"} and set(plain(batch, 1)[0]) == {"global"}
    torch.manual_seed(0)
    unit = CGNSModel(tiny_config(cgns=False, mir=False, local=False, grounding_weight=1.0))
    torch.testing.assert_close(losses["grounding"], 0.5 * unit(batch, 1)[0]["grounding"])
    losses["grounding"].backward()
    for part in ("image_encoder", "text_encoder", "local_text_projection", "local_image_projection"):
        assert sum(float(p.grad.abs().sum()) for p in getattr(grounded, part).parameters() if p.grad is not None) > 0
    maps = grounded.local_attention(batch, kind="grounding")
    assert maps["maps"].shape == (4, 4, 2, 2)
    real = maps["maps"][maps["sentence_mask"]]                                        # [n, 2, 2]
    torch.testing.assert_close(real.sum(dim=(1, 2)), torch.ones(len(real)))           # a softmax over the patches
    with pytest.raises(RuntimeError, match="without local alignment"):
        grounded.local_attention(batch)                                                # no cross-attention built
    with pytest.raises(ValueError, match="attention kind"):
        grounded.local_attention(batch, kind="both")
    with pytest.raises(ValueError, match="grounding_weight must be >= 0"):
        tiny_config(grounding_weight=-1.0)
    with pytest.raises(ValueError, match="grounding_temperature must be > 0"):
        tiny_config(grounding_temperature=0.0)


def test_the_grounding_term_encodes_each_sentence_on_its_own():
    torch.manual_seed(0)
    batch = tiny_batch()
    model = CGNSModel(tiny_config(grounding_weight=1.0)).eval()
    _, in_report, sentence_mask = model.text_features(batch["input_ids"], batch["attention_mask"],
                                                      batch["sentence_index"])
    alone = model.grounding_sentences(batch)                              # [B,S,D]
    # reference: report 0 with only its first sentence's tokens visible, through the ordinary path
    first_only = dict(batch, attention_mask=(batch["sentence_index"] == 1).long())
    reference = model.text_features(first_only["input_ids"], first_only["attention_mask"],
                                    first_only["sentence_index"])[1]
    torch.testing.assert_close(alone[:, 0], reference[:, 0])
    # editing report 0's second sentence moves its first sentence in the report's context, not on its own
    edited = dict(batch, input_ids=batch["input_ids"].clone())
    edited["input_ids"][0, 4:7] = (batch["input_ids"][0, 4:7] + 1 - 5) % (VOCAB - 5) + 5
    _, in_report_edited, _ = model.text_features(edited["input_ids"], edited["attention_mask"],
                                                 edited["sentence_index"])
    alone_edited = model.grounding_sentences(edited)
    torch.testing.assert_close(alone_edited[0, 0], alone[0, 0])
    assert not torch.allclose(alone_edited[0, 1], alone[0, 1])
    assert not torch.allclose(in_report_edited[0, 0], in_report[0, 0], atol=1e-4)
