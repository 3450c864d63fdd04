"""The class token's attention in an encoder's last layer, recomputed from that layer's input: MGCA's token importance
weights (the ViT's last block for patches, BERT's last layer for words), without changing the encoders (our ViT runs
scaled_dot_product_attention, which returns no weights; BERT returns them only in its eager implementation).

Usage: with LayerInput(layer) as captured: run the encoder; then class_token_attention(captured.hidden, ...).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class LayerInput:
    """Context manager holding the hidden states a module receives (its first argument), [B,T,D], while active.
    Holds the last call's input; nothing is detached (the attention below is computed under no_grad)."""

    def __init__(self, module: nn.Module):
        self.module, self.hidden, self._handle = module, None, None

    def _capture(self, module, args, kwargs):
        self.hidden = args[0] if args else kwargs["hidden_states"]

    def __enter__(self):
        self._handle = self.module.register_forward_pre_hook(self._capture, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False


@torch.no_grad()
def class_token_attention(queries: torch.Tensor, keys: torch.Tensor, num_heads: int,
                          key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """queries [B,D] (the class token's projected query), keys [B,T,D] (every token's projected key) -> the softmax
    over the T tokens of q_h . k_h / sqrt(D/H), averaged over the H heads, [B,T]; key_mask bool[B,T] (True = real
    token) removes padding from the softmax. No gradient (MGCA takes it under no_grad)."""
    batch, length, dim = keys.shape
    head_dim = dim // num_heads
    scores = torch.einsum("bhd,bthd->bht", queries.view(batch, num_heads, head_dim),
                          keys.view(batch, length, num_heads, head_dim)) * head_dim ** -0.5    # [B,H,T]
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
    return torch.softmax(scores.float(), dim=-1).mean(dim=1).to(keys.dtype)


@torch.no_grad()
def vit_class_attention(block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A timm-layout ViT block (cgns.models.vit.Block: norm1, attn.qkv fused [3, heads, head_dim], attn.num_heads)
    and its input hidden [B,1+L,D] -> the class token's attention on the L patches, mean over heads, [B,L]."""
    qkv = block.attn.qkv(block.norm1(hidden))                                                 # [B,1+L,3D]
    query, key, _ = qkv.chunk(3, dim=-1)
    return class_token_attention(query[:, 0], key, block.attn.num_heads)[:, 1:]


@torch.no_grad()
def bert_class_attention(layer: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A transformers BertLayer and its input hidden [B,T,D], attention_mask [B,T] (1 = real token) -> the [CLS]
    token's attention on every token (itself at column 0), mean over heads, [B,T]."""
    attention = layer.attention.self
    return class_token_attention(attention.query(hidden[:, 0]), attention.key(hidden),
                                 attention.num_attention_heads, attention_mask.bool())
