"""A peer objective (ConVIRT, GLoRIA, MGCA: cgns.engine.methods) on CM-CGNS's encoders, data and loop.

PeerModel has the interface of CGNSModel that the pretraining loop, checkpoints, load_model, export and the probes
use: `image_encoder` / `text_encoder` built by the same code (cgns.models.encoder_pair), forward(batch, stage,
epoch) -> (losses, stats), encode_image / encode_text -> the objective's unit embeddings, and local_attention for
the objectives with local features (GLoRIA, MGCA). Input masking (--mask-ratio, ViT) works as for CM-CGNS: in
training only the kept patches are encoded, and the objective sees them as the image's patches.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from cgns.engine.methods import build_objective
from cgns.losses.convirt import sample_sentence
from cgns.data.words import word_index, word_piece_table
from cgns.losses.gloria import word_features
from cgns.models.class_attention import LayerInput, bert_class_attention, vit_class_attention
from cgns.models.encoder_pair import EncoderPair

LOCAL_KIND = "words"      # the only local map a peer has: each word's attention over its image's patches

# The CGNSConfig fields a peer reads (its encoders, tokenizer, embedding width, input masking); every other field
# is CM-CGNS's objective (k-means, CGNS, CM-MIR, the local and grounding terms) and means nothing to a peer.
PEER_FIELDS = frozenset({
    "method", "objective", "image_encoder", "image_size", "image_weights", "text_encoder", "text_hidden_size",
    "text_layers", "text_heads", "max_length", "text_vocab_size", "text_max_positions", "pad_token_id",
    "tokenizer_dir", "embed_dim", "mask_ratio"})


def build_model(config, tokenizer=None):
    """The pretraining model of config.method: CGNSModel, or PeerModel (tokenizer: see PeerModel)."""
    if config.method == "cgns":
        from cgns.models.cgns import CGNSModel
        return CGNSModel(config)
    return PeerModel(config, tokenizer)


class PeerModel(EncoderPair):
    """forward(batch, stage=1, epoch=0) -> (losses: name -> weighted scalar, stats: {}).

    batch: image [B,3,S,S], input_ids / attention_mask long[B,T] (the pretraining collate's); sentence_index
    long[B,T] and num_sentences for ConVIRT, whose text view is one drawn sentence per report (its training draws
    from the global generator; in eval mode from a generator seeded 0, so a validation loss is comparable from
    epoch to epoch). Only what the objective's `requires` names is computed: the image's global feature and
    patch tokens, the text's token states, word_index (word pieces grouped into words, from the tokenizer's
    word-piece table), the class tokens' last-layer attention (MGCA's token importance; a ResNet has none:
    uniform).

    tokenizer: the run's tokenizer object or folder, for the word-piece table of GLoRIA / MGCA (None: the folder
    config.tokenizer_dir). The table is a non-persistent buffer: checkpoints hold the weights only.
    """

    def __init__(self, config, tokenizer=None):
        super().__init__(config)
        if config.method not in ("convirt", "gloria", "mgca"):
            raise ValueError(f"PeerModel builds a peer objective (convirt, gloria, mgca), got {config.method!r}")
        self.method = config.method
        self.has_local_features = config.method != "convirt"        # similarity maps (evaluate grounding)
        settings = {**config.objective, "embed_dim": config.embed_dim}
        self.objective = build_objective(config.method, config.image_encoder, self.image_encoder.global_dim,
                                         self.text_encoder.hidden_size, **settings)
        self.needs = set(self.objective.requires)
        if "word_index" in self.needs:
            continues, special = word_piece_table(_tokenizer(tokenizer, config))
            self.register_buffer("continues_word", continues, persistent=False)
            self.register_buffer("special_token", special, persistent=False)

    # ---- inputs ---------------------------------------------------------------------------------------------
    def image_inputs(self, images, keep_index=None) -> dict:
        """images [B,3,S,S] -> image_global [B,Di], patches [B,L,Di] (or [B,M,Di] with keep_index long[B,M]) and,
        when the objective needs it and the encoder is a ViT, image_class_attention [B,L] (or [B,M])."""
        blocks = getattr(self.image_encoder.backbone, "blocks", None)
        watch = "image_class_attention" in self.needs and blocks is not None
        with LayerInput(blocks[-1]) if watch else contextlib.nullcontext() as last:
            features = self.image_encoder(images) if keep_index is None else self.image_encoder(images, keep_index)
        inputs = {"image_global": features["global"], "patches": features["local"]}
        if watch:
            inputs["image_class_attention"] = vit_class_attention(blocks[-1], last.hidden)
        return inputs

    def word_table(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The word-piece table on the CPU (continues_word, special bool[V]) for the pretraining collate's word
        layout (cgns.data.words.word_layout), or None when the objective groups no words (ConVIRT)."""
        if "word_index" not in self.needs:
            return None
        return self.continues_word.cpu(), self.special_token.cpu()

    def text_inputs(self, input_ids, attention_mask, max_token_id=None, layout: dict | None = None) -> dict:
        """token ids / mask long[B,T] -> tokens [B,T,Dt], attention_mask, and what the objective needs of
        word_index long[B,T] and text_class_attention [B,T]. layout: the batch's word layout from the collate
        (word_index, num_words, word_rows: cgns.data.words.word_layout), used as it is; without it word_index is
        computed here and the losses read the word count back from the device."""
        inputs = {"attention_mask": attention_mask}
        last_layer = self.text_encoder.bert.encoder.layer[-1]
        watch = "text_class_attention" in self.needs
        with LayerInput(last_layer) if watch else contextlib.nullcontext() as last:
            inputs["tokens"] = self.text_encoder(input_ids, attention_mask, max_token_id)
        if watch:
            inputs["text_class_attention"] = bert_class_attention(last_layer, last.hidden, attention_mask)
        if "word_index" in self.needs:
            if layout and "word_index" in layout:
                inputs.update({key: layout[key] for key in ("word_index", "num_words", "word_rows")})
            else:
                inputs["word_index"] = word_index(input_ids, self.continues_word, self.special_token)
        return inputs

    # ---- the loop's interface ---------------------------------------------------------------------------------
    def forward(self, batch, stage: int = 1, epoch: int = 0):
        """stage: a peer has one (the loop's stage 1; its presets set no stage 2); epoch: 0-based, MGCA freezes its
        prototypes while epoch < freeze_prototype_epochs."""
        split = self.patch_split(batch)
        inputs = self.image_inputs(batch["image"], None if split is None else split[0])
        inputs.update(self.text_inputs(*self.text_view(batch), batch.get("max_token_id"), batch))
        return self.objective(inputs, epoch=epoch), {}

    def text_view(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The token ids and mask long[B,T] the objective trains on: the report, or (ConVIRT) one drawn sentence."""
        if not getattr(self.objective, "samples_sentence", False):
            return batch["input_ids"], batch["attention_mask"]
        generator = None
        if not self.training:
            generator = torch.Generator(device=batch["input_ids"].device).manual_seed(0)
        return sample_sentence(batch["input_ids"], batch["attention_mask"], batch["sentence_index"],
                               batch.get("num_sentences"), self.config.pad_token_id, generator)

    def encode_image(self, images):
        """images [B,3,S,S] -> the objective's image embedding [B,D], unit norm."""
        return self.objective.image_embedding(self.image_inputs(images))

    def encode_text(self, input_ids, attention_mask, sentence_index=None):
        """token ids / mask long[B,T] -> the objective's report embedding [B,D], unit norm (sentence_index, which
        CGNSModel takes, is not used)."""
        return self.objective.report_embedding(self.text_inputs(input_ids, attention_mask))

    @torch.no_grad()
    def local_attention(self, batch, kind: str = LOCAL_KIND):
        """Each word's attention over its own image's patches, as the objective's local loss weighs them ->
        dict(maps [B,W,h,w], sentence_mask bool[B,W] (True on real words); the interface of
        CGNSModel.local_attention, words for sentences).

        GLoRIA: softmax over the patches of t1 x (softmax over the report's words of word . patch) on its local
        projections; MGCA: softmax over the patches of cos(word, patch) / t on its local heads. ConVIRT has no
        local features: a ValueError says so.
        """
        if kind != LOCAL_KIND:
            raise ValueError(f"a {self.method} model has one kind of local map, {LOCAL_KIND!r}; got {kind!r}")
        if not self.has_local_features:
            raise ValueError("ConVIRT learns global embeddings only: it has no local features for similarity maps "
                             "(use a gloria, mgca or cgns model)")
        image = self.image_inputs(batch["image"])
        text = self.text_inputs(batch["input_ids"], batch["attention_mask"])
        objective = self.objective
        if self.method == "gloria":
            words, mask, _ = objective.words(text)                                          # [B,W,D], [B,W]
            dots = words @ objective.local_image(image["patches"]).transpose(1, 2)          # [B,W,L]
            over_words = torch.softmax(dots.masked_fill(~mask[..., None], float("-inf")), dim=1)
            attention = torch.softmax(objective.temperatures[0] * over_words.nan_to_num(0.0), dim=-1)
        else:
            summed, mask = word_features(text["tokens"], text["word_index"])
            words = F.normalize(objective.local_text(summed, mask), dim=-1)                  # [B,W,D]
            patches = F.normalize(objective.local_image(image["patches"]), dim=-1)          # [B,L,D]
            attention = torch.softmax(words @ patches.transpose(1, 2) / objective.local_temperature, dim=-1)
        return {"maps": attention.reshape(*attention.shape[:2], *self.image_encoder.grid), "sentence_mask": mask}


def _tokenizer(tokenizer, config):
    """A tokenizer object from the object or folder given, else from config.tokenizer_dir."""
    from pathlib import Path

    from cgns.data.tokenizer import load_tokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    folder = tokenizer or config.tokenizer_dir
    if not folder or not Path(folder).is_dir():
        raise FileNotFoundError(f"--method {config.method} groups word pieces into words with the tokenizer's "
                                f"vocabulary: its folder {folder!r} does not exist (pass the tokenizer or its folder)")
    return load_tokenizer(folder)
