"""Our ViT / ResNet-50 have exactly timm's / torchvision's state-dict layout, and such files load with strict=True.

The expected key -> shape tables are written out by hand from timm's VisionTransformer and torchvision's resnet50
(neither library is installed here), so a renamed or reshaped parameter fails the test.
"""
import pytest
import torch
import torch.nn.functional as F

from cgns.models.encoders import load_image_encoder
from cgns.models.resnet import resnet50
from cgns.models.vit import Attention, vit_base, vit_small, vit_tiny


def timm_vit_table(dim, depth, grid=14, num_classes=1000):
    table = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim),
             "patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        p = f"blocks.{i}."
        table.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                      p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
                      p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                      p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                      p + "mlp.fc1.weight": (4 * dim, dim), p + "mlp.fc1.bias": (4 * dim,),
                      p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,)})
    table.update({"norm.weight": (dim,), "norm.bias": (dim,),
                  "head.weight": (num_classes, dim), "head.bias": (num_classes,)})
    return table


def _bn(table, prefix, channels):
    table.update({prefix + "weight": (channels,), prefix + "bias": (channels,), prefix + "running_mean": (channels,),
                  prefix + "running_var": (channels,), prefix + "num_batches_tracked": ()})


def torchvision_resnet50_table(num_classes=1000):
    table = {"conv1.weight": (64, 3, 7, 7)}
    _bn(table, "bn1.", 64)
    in_channels = 64
    for layer, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}."
            block_in = in_channels if b == 0 else width * 4
            table[p + "conv1.weight"] = (width, block_in, 1, 1)
            _bn(table, p + "bn1.", width)
            table[p + "conv2.weight"] = (width, width, 3, 3)
            _bn(table, p + "bn2.", width)
            table[p + "conv3.weight"] = (width * 4, width, 1, 1)
            _bn(table, p + "bn3.", width * 4)
            if b == 0:
                table[p + "downsample.0.weight"] = (width * 4, in_channels, 1, 1)
                _bn(table, p + "downsample.1.", width * 4)
        in_channels = width * 4
    table.update({"fc.weight": (num_classes, 2048), "fc.bias": (num_classes,)})
    return table


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def random_state(table, dtype=torch.float32):
    """Random values for the small tensors; a distinct constant per key for the large ones (fast to make)."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for i, (key, shape) in enumerate(table.items()):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(i)
        elif torch.Size(shape).numel() > 100_000:
            state[key] = torch.full(shape, float(i), dtype=dtype)
        else:
            state[key] = torch.randn(shape, generator=generator).to(dtype)
    return state


@pytest.mark.parametrize("factory,dim", [(vit_tiny, 192), (vit_small, 384), (vit_base, 768)])
def test_vit_layout_equals_timm(factory, dim):
    with torch.device("meta"):  # shapes only, no memory or init time
        model = factory(224, num_classes=1000)
    assert shapes(model) == timm_vit_table(dim, 12)


def test_resnet50_layout_equals_torchvision():
    with torch.device("meta"):
        model = resnet50(num_classes=1000)
    assert shapes(model) == torchvision_resnet50_table()


@pytest.mark.parametrize("container", [None, "model"])  # timm saves a bare dict, DeiT wraps it in {'model': ...}
def test_timm_vit_file_loads_strictly_and_pos_embed_is_resampled(tmp_path, container):
    state = random_state(timm_vit_table(192, 12))
    path = tmp_path / "vit_tiny_patch16_224.pth"
    torch.save(state if container is None else {container: state}, path)

    at_224 = load_image_encoder("vit_tiny", 224, image_weights=path)
    loaded = at_224.backbone.state_dict()
    assert set(loaded) == set(state) - {"head.weight", "head.bias"}  # the classifier is dropped explicitly
    for key in ("blocks.7.attn.qkv.weight", "pos_embed", "patch_embed.proj.weight", "norm.bias"):
        assert torch.equal(loaded[key], state[key])

    at_128 = load_image_encoder("vit_tiny", 128, image_weights=path)
    pos = at_128.backbone.pos_embed.detach()
    assert pos.shape == (1, 1 + 8 * 8, 192)
    assert torch.equal(pos[:, 0], state["pos_embed"][:, 0])  # the class position is not resized
    grid = state["pos_embed"][:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(pos[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 64, 192))
    assert torch.equal(at_128.backbone.blocks[3].mlp.fc2.weight, state["blocks.3.mlp.fc2.weight"])


def test_torchvision_resnet50_file_loads_strictly(tmp_path):
    state = random_state(torchvision_resnet50_table(), dtype=torch.float16)  # half: a smaller file to write
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    encoder = load_image_encoder("resnet50", 64, image_weights=path)
    loaded = encoder.backbone.state_dict()
    assert set(loaded) == set(state) - {"fc.weight", "fc.bias"}
    for key in ("layer3.4.conv2.weight", "layer4.0.downsample.1.running_var", "bn1.num_batches_tracked"):
        assert torch.equal(loaded[key], state[key].to(loaded[key].dtype))


def test_a_file_of_another_layout_is_refused_naming_the_file(tmp_path):
    state = random_state(timm_vit_table(192, 12))
    state["blocks.0.attn.qkv_renamed.weight"] = state.pop("blocks.0.attn.qkv.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="(?s)renamed.pth.*qkv_renamed"):
        load_image_encoder("vit_tiny", 224, image_weights=path)
    torch.save(random_state(torchvision_resnet50_table()), path)
    with pytest.raises(ValueError, match="renamed.pth"):
        load_image_encoder("vit_tiny", 224, image_weights=path)


def test_attention_splits_the_fused_qkv_like_timm():
    """qkv rows are [q | k | v], each [heads x head_dim]: recompute one block's attention by hand per head."""
    torch.manual_seed(0)
    dim, heads = 12, 3
    attention = Attention(dim, heads)
    x = torch.randn(2, 5, dim)
    q, k, v = attention.qkv(x).split(dim, dim=-1)
    outputs = []
    for h in range(heads):
        cols = slice(h * dim // heads, (h + 1) * dim // heads)
        weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / (dim // heads) ** 0.5, dim=-1)
        outputs.append(weights @ v[..., cols])
    torch.testing.assert_close(attention(x), attention.proj(torch.cat(outputs, dim=-1)))
