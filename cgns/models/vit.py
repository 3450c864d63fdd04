"""Vision Transformer whose parameter names and shapes are timm's VisionTransformer (patch 16, class token).

A timm / DeiT ImageNet state dict (vit_{tiny,small,base}_patch16_224, deit_base_patch16_224) loads into it with
strict=True: cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}, norm, head. The computation follows timm's too (pre-norm blocks, LayerNorm eps 1e-6, exact GELU, the
q/k/v split of the fused qkv), so loaded weights give timm's features.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgns.ops import masked_patch_gather


class PatchEmbed(nn.Module):
    """images [B,3,S,S] -> patch tokens [B,(S/p)^2,D], row-major over the patch grid."""

    def __init__(self, image_size: int, patch_size: int, dim: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)   # [B,D,h,w] -> [B,h*w,D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        batch, length, dim = x.shape
        # timm's layout of the fused projection: [3, heads, head_dim] along the output features.
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                   # each [B,H,L,hd]
        out = F.scaled_dot_product_attention(q, k, v)          # [B,H,L,hd]
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def random_patch_split(batch: int, num_patches: int, keep: int, device=None, noise=None):
    """A random split of each image's patches into kept and masked ones (MAE's per-sample shuffle).

    noise float[B,L] (drawn from the global RNG when None, so it follows the rank's seeded, checkpointed state)
    -> (keep_index long[B,keep], masked_index long[B,L-keep]), each sorted ascending (row-major patch order).
    The `keep` patches of lowest noise are kept. No host synchronisation: the counts are Python ints.
    """
    if not 0 < keep <= num_patches:
        raise ValueError(f"cannot keep {keep} of {num_patches} patches")
    if noise is None:
        noise = torch.rand(batch, num_patches, device=device)
    elif tuple(noise.shape) != (batch, num_patches):
        raise ValueError(f"patch noise must be [{batch},{num_patches}], got {tuple(noise.shape)}")
    order = noise.argsort(dim=1)                                               # [B,L], lowest noise first
    return order[:, :keep].sort(dim=1).values, order[:, keep:].sort(dim=1).values


def kept_patch_count(num_patches: int, mask_ratio: float) -> int:
    """Patches each image keeps at mask ratio R: round((1-R) L), at least 1."""
    return max(1, min(num_patches, round(num_patches * (1.0 - mask_ratio))))


def keep_tokens(tokens: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor:
    """tokens [B,1+L,D] (class token first), keep_index long[B,M] of patch numbers in [0,L) -> [B,1+M,D]: the class
    token and the kept patch tokens, gathered by the fused masked_patch_gather (its backward scatter-adds)."""
    with_class = torch.cat([keep_index.new_zeros(keep_index.shape[0], 1), keep_index + 1], dim=1)   # [B,1+M]
    return masked_patch_gather(tokens, with_class)


class VisionTransformer(nn.Module):
    """ViT with a class token. forward(images [B,3,S,S], keep_index=None) -> tokens [B,1+L,D] after the final norm
    (L = (S/16)^2); with keep_index long[B,M] only the class token and those patches enter the blocks: [B,1+M,D].

    num_classes > 0 adds timm's `head` (a Linear on the class token, used by classify()); 0 leaves it out, which is
    how the encoders use it.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, num_classes: int = 0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.dim, self.depth, self.patch_size = dim, depth, patch_size
        self.patch_embed = PatchEmbed(image_size, patch_size, dim)
        self.grid = self.patch_embed.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else None
        self._init_weights()

    def _init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def embed(self, images):
        """images [B,3,S,S] -> [B,1+L,D]: class token + patch tokens + position embedding."""
        if images.shape[-1] != self.grid * self.patch_size or images.shape[-2] != self.grid * self.patch_size:
            raise ValueError(f"this ViT was built for {self.grid * self.patch_size} px images, got "
                             f"{tuple(images.shape[-2:])}")
        patches = self.patch_embed(images)                                     # [B,L,D]
        cls = self.cls_token.expand(patches.shape[0], -1, -1)                  # [B,1,D]
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def forward(self, images, keep_index=None):
        x = self.embed(images)                                                 # [B,1+L,D]
        if keep_index is not None:
            x = keep_tokens(x, keep_index)                                     # [B,1+M,D]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_blocks(self, images, block_indices):
        """Outputs of the listed blocks, each [B,1+L,D]; the last block's output gets the final norm."""
        x, wanted, outputs = self.embed(images), set(block_indices), []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in wanted:
                outputs.append(self.norm(x) if index == self.depth - 1 else x)
        return outputs

    def classify(self, images):
        if self.head is None:
            raise RuntimeError("this ViT was built with num_classes=0 (no head)")
        return self.head(self.forward(images)[:, 0])


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """[1,1+g*g,D] (class token first) -> [1,1+grid*grid,D], the patch part resized bicubically as a 2-D map."""
    old = pos_embed.shape[1] - 1
    old_grid = math.isqrt(old)
    if old_grid * old_grid != old:
        raise ValueError(f"pos_embed has {old} patch positions, not a square grid")
    if old_grid == grid:
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    dim = patches.shape[-1]
    patches = patches.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)   # [1,D,g,g]
    patches = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic", align_corners=False,
                            antialias=grid < old_grid)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)
    return torch.cat([cls, patches], dim=1)


VIT_SIZES = {  # name -> (width, depth, heads), timm's vit_{tiny,small,base}_patch16_224
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}


def vit_tiny(image_size: int = 224, num_classes: int = 0) -> VisionTransformer:
    return VisionTransformer(image_size, 16, *VIT_SIZES["vit_tiny"], num_classes=num_classes)


def vit_small(image_size: int = 224, num_classes: int = 0) -> VisionTransformer:
    return VisionTransformer(image_size, 16, *VIT_SIZES["vit_small"], num_classes=num_classes)


def vit_base(image_size: int = 224, num_classes: int = 0) -> VisionTransformer:
    return VisionTransformer(image_size, 16, *VIT_SIZES["vit_base"], num_classes=num_classes)
