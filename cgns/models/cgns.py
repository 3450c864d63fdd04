"""The CM-CGNS pretraining model: encoders, projections, sentence pooling, sigmoid cross-attention, and the wiring of
the four losses (global InfoNCE, local SimSiam, local text with CGNS, CM-MIR reconstruction in stage 2).

Everything between the encoders and the losses is vectorised over the batch: sentences are segment means computed
with a one-hot matrix product, padded to the longest report and carried with a mask.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgns.config import from_dict, option
from cgns.data.words import no_sentence_error
from cgns.engine.methods import METHODS
from cgns.losses.clustering import ClusterNegativeSampler
from cgns.losses.global_contrastive import global_contrastive_loss, initial_log_logit_scale
from cgns.losses.grounding import grounding_attention, grounding_loss, real_rows
from cgns.losses.local_alignment import Predictor, sentence_contrastive_loss, simsiam_loss
from cgns.losses.reconstruction import masked_patch_loss, reconstruction_loss
from cgns.models.decoders import MaskedPatchDecoder, build_decoder, place_on_grid
from cgns.models.encoder_pair import EncoderPair
from cgns.models.encoders import ENCODER_NAMES, AttentionPool
from cgns.models.text import sentence_attention_mask
from cgns.models.vit import kept_patch_count, random_patch_split


ATTENTION_KINDS = ("cross", "grounding")     # which attention the visual report maps (CGNSModel.local_attention)
MIR_MASKINGS = ("features", "input")         # what CM-MIR masks: encoded tokens (METHOD.md) or input patches (MAE)


@dataclass
class CGNSConfig:
    """The model's settings. Defaults are METHOD.md's (the `paper` preset); the `demo` preset is another instance
    (cgns/engine/pretrain_config.py). Fields made with option(...) are flags of train_pretrain.py of the same name;
    the others are filled in by the code (vocabulary, padding id, tokenizer folder, k-means seed).

    `method` picks the objective: 'cgns' (this model) or a peer's (cgns.models.peer.PeerModel: the same encoders,
    the peer's heads and loss). A peer's settings are `objective` (its preset's, cgns.engine.methods.PRESETS, with
    embed_dim the one below); the CM-CGNS fields after the encoder settings are then unused."""
    method: str = option("cgns", "pretraining objective: CM-CGNS or a peer's on the same encoders, data and loop "
                                 "(docs/METHODS.md); a peer takes its preset's objective and loop settings",
                         choices=METHODS)
    objective: dict = dataclasses.field(default_factory=dict)   # a peer's objective settings ({} for cgns)
    # image side
    image_encoder: str = option("vit_base", "image encoder (patch 16 ViTs or ResNet-50)", choices=ENCODER_NAMES)
    image_size: int = option(224, "crop fed to the image encoder (px)")
    image_weights: str | None = option(None, "timm ViT / DeiT / torchvision ResNet-50 state dict, loaded strictly")
    # text side: a local BERT folder, or a random BERT of the sizes below
    text_encoder: str | None = option(None, "local BERT folder (e.g. Bio_ClinicalBERT); none: a random BERT")
    text_hidden_size: int = option(768, "random BERT width (ignored with --text-encoder)")
    text_layers: int = option(12, "random BERT depth (ignored with --text-encoder)")
    text_heads: int = option(12, "random BERT attention heads (ignored with --text-encoder)")
    max_length: int = option(256, "tokens per report")
    text_vocab_size: int = 30522
    text_max_positions: int = 512
    pad_token_id: int = 0
    tokenizer_dir: str | None = None
    # shared space and heads
    embed_dim: int = option(768, "shared projection width")
    pool_heads: int = 8
    temperature: float = 0.1                 # global InfoNCE, learnable (logit scale initialised at 1/temperature)
    local_temperature: float = 1.0
    # CGNS
    num_clusters: int = option(128, "k-means centroids (k)")
    kmeans_lr: float = 1e-3
    kmeans_start_cosine: float = 0.4
    kmeans_reseed_share: float = option(0.0, "re-initialise the centroids when one holds more than this share of "
                                             "a step's sentences (0: never, the original)")
    hard_negative_weight: float = 3.0
    false_negative_alpha: float = 0.2
    false_negative_beta: float = 0.5
    false_negative_weight: float = 1e-4
    kmeans_seed: int = 0                     # set to the run's seed
    # CM-MIR
    mir_drop: float = 0.5
    mir_weight: float = 10.0
    decoder_layers: int = option(6, "CM-MIR decoder layers (independent, batch-first)")
    decoder_heads: int = option(8, "CM-MIR decoder attention heads")
    decoder_feedforward: int = option(2048, "CM-MIR decoder feed-forward width")
    # input masking (FLIP / MAE / MRM; not in METHOD.md, 0 is the method): in training each image keeps a random
    # share 1-R of its patch tokens after the patch + position embedding, and only those enter the ViT blocks.
    mask_ratio: float = option(0.0, "share of each image's patches dropped before the ViT blocks in training "
                                    "(0: off, the method); losses 1-3 use the kept ones, evaluation whole images")
    mir_masking: str = option("features", "CM-MIR on dropped encoded tokens (features, METHOD.md) or MAE-style "
                                          "reconstruction of the input-masked patches (input; needs --mask-ratio "
                                          "> 0)", choices=MIR_MASKINGS)
    mir_target_norm: bool = option(False, "--mir-masking input: normalise each target patch to mean 0, variance "
                                          "1 (MAE's norm_pix_loss)")
    # weights on the local terms: loss 2 (local_image, SimSiam) and loss 3 (local_text + false_negative).
    # METHOD.md's 1.0 assumes pretrained encoders. From random init the SimSiam term collapses the patch tokens
    # within ~100 steps at weight 1 and drags the global alignment down with it; the CPU demo lowers it.
    local_image_weight: float = option(1.0, "weight of loss 2, local image SimSiam (METHOD.md: 1)")
    local_text_weight: float = option(1.0, "weight of loss 3, local text with CGNS + false negatives (METHOD.md: 1)")
    # an added term, not in METHOD.md (0: off, the method): GLoRIA's local loss with sentences for words, see
    # cgns/losses/grounding.py. Each sentence is encoded on its own (its tokens attend only within it; one more
    # text-encoder pass), so it can only be matched to the region of its own finding. t1 (grounding_temperature)
    # sharpens each sentence's softmax over the patches, t2 aggregates a report's sentences, t3 scales the
    # report-image logits (GLoRIA's 4 / 5 / 10).
    grounding_weight: float = option(0.0, "weight of the added sentence-region grounding term (not in METHOD.md; "
                                          "0: off, the method)")
    grounding_temperature: float = option(4.0, "t1 of the grounding term: sharpness of each sentence's softmax "
                                               "over the patches (GLoRIA's 4)")
    grounding_sentence_temperature: float = 5.0
    grounding_logit_scale: float = 10.0
    # ablations
    cgns: bool = option(True, "clustering-guided negative sampling in loss 3 (--no-cgns: plain sentence InfoNCE)")
    mir: bool = option(True, "CM-MIR reconstruction in stage 2 (--no-mir: none)")
    local: bool = option(True, "local losses 2-3 (--no-local: global loss only, a ConVIRT-style baseline; "
                               "implies --no-cgns)")

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.image_encoder not in ENCODER_NAMES:
            raise ValueError(f"image_encoder must be one of {ENCODER_NAMES}, got {self.image_encoder!r}")
        if not self.local:
            self.cgns = False                # CGNS acts on the local text loss
        if self.local_image_weight < 0 or self.local_text_weight < 0:
            raise ValueError(f"local_image_weight / local_text_weight must be >= 0, got {self.local_image_weight} / "
                             f"{self.local_text_weight}")
        if self.grounding_weight < 0:
            raise ValueError(f"grounding_weight must be >= 0, got {self.grounding_weight}")
        for name in ("grounding_temperature", "grounding_sentence_temperature", "grounding_logit_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.mir_drop < 1:
            raise ValueError(f"mir_drop must be in [0, 1), got {self.mir_drop}")
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(f"--mask-ratio must be in [0, 1), got {self.mask_ratio}")
        if self.mask_ratio > 0 and not self.image_encoder.startswith("vit"):
            raise ValueError(f"--mask-ratio {self.mask_ratio}: input masking drops ViT patch tokens, and "
                             f"{self.image_encoder} has none; use --mask-ratio 0 or a ViT image encoder")
        if self.mir_masking not in MIR_MASKINGS:
            raise ValueError(f"--mir-masking must be one of {MIR_MASKINGS}, got {self.mir_masking!r}")
        if self.mir_masking == "input" and self.mask_ratio == 0:
            raise ValueError("--mir-masking input reconstructs the patches that input masking removed: it needs "
                             "--mask-ratio > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CGNSConfig":
        return from_dict(cls, values, where="model configuration")


def sentence_features(tokens: torch.Tensor, sentence_index: torch.Tensor, num_sentences: int | None = None):
    """Per-sentence means of token features, for the whole batch at once.

    tokens [B,T,D], sentence_index long[B,T] (0 = not in a sentence, i+1 = sentence i) ->
    (sentences [B,S,D] with S the largest sentence number, mask bool[B,S] True where the sentence has tokens).
    num_sentences: S when the caller knows it (the pretraining collate computes it on the CPU); None reads it from
    sentence_index (a shape, so a host synchronisation on a GPU).
    """
    if num_sentences is None:
        num_sentences = int(sentence_index.max())
    membership = F.one_hot(sentence_index, num_sentences + 1)[..., 1:].to(tokens.dtype)   # [B,T,S]
    sums = membership.transpose(1, 2) @ tokens                      # [B,S,D]
    counts = membership.sum(dim=1)                                  # [B,S]
    return sums / counts.clamp(min=1.0)[..., None], counts > 0


def _extended(linear: nn.Linear) -> torch.Tensor:
    """A Linear's weight with its bias appended as a last column: [D_out, D_in+1], so that linear(x) = A [x, 1]."""
    return torch.cat([linear.weight, linear.bias[:, None]], dim=1)


