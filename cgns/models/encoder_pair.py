"""The image and text encoders every pretraining objective shares (CM-CGNS's CGNSModel and the peers' PeerModel),
built from the model configuration under the attribute names `image_encoder` / `text_encoder` that checkpoints,
load_image_encoder, export and the probes read; and the input-masking split of a training batch.
"""
from __future__ import annotations

import torch.nn as nn

from cgns.engine.checkpoint import load_plain
from cgns.models.encoders import build_image_encoder, load_backbone_weights, unwrap_state_dict
from cgns.models.text import TextEncoder
from cgns.models.vit import kept_patch_count, random_patch_split


class EncoderPair(nn.Module):
    """self.image_encoder (cgns.models.encoders: images [B,3,S,S] -> dict(global [B,Dg], local [B,L,Dl])) and
    self.text_encoder (cgns.models.text.TextEncoder: tokens [B,T] -> hidden states [B,T,Dt]) from a CGNSConfig
    (its image_encoder, image_size, image_weights and text_* fields), built in that order (initial weights drawn
    from the global RNG in that order)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.image_encoder = build_image_encoder(config.image_encoder, config.image_size)
        if config.image_weights:
            loaded = load_plain(config.image_weights, "image weights")   # weights_only=True, refusals name the file
            load_backbone_weights(self.image_encoder, unwrap_state_dict(loaded, config.image_weights),
                                  config.image_weights)
        self.text_encoder = TextEncoder(config.text_encoder, config.text_vocab_size, config.text_hidden_size,
                                        config.text_layers, config.text_heads, config.text_max_positions,
                                        config.pad_token_id)

    def patch_split(self, batch):
        """In training with --mask-ratio R > 0: (keep_index long[B,M], masked_index long[B,L-M]) of a random split
        per image, from the global RNG (seeded per rank and checkpointed, so resume is exact) or from
        batch['patch_noise'] float[B,L] when given (tests feed the same noise to differently sharded runs).
        Otherwise None: whole images."""
        if not (self.training and self.config.mask_ratio > 0):
            return None
        images = batch["image"]
        num_patches = self.image_encoder.grid[0] * self.image_encoder.grid[1]
        keep = kept_patch_count(num_patches, self.config.mask_ratio)
        return random_patch_split(images.shape[0], num_patches, keep, images.device, batch.get("patch_noise"))
