"""CM-MIR decoders: output range and size, independent batch-first layers, the drop and its rescale."""
import torch

from cgns.models.decoders import ResNetDecoder, ViTDecoder, drop_channels, drop_tokens


def test_outputs_cover_the_target_range_at_input_resolution():
    torch.manual_seed(0)
    for decoder, grid in ((ViTDecoder(32, (2, 2), 16, num_layers=2, num_heads=4, feedforward=64), (2, 2)),
                          (ResNetDecoder(32, (1, 1), 32), (1, 1))):
        tokens = torch.randn(4, grid[0] * grid[1], 32)
        out = decoder(tokens, torch.randn_like(tokens))
        assert out.shape == (4, 3, 32, 32)
        assert out.min() >= -1 and out.max() <= 1
        # the last activation reaches both ends of [-1, 1] (the original's ReLU before tanh stayed in [0, 1))
        last_conv = decoder.head[-2]
        torch.nn.init.zeros_(last_conv.weight)
        for bias, bound in ((4.0, 0.99), (-4.0, -0.99)):
            torch.nn.init.constant_(last_conv.bias, bias)
            out = decoder(tokens, torch.randn_like(tokens))
            assert (out > bound).all() if bias > 0 else (out < bound).all()


def test_vit_decoder_layers_are_independent_and_samples_do_not_mix():
    torch.manual_seed(0)
    decoder = ViTDecoder(16, (2, 2), 16, num_layers=3, num_heads=2, feedforward=32, drop=0.0).eval()
    layers = decoder.layers
    assert len({layer.self_attn.in_proj_weight.data_ptr() for layer in layers}) == 3
    assert not torch.equal(layers[0].linear1.weight, layers[1].linear1.weight)
    tokens, text = torch.randn(3, 4, 16), torch.randn(3, 4, 16)
    out = decoder(tokens, text)
    changed_tokens, changed_text = tokens.clone(), text.clone()
    changed_tokens[1] += 5.0
    changed_text[2] -= 5.0
    again = decoder(changed_tokens, changed_text)
    torch.testing.assert_close(again[0], out[0])                     # sample 0 never sees samples 1 and 2
    assert not torch.allclose(again[1], out[1]) and not torch.allclose(again[2], out[2])


def test_drops_zero_whole_tokens_or_channels_and_rescale():
    torch.manual_seed(0)
    tokens = torch.ones(64, 50, 8)
    dropped = drop_tokens(tokens, 0.5)
    per_token = dropped[..., 0]
    assert torch.equal(dropped, per_token[..., None].expand_as(dropped))   # a token is all kept or all zero
    assert set(per_token.unique().tolist()) == {0.0, 2.0}
    assert abs(float(dropped.mean()) - 1.0) < 0.05                   # expectation preserved
    feature_map = torch.ones(64, 40, 3, 3)
    dropped = drop_channels(feature_map, 0.5)
    assert torch.equal(dropped, dropped[:, :, :1, :1].expand_as(dropped))
    assert abs(float((dropped[:, :, 0, 0] == 0).float().mean()) - 0.5) < 0.05
