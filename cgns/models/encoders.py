"""Image encoders behind one interface: build_image_encoder(name, image_size) and load_image_encoder(...).

Every encoder maps images [B,3,S,S] (normalised to [-1,1]) to dict(global=[B,Dg], local=[B,L,Dl]) and exposes
feature_pyramid(images) for the downstream heads. Names: vit_tiny, vit_small, vit_base (patch 16, timm parameter
names under `backbone.`), resnet50 (torchvision names under `backbone.`, global vector by CLIP-style attention
pooling).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from cgns.engine.checkpoint import load_checkpoint, load_plain
from cgns.models.resnet import resnet50
from cgns.models.vit import VIT_SIZES, VisionTransformer, resample_pos_embed

ENCODER_NAMES = ("vit_tiny", "vit_small", "vit_base", "resnet50")


class AttentionPool(nn.Module):
    """CLIP-style attention pooling: the (masked) mean of the tokens queries [mean, tokens]; its output is returned.

    forward(tokens [B,N,D], mask bool[B,N] (True = real token) or None) -> [B,D_out]. With num_positions set, a
    learned position embedding [1+N,D] is added first (the ResNet grid); without it the pooling is order-free
    (sentences of a report).
    """

    def __init__(self, dim: int, num_heads: int, num_positions: int | None = None, output_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention pooling: width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.positional_embedding = (nn.Parameter(torch.randn(num_positions + 1, dim) / dim ** 0.5)
                                     if num_positions else None)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, output_dim or dim)
        # Zero biases, as nn.MultiheadAttention initialises them (the original pools reports with one). Default
        # nn.Linear biases would add the same random vector to every report and start all report vectors at
        # cosine ~0.99, a collapsed point that contrastive training from random init does not leave.
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            nn.init.zeros_(projection.bias)

    def forward(self, tokens, mask=None):
        batch, length, dim = tokens.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        if mask is None:
            mean = tokens.mean(dim=1)
        else:
            weight = mask.to(tokens.dtype)[..., None]                                 # [B,N,1]
            mean = (tokens * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
        sequence = torch.cat([mean[:, None], tokens], dim=1)                          # [B,1+N,D]
        if self.positional_embedding is not None:
            sequence = sequence + self.positional_embedding.to(sequence.dtype)
        # Only position 0 is kept, so there is one query per head, and the key/value projections are moved onto it
        # instead of being applied to all 1+N positions (same function, about (N+2)/2 times fewer flops):
        #   q_h . (Wk_h x_j + bk_h) = (Wk_h^T q_h) . x_j + q_h . bk_h
        #   sum_j a_hj (Wv_h x_j + bv_h) = Wv_h (sum_j a_hj x_j) + bv_h      (softmax weights sum to 1)
        query = self.q_proj(sequence[:, 0]).view(batch, heads, head_dim) * head_dim ** -0.5            # [B,H,hd]
        folded = torch.einsum("bhe,hed->bhd", query, self.k_proj.weight.view(heads, head_dim, dim))  # [B,H,D]
        # q . bk is the same for every position, so softmax cancels it; kept so k_proj.bias stays in the graph.
        key_bias = (query * self.k_proj.bias.view(heads, head_dim)).sum(dim=-1, keepdim=True)           # [B,H,1]
        scores = torch.baddbmm(key_bias, folded, sequence.transpose(1, 2))                             # [B,H,1+N]
        if mask is not None:
            # The query token itself is always attendable, so a row is never fully masked.
            attend = torch.cat([mask.new_ones(batch, 1), mask], dim=1)                                 # [B,1+N]
            scores = scores.masked_fill(~attend[:, None, :], float("-inf"))
        mixed = scores.softmax(dim=-1) @ sequence                                                      # [B,H,D]
        pooled = (torch.einsum("bhd,hed->bhe", mixed, self.v_proj.weight.view(heads, head_dim, dim))
                  + self.v_proj.bias.view(heads, head_dim))                                           # [B,H,hd]
        return self.c_proj(pooled.reshape(batch, dim))


class ViTEncoder(nn.Module):
    """global = class token, local = the L patch tokens (both after the final norm), width D."""

    def __init__(self, name: str, image_size: int):
        super().__init__()
        width, depth, heads = VIT_SIZES[name]
        self.name, self.image_size = name, image_size
        self.backbone = VisionTransformer(image_size, 16, width, depth, heads, num_classes=0)
        self.grid = (self.backbone.grid, self.backbone.grid)
        self.patch_stride = 16
        self.global_dim = self.local_dim = width
        # Four evenly spaced blocks (2, 5, 8, 11 of 12), all at stride 16.
        self.pyramid_blocks = [depth * (i + 1) // 4 - 1 for i in range(4)]
        self.pyramid_channels = [width] * 4
        self.pyramid_strides = [16] * 4

    def forward(self, images):
        """-> dict(global [B,D] (the class token), local [B,L,D] (the patch tokens))."""
        tokens = self.backbone(images)                                    # [B,1+L,D]
        return {"global": tokens[:, 0], "local": tokens[:, 1:]}

    def feature_pyramid(self, images):
        """Outputs of the pyramid blocks as maps [B,D,S/16,S/16] (the last one after the final norm)."""
        maps = []
        for tokens in self.backbone.forward_blocks(images, self.pyramid_blocks):
            patches = tokens[:, 1:]                                       # [B,h*w,D], row-major
            maps.append(patches.transpose(1, 2).reshape(patches.shape[0], -1, *self.grid))
        return maps


class ResNetEncoder(nn.Module):
    """local = layer4 cells as tokens [B,h*w,2048] (row-major), global = attention pooling over them."""

    def __init__(self, image_size: int, pool_heads: int = 8):
        super().__init__()
        if image_size % 32:
            raise ValueError(f"resnet50 needs an image size that is a multiple of 32, got {image_size}")
        self.name, self.image_size = "resnet50", image_size
        self.backbone = resnet50(num_classes=0)
        self.grid = (image_size // 32, image_size // 32)
        self.patch_stride = 32
        self.global_dim = self.local_dim = self.backbone.out_channels
        self.attention_pool = AttentionPool(self.local_dim, pool_heads, num_positions=self.grid[0] * self.grid[1])
        self.pyramid_channels = [64, 256, 512, 1024, 2048]
        self.pyramid_strides = [2, 4, 8, 16, 32]

    def forward(self, images):
        feature_map = self.backbone(images)                               # [B,C,h,w]
        # Permute before flattening so token i is the feature at (i // w, i % w): the original's plain view()
        # scrambled channels and positions.
        local = feature_map.flatten(2).transpose(1, 2)                    # [B,h*w,C]
        return {"global": self.attention_pool(local), "local": local}

    def feature_pyramid(self, images):
        return self.backbone.stages(images)


def build_image_encoder(name: str, image_size: int) -> nn.Module:
    """An untrained encoder: name in ENCODER_NAMES, image_size in px (a multiple of 16 for ViT, 32 for ResNet)."""
    if name in VIT_SIZES:
        return ViTEncoder(name, image_size)
    if name == "resnet50":
        return ResNetEncoder(image_size)
    raise ValueError(f"unknown image encoder {name!r}; choose one of {', '.join(ENCODER_NAMES)}")


def unwrap_state_dict(loaded, source):
    """A state dict, also when saved inside {'model': ...} or {'state_dict': ...} (DeiT / Lightning files)."""
    for key in ("model", "state_dict"):
        if isinstance(loaded, dict) and key in loaded and isinstance(loaded[key], dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{source}: not a state dict of tensors")
    return dict(loaded)


def read_weights(path) -> dict:
    """A weights file: .safetensors (e.g. an export's image_encoder.safetensors), else a torch.save file read with
    weights_only=True (a pickle carrying code is refused, naming the file)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise FileNotFoundError(f"image weights {path}: no such file")
        return load_file(str(path))
    return load_plain(path, "image weights")


def load_backbone_weights(encoder: nn.Module, state_dict: dict, source: str = "image weights") -> list[str]:
    """Load a timm ViT / torchvision ResNet-50 state dict into encoder.backbone with strict=True.

    The ImageNet classifier (ViT `head.*`, ResNet `fc.*`) is dropped explicitly because the encoder has none, and a
    ViT pos_embed for another grid (224 px weights at 128 px) is resampled. Returns the dropped keys.
    """
    state = dict(state_dict)
    classifier = "head." if isinstance(encoder, ViTEncoder) else "fc."
    dropped = sorted(k for k in state if k.startswith(classifier))
    for key in dropped:
        del state[key]
    if isinstance(encoder, ViTEncoder) and "pos_embed" in state:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], encoder.backbone.grid)
    try:
        encoder.backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{source}: does not match the {encoder.name} layout: {err}") from None
    return dropped


