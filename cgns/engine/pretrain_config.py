"""The run configuration of train_pretrain.py and its two presets, each an instance of it.

Sections: `model` (CGNSConfig), `loop` (LoopConfig), `data` and `run` below. Every option(...) field is a flag of
the same name (`--num-clusters` sets model.num_clusters). A run writes the resolved configuration to
<output-dir>/config.json; `--config <output-dir>/config.json` runs it again.

`--method` (model.method) picks the objective; with a preset, a peer's run starts from the preset with the peer's
objective settings and loop fields applied (with_method), and flags given explicitly still win.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cgns.config import option
from cgns.engine.methods import PRESETS as METHOD_PRESETS, loop_settings, objective_settings
from cgns.engine.pretrain import LoopConfig
from cgns.models.cgns import CGNSConfig


@dataclass
class DataConfig:
    data_root: str | None = option(None, "MIMIC-CXR folder in its official layout (files/, the three csv.gz, "
                                         "reports/); none: the generated demo copy under data/demo/")
    data_pct: float = option(1.0, "fraction of the TRAINING split (seeded subset; validation stays whole)")
    tokenizer: str | None = option(None, "tokenizer folder; none: the --text-encoder folder, else a WordPiece "
                                         "trained on the training reports (saved beside the data cache)")
    cache_size: int = option(256, "side of the preprocessed image cache (px)")

    def __post_init__(self):
        if not 0 < self.data_pct <= 1:
            raise ValueError(f"data_pct must be in (0, 1], got {self.data_pct}")


@dataclass
class RunConfig:
    output_dir: str | None = option(None, "run directory, resumed when it holds checkpoints/latest.pt "
                                          "(none: runs/pretrain_<preset>)")
    checkpoint: str | None = option(None, "resume from this checkpoint file")
    device: str | None = option(None, "cpu / cuda (none: cuda when available)")
    linear_eval: bool = option(True, "demo data only: close with the linear probe (pretrained vs random init)")
    report: bool = option(True, "close with the visual report (python -m cgns.viz)")


@dataclass
class PretrainConfig:
    model: CGNSConfig = field(default_factory=CGNSConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)


# paper: METHOD.md's settings (ViT-B/16 at 224 px, BERT-base, 768-d, k = 128, 256 tokens, batch 64 per GPU, Adam
# 1e-5, 10 + 20 epochs, fp16): the dataclasses' defaults.
PAPER = PretrainConfig()

# demo: the tiny configuration for 2 CPU cores on the generated world. 64 px crops (4x4 patches) so that ~1,400
# steps fit in about 7 CPU minutes; lr 3e-4 measured best of 1e-4 / 2e-4 / 3e-4 / 5e-4 (5e-4 collapses the
# random-init model to chance, 1e-4 barely leaves it). Local weights 0.1: at 1 the SimSiam term collapses the
# random-init patch tokens. It adds the grounding term (not in METHOD.md; --grounding-weight 0 removes it).
DEMO = PretrainConfig(
    model=CGNSConfig(image_encoder="vit_tiny", image_size=64, embed_dim=128, num_clusters=16, max_length=96,
                     text_hidden_size=128, text_layers=2, text_heads=4, decoder_layers=2, decoder_heads=4,
                     decoder_feedforward=256, local_image_weight=0.1, local_text_weight=0.1,
                     kmeans_reseed_share=0.5, grounding_weight=1.0, grounding_temperature=25.0),
    loop=LoopConfig(batch_size=32, lr=3e-4, stage1_epochs=15, stage2_epochs=2, amp="none", clip_grad=1.0))

PRESETS = {"demo": DEMO, "paper": PAPER}


def with_method(config: PretrainConfig, method: str, preset: str) -> PretrainConfig:
    """The preset `preset` (a PRESETS name) for `method`: for a peer, its objective settings (their embed_dim as
    model.embed_dim) and its preset's loop fields (cgns.engine.methods.PRESETS); for cgns, the preset as it is."""
    if method == "cgns":
        return dataclasses.replace(config, model=dataclasses.replace(config.model, method="cgns", objective={}))
    settings = objective_settings(method, preset)
    model = dataclasses.replace(config.model, method=method, objective=settings, embed_dim=settings["embed_dim"])
    return dataclasses.replace(config, model=model, loop=loop_settings(config.loop, method, preset))


def check_objective(model: CGNSConfig) -> CGNSConfig:
    """model with its objective settings checked against its method's (embed_dim: model.embed_dim's); a clear error
    when they are another method's (a config.json of another method given with --method)."""
    if model.method == "cgns":
        if model.objective:
            raise ValueError(f"--method cgns takes no peer objective settings, got {model.objective} (a config.json "
                             f"of a peer run? start from a preset: --config demo or --config paper)")
        return model
    expected = set(METHOD_PRESETS[model.method]["demo"]["objective"])
    if set(model.objective) != expected:
        raise ValueError(f"--method {model.method}: the objective settings {sorted(model.objective)} are not "
                         f"{model.method}'s ({sorted(expected)}); a config.json of another method cannot switch "
                         f"methods: start from a preset (--config demo or --config paper) with --method {model.method}")
    return dataclasses.replace(model, objective={**model.objective, "embed_dim": model.embed_dim})


def resolve(config: PretrainConfig, preset: str, *, vocab_size: int, pad_token_id: int,
            tokenizer_dir: str) -> PretrainConfig:
    """Fill in what the code derives: the output folder, the tokenizer's vocabulary and padding id, the k-means seed
    (the run's seed), the text positions (at least the report length) and a peer's embed_dim in its objective."""
    model = dataclasses.replace(check_objective(config.model), text_vocab_size=vocab_size, pad_token_id=pad_token_id,
                                tokenizer_dir=tokenizer_dir, kmeans_seed=config.loop.seed,
                                text_max_positions=max(512, config.model.max_length))
    loop = dataclasses.replace(config.loop, data_pct=config.data.data_pct)
    run = config.run
    if run.output_dir is None:
        run = dataclasses.replace(run, output_dir=f"runs/pretrain_{preset}")
    return dataclasses.replace(config, model=model, loop=loop, run=run)