class SigmoidCrossAttention(nn.Module):
    """Single-head cross-attention between a sample's patches and its sentences, sigmoid instead of softmax.

    Separate query/key/value projections per modality, scores scaled by sqrt(D), padding sentences masked out.
    forward(patches [B,L,D], sentences [B,S,D], sentence_mask bool[B,S]) -> dict(
        text_to_patch [B,L,D] (one text-to-image vector per patch),
        image_to_sentence [B,S,D] (one image-to-text vector per sentence; padding rows are meaningless),
        patch_attention [B,L,S], sentence_attention [B,S,L],
        text_to_patch_factors = (patch_attention, text values [B,S,D]), whose product is text_to_patch).

    The image projections are never applied to the patches: every use of them is reassociated onto the sentence
    side (S ~ 10 rows per sample instead of L = 196), the same function with far fewer flops. With [x, 1] the
    affine extension of x and A = [W | b] a Linear's extended weight [D, D+1], each score is a bilinear form
        image_query(p) . text_key(s)  = [p,1] G_patch [s,1]^T,      G_patch = A_image_query^T A_text_key
        text_query(s) . image_key(p)  = [p,1] G_sentence [s,1]^T,   G_sentence = A_image_key^T A_text_query
    so the (D+1)^2 forms are folded onto the sentences and meet the patches in one batched product; and
        attention @ image_value(patches) = (attention @ patches) @ Wv^T + attention.sum(-1) * bv.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.scale = 1.0 / math.sqrt(dim)
        self.image_query, self.image_key, self.image_value = (nn.Linear(dim, dim) for _ in range(3))
        self.text_query, self.text_key, self.text_value = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, patches, sentences, sentence_mask):
        batch, num_sentences, dim = sentences.shape
        # The 1/sqrt(D) scale goes into the small forms, not onto the [B,L,2S] scores (nor their gradient).
        forms = torch.cat([_extended(self.image_query).T @ _extended(self.text_key),
                           _extended(self.image_key).T @ _extended(self.text_query)]) * self.scale  # [2(D+1),D+1]
        folded = F.linear(sentences, forms[:, :dim], forms[:, dim])                                     # [B,S,2(D+1)]
        folded = folded.view(batch, num_sentences, 2, dim + 1).transpose(1, 2).reshape(batch, -1, dim + 1)
        # Patch-side coordinate D multiplies the constant 1: a per-sentence bias. Columns: S patch-query scores,
        # then S sentence-query scores.
        scores = torch.baddbmm(folded[..., dim][:, None, :], patches, folded[..., :dim].transpose(1, 2))  # [B,L,2S]
        keep = sentence_mask.to(scores.dtype)[:, None, :]                                                 # [B,1,S]
        weights = torch.sigmoid(scores)
        # A sigmoid weight is independent per sentence, so a padding sentence is removed by zeroing its weight.
        patch_attention = weights[..., :num_sentences] * keep                                           # [B,L,S]
        sentence_attention = weights[..., num_sentences:].transpose(1, 2)                               # [B,S,L]
        image_to_sentence = (F.linear(sentence_attention @ patches, self.image_value.weight)
                             + sentence_attention.sum(dim=-1, keepdim=True) * self.image_value.bias)    # [B,S,D]
        value = self.text_value(sentences)                                                              # [B,S,D]
        return {"text_to_patch": patch_attention @ value,                                               # [B,L,D]
                "image_to_sentence": image_to_sentence,
                "patch_attention": patch_attention, "sentence_attention": sentence_attention,
                "text_to_patch_factors": (patch_attention, value)}                          # for simsiam_loss


class CGNSModel(EncoderPair):
    """forward(batch, stage) -> (losses: name -> scalar, stats: name -> detached tensor).

    batch: image [B,3,S,S] in [-1,1], input_ids / attention_mask / sentence_index long[B,T] (optional 'index').
    Loss names: global, local_image, local_text, false_negative (CGNS), reconstruction (stage 2), grounding (when
    its weight is > 0); the engine sums them. Every sample must have at least one sentence (a ValueError names the
    offending samples otherwise).
    """

    def __init__(self, config: CGNSConfig):
        super().__init__(config)                  # image_encoder, then text_encoder (cgns.models.encoder_pair)
        dim = config.embed_dim
        self.global_image_projection = nn.Linear(self.image_encoder.global_dim, dim)
        self.local_image_projection = nn.Linear(self.image_encoder.local_dim, dim)
        self.local_text_projection = nn.Linear(self.text_encoder.hidden_size, dim)
        for projection in (self.global_image_projection, self.local_image_projection, self.local_text_projection):
            nn.init.normal_(projection.weight, std=projection.in_features ** -0.5)
        self.report_pool = AttentionPool(dim, config.pool_heads)
        self.log_logit_scale = nn.Parameter(torch.tensor(initial_log_logit_scale(config.temperature)))
        if config.local or config.mir:
            self.cross_attention = SigmoidCrossAttention(dim)
        if config.local:
            self.predictor = Predictor(dim)
        if config.cgns:
            self.clustering = ClusterNegativeSampler(
                dim, num_clusters=config.num_clusters, lr=config.kmeans_lr, start_cosine=config.kmeans_start_cosine,
                hard_negative_weight=config.hard_negative_weight, alpha=config.false_negative_alpha,
                beta=config.false_negative_beta, false_negative_weight=config.false_negative_weight,
                temperature=config.local_temperature, seed=config.kmeans_seed,
                reseed_share=config.kmeans_reseed_share)
        if config.mir and config.mir_masking == "input":
            self.decoder = MaskedPatchDecoder(dim, self.image_encoder.grid, self.image_encoder.patch_stride,
                                              num_layers=config.decoder_layers, num_heads=config.decoder_heads,
                                              feedforward=config.decoder_feedforward)
        elif config.mir:
            self.decoder = build_decoder(config.image_encoder, dim, self.image_encoder.grid,
                                         self.image_encoder.patch_stride, num_layers=config.decoder_layers,
                                         num_heads=config.decoder_heads, feedforward=config.decoder_feedforward,
                                         drop=config.mir_drop)

    # ---- encoders -----------------------------------------------------------------------------------------
    def image_features(self, images, keep_index=None):
        """images [B,3,S,S] -> (global [B,D], patches [B,L,D]), both L2-normalised; with keep_index long[B,M]
        (input masking, ViT) only those patches are encoded: patches [B,M,D]."""
        features = self.image_encoder(images) if keep_index is None else self.image_encoder(images, keep_index)
        image_global = F.normalize(self.global_image_projection(features["global"]), dim=-1)
        patches = F.normalize(self.local_image_projection(features["local"]), dim=-1)
        return image_global, patches

    def text_features(self, input_ids, attention_mask, sentence_index, sample_ids=None, layout=None):
        """-> (report [B,D] L2-normalised, sentences [B,S,D], sentence_mask bool[B,S]).

        layout: the host-side facts of the batch that the pretraining collate computed on the CPU (num_sentences,
        max_token_id; it also refused reports without a sentence), so that nothing here reads the device.
        """
        if sentence_index.shape != input_ids.shape:
            raise ValueError(f"sentence_index {tuple(sentence_index.shape)} must match input_ids "
                             f"{tuple(input_ids.shape)}")
        layout = layout or {}
        hidden = self.text_encoder(input_ids, attention_mask, layout.get("max_token_id"))
        tokens = F.normalize(self.local_text_projection(hidden), dim=-1)
        sentences, sentence_mask = sentence_features(tokens, sentence_index, layout.get("num_sentences"))
        if "num_sentences" in layout:  # checked by the collate function
            report = F.normalize(self.report_pool(sentences, sentence_mask), dim=-1)
            return report, sentences, sentence_mask
        has_sentence = sentence_mask.any(dim=1) if sentence_mask.shape[1] else sentence_mask.new_zeros(len(tokens))
        if not bool(has_sentence.all()):
            raise no_sentence_error((~has_sentence).nonzero()[:, 0].tolist(), sample_ids)
        report = F.normalize(self.report_pool(sentences, sentence_mask), dim=-1)
        return report, sentences, sentence_mask

    def grounding_sentences(self, batch):
        """The sentence features the grounding term matches, [B,S,D] (the sentence mask is that of text_features):
        each sentence encoded on its own by one more text-encoder pass (its tokens attend only within it)."""
        mask = sentence_attention_mask(batch["attention_mask"], batch["sentence_index"])       # [B,1,T,T]
        hidden = self.text_encoder(batch["input_ids"], mask, batch.get("max_token_id"))
        tokens = F.normalize(self.local_text_projection(hidden), dim=-1)
        return sentence_features(tokens, batch["sentence_index"], batch.get("num_sentences"))[0]

    def encode_image(self, images):
        """images [B,3,S,S] -> global image vectors [B,D], L2-normalised."""
        return self.image_features(images)[0]

    def encode_text(self, input_ids, attention_mask, sentence_index):
        """token ids / mask / sentence index long[B,T] -> report vectors [B,D], L2-normalised."""
        return self.text_features(input_ids, attention_mask, sentence_index)[0]

    @torch.no_grad()
    def local_attention(self, batch, kind: str = "cross"):
        """Per-sentence attention over the patches of its own image, for the visual report.

        kind 'cross': the cross-attention of losses 2-4 (sentence queries patches; sigmoid weights in [0,1]);
        'grounding': the grounding term's softmax(t1 cos(sentence, patch)) (any model; what that term
        trains when grounding_weight > 0).
        -> dict(maps [B,S,h,w], sentence_mask bool[B,S]).
        """
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention kind must be one of {ATTENTION_KINDS}, got {kind!r}")
        if kind == "cross" and not hasattr(self, "cross_attention"):
            raise RuntimeError("this model was built without local alignment or CM-MIR (no cross-attention)")
        _, patches = self.image_features(batch["image"])
        _, sentences, sentence_mask = self.text_features(batch["input_ids"], batch["attention_mask"],
                                                         batch["sentence_index"], batch.get("index"))
        if kind == "cross":
            attention = self.cross_attention(patches, sentences, sentence_mask)["sentence_attention"]  # [B,S,L]
        else:
            attention = grounding_attention(F.normalize(self.grounding_sentences(batch), dim=-1), patches,
                                            self.config.grounding_temperature)                           # [B,S,L]
        return {"maps": attention.reshape(*attention.shape[:2], *self.image_encoder.grid),
                "sentence_mask": sentence_mask}

    @torch.no_grad()
    def masked_reconstruction(self, batch, seed: int = 0) -> dict:
        """--mir-masking input, for the visual report: a seeded split at the run's mask ratio, the decoder's
        prediction -> {"reconstruction": [B,3,S,S] (predicted pixels on the masked patches, the input on the kept
        ones; with --mir-target-norm each predicted patch is put back at its true mean and variance, as MAE shows
        it), "kept": bool[B,h,w]}."""
        images, (height, width) = batch["image"], self.image_encoder.grid
        batch_size, num_patches, patch = images.shape[0], height * width, self.image_encoder.patch_stride
        noise = torch.rand(batch_size, num_patches, generator=torch.Generator().manual_seed(seed))
        keep_index, _ = random_patch_split(batch_size, num_patches, kept_patch_count(num_patches,
                                                                                     self.config.mask_ratio),
                                           noise=noise.to(images.device))
        _, patches = self.image_features(images, keep_index)
        _, sentences, sentence_mask = self.text_features(batch["input_ids"], batch["attention_mask"],
                                                         batch["sentence_index"], batch.get("index"))
        predicted = F.unfold(self.decoder(patches, keep_index, sentences, sentence_mask), patch, stride=patch)
        truth = F.unfold(images, patch, stride=patch)                                   # [B,3p^2,L]
        if self.config.mir_target_norm:
            predicted = predicted * (truth.var(dim=1, keepdim=True) + 1e-6).sqrt() + truth.mean(dim=1, keepdim=True)
        kept = torch.zeros(batch_size, num_patches, dtype=torch.bool, device=images.device)
        kept.scatter_(1, keep_index, True)                                              # [B,L]
        shown = torch.where(kept[:, None, :], truth, predicted)
        return {"reconstruction": F.fold(shown, images.shape[-2:], patch, stride=patch),
                "kept": kept.view(batch_size, height, width)}

    # ---- training objective ---------------------------------------------------------------------------------
    def forward(self, batch, stage: int = 1, epoch: int = 0):
        """epoch: the loop passes it (a peer objective may depend on it); CM-CGNS does not."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        config = self.config
        images = batch["image"]
        split = self.patch_split(batch)
        image_global, patches = self.image_features(images, None if split is None else split[0])
        report, sentences, sentence_mask = self.text_features(batch["input_ids"], batch["attention_mask"],
                                                              batch["sentence_index"], batch.get("index"), batch)
        losses = global_contrastive_loss(image_global, report, self.log_logit_scale)
        stats = {"logit_scale": self.log_logit_scale.detach().exp(),
                 "sentences_per_report": sentence_mask.sum(dim=1).float().mean()}
        reconstruct = stage == 2 and config.mir and (config.mir_masking == "features" or split is not None)
        if config.local or reconstruct:
            attention = self.cross_attention(patches, sentences, sentence_mask)
        if config.local:
            losses.update(self.local_losses(patches, sentences, sentence_mask, attention, batch, stats))
        if config.grounding_weight > 0:
            grounding = grounding_loss(self.grounding_sentences(batch), sentence_mask, patches,
                                       config.grounding_temperature, config.grounding_sentence_temperature,
                                       config.grounding_logit_scale, batch.get("sentence_rows"))
            losses["grounding"] = config.grounding_weight * grounding["grounding"]
        if reconstruct:
            losses.update(self.reconstruction(images, patches, sentences, sentence_mask, attention, split))
        return losses, stats

    def local_losses(self, patches, sentences, sentence_mask, attention, batch, stats) -> dict:
        """Losses 2 (local_image) and 3 (local_text, false_negative), weighted; CGNS statistics go into stats."""
        config = self.config
        losses = simsiam_loss(patches, attention["text_to_patch"], self.predictor, attention["text_to_patch_factors"])
        # Flatten the real sentences of the batch: z1 (sentence features) and z2 (image-to-text), [N,D].
        z1, z2 = (real_rows(x, sentence_mask, batch.get("sentence_rows"))[0]
                  for x in (sentences, attention["image_to_sentence"]))
        if config.cgns:
            text_losses, cgns_stats = self.clustering(z1, z2)
            stats.update(cgns_stats)
        else:
            text_losses = sentence_contrastive_loss(z1, z2, config.local_temperature)
        losses.update(text_losses)
        weights = {"local_image": config.local_image_weight, "local_text": config.local_text_weight,
                   "false_negative": config.local_text_weight}
        for name, weight in weights.items():
            if name in losses and weight != 1.0:
                losses[name] = weight * losses[name]
        return losses

    def reconstruction(self, images, patches, sentences, sentence_mask, attention, split) -> dict:
        """Loss 4, CM-MIR. features: the decoder sees the encoded patches (input-masked ones as zeros) with some
        dropped, and rebuilds the whole image. input: the decoder fills the input-masked patches from the kept ones
        and the sentences; the loss is on the masked patches only."""
        config = self.config
        if config.mir_masking == "input":
            keep_index, masked_index = split
            prediction = self.decoder(patches, keep_index, sentences, sentence_mask)
            return masked_patch_loss(prediction, images, self.image_encoder.patch_stride, masked_index,
                                     config.mir_weight, config.mir_target_norm)
        text_to_patch = attention["text_to_patch"]
        if split is not None:
            num_patches = self.image_encoder.grid[0] * self.image_encoder.grid[1]
            patches, text_to_patch = (place_on_grid(x, split[0], num_patches) for x in (patches, text_to_patch))
        return reconstruction_loss(self.decoder(patches, text_to_patch), images, config.mir_weight)