def _resample_positions(state: dict, encoder: nn.Module) -> None:
    """Position tables of a checkpoint trained at another image size, resized to this encoder's grid."""
    if isinstance(encoder, ViTEncoder) and "backbone.pos_embed" in state:
        state["backbone.pos_embed"] = resample_pos_embed(state["backbone.pos_embed"], encoder.grid[0])
    key = "attention_pool.positional_embedding"
    if isinstance(encoder, ResNetEncoder) and key in state:
        state[key] = resample_pos_embed(state[key][None], encoder.grid[0])[0]


def load_image_encoder(name: str, image_size: int, checkpoint=None, image_weights=None) -> nn.Module:
    """An encoder from a pretraining checkpoint, from timm / torchvision weights, or random (neither given).

    checkpoint: path or dict written by the pretraining engine ({'model': CGNSModel state dict, 'config': {...}});
    its `image_encoder.*` entries are loaded strictly, and a checkpoint of another encoder is refused naming both.
    image_weights: path of a timm ViT / torchvision ResNet-50 state dict (.pth / .pt, or .safetensors), loaded strictly
    (see load_backbone_weights).
    """
    if checkpoint is not None and image_weights is not None:
        raise ValueError("give either a pretraining checkpoint or image weights, not both")
    encoder = build_image_encoder(name, image_size)
    if image_weights is not None:
        loaded = read_weights(image_weights)
        load_backbone_weights(encoder, unwrap_state_dict(loaded, str(image_weights)), str(image_weights))
    if checkpoint is not None:
        source = "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
        if not isinstance(checkpoint, dict):
            checkpoint = load_checkpoint(checkpoint)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
            raise ValueError(f"{source}: not a pretraining checkpoint (needs 'model' and 'config' entries)")
        trained_name = checkpoint["config"].get("image_encoder")
        if trained_name != name:
            raise ValueError(f"{source}: holds a {trained_name!r} image encoder but {name!r} was requested")
        prefix = "image_encoder."
        state = {k[len(prefix):]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{source}: has no '{prefix}*' parameters")
        _resample_positions(state, encoder)
        try:
            encoder.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{source}: image encoder does not match {name} at {image_size} px: {err}") from None
    return encoder
