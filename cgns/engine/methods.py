"""The pretraining objectives that `train_pretrain.py --method` is to select, and each peer's presets, as data.

`cgns` is the CGNSModel objective (cgns/models/cgns.py, presets in cgns/engine/pretrain_config.py). The peers share
its encoders, data and loop: a peer preset names only the objective's settings and the loop fields it changes.
The encoder settings of a peer's demo / paper preset are those of CM-CGNS's demo / paper preset (vit_tiny at 64 px
with a 2-layer 128-d BERT and 96 tokens; ViT-B/16 at 224 px with a 768-d BERT and 256 tokens), so that the
comparison changes the objective only. Hyper-parameters and their sources: docs/METHODS.md.

Demo sizing: every peer trains CM-CGNS's demo batch (32), learning rate (3e-4), clipping (1.0) and number of
optimiser steps (15 + 2 epochs there, 17 epochs of a single stage here: the peers have no stage 2), with 128-d
embeddings as CM-CGNS's demo has. Measured forward + backward + Adam step on one demo batch (32 pairs, 2 threads,
this machine's CPU): CM-CGNS 0.35 s (stage 1) / 0.40 s (stage 2), ConVIRT 0.23 s, GLoRIA 0.25 s, MGCA 0.25 s; so
at equal steps a peer's demo takes about 65-72 % of CM-CGNS's CPU time. The paper presets keep each paper's batch,
learning rate, weight decay, clipping and epochs where it states them (the optimiser stays the loop's Adam: MGCA's
AdamW and schedule are not copied).
"""
from __future__ import annotations

import dataclasses

import torch.nn as nn

from cgns.losses.convirt import ConVIRTObjective
from cgns.losses.gloria import GLoRIAObjective
from cgns.losses.mgca import MGCAObjective

OBJECTIVES = {"convirt": ConVIRTObjective, "gloria": GLoRIAObjective, "mgca": MGCAObjective}
METHODS = ("cgns",) + tuple(OBJECTIVES)

_DEMO_LOOP = {"stage1_epochs": 17, "stage2_epochs": 0}    # batch, lr, clipping: CM-CGNS's demo loop as it is

PRESETS = {
    "convirt": {
        "demo": {"objective": {"embed_dim": 128, "temperature": 0.1, "image_to_report_weight": 0.75,
                               "sample_sentence": True},
                 "loop": _DEMO_LOOP},
        # ConVIRT (arXiv 2010.00747): d 512, tau 0.1, lambda 0.75, one sentence per report (t_u), batch 32,
        # Adam 1e-4, weight decay 1e-6
        "paper": {"objective": {"embed_dim": 512, "temperature": 0.1, "image_to_report_weight": 0.75,
                                "sample_sentence": True},
                  "loop": {"batch_size": 32, "lr": 1e-4, "weight_decay": 1e-6, "stage2_epochs": 0}},
    },
    "gloria": {
        "demo": {"objective": {"embed_dim": 128, "attention_temperature": 4.0, "word_temperature": 5.0,
                               "logit_temperature": 10.0, "global_weight": 1.0, "local_weight": 1.0},
                 "loop": _DEMO_LOOP},
        # marshuang80/gloria configs/chexpert_pretrain_config.yaml: t 4 / 5 / 10, weights 1 / 1, 768-d, batch 48,
        # Adam 5e-5, weight decay 1e-6, gradient clipping 0.25, 50 epochs
        "paper": {"objective": {"embed_dim": 768, "attention_temperature": 4.0, "word_temperature": 5.0,
                                "logit_temperature": 10.0, "global_weight": 1.0, "local_weight": 1.0},
                  "loop": {"batch_size": 48, "lr": 5e-5, "weight_decay": 1e-6, "clip_grad": 0.25,
                           "stage1_epochs": 50, "stage2_epochs": 0}},
    },
    "mgca": {
        "demo": {"objective": {"embed_dim": 128, "hidden_dim": 256, "num_prototypes": 500,
                               "instance_temperature": 0.07, "local_temperature": 0.1, "prototype_temperature": 0.2,
                               "sinkhorn_epsilon": 0.05, "sinkhorn_iterations": 3, "freeze_prototype_epochs": 1,
                               "instance_weight": 1.0, "local_weight": 1.0, "prototype_weight": 1.0},
                 "loop": _DEMO_LOOP},
        # HKU-MedAI/MGCA mgca/models/mgca/mgca_module.py as its CLI runs it: 128-d, hidden 2048, 500 prototypes,
        # tau 0.07 / 0.1 / 0.2, eps 0.05, 3 iterations, frozen 1 epoch, lambdas 1 / 1 / 1, batch 72, 2e-5,
        # weight decay 0.05, 50 epochs
        "paper": {"objective": {"embed_dim": 128, "hidden_dim": 2048, "num_prototypes": 500,
                                "instance_temperature": 0.07, "local_temperature": 0.1, "prototype_temperature": 0.2,
                                "sinkhorn_epsilon": 0.05, "sinkhorn_iterations": 3, "freeze_prototype_epochs": 1,
                                "instance_weight": 1.0, "local_weight": 1.0, "prototype_weight": 1.0},
                  "loop": {"batch_size": 72, "lr": 2e-5, "weight_decay": 0.05, "stage1_epochs": 50,
                           "stage2_epochs": 0}},
    },
}


def objective_settings(method: str, preset: str, **overrides) -> dict:
    """The keyword arguments of `method`'s objective under `preset` ('demo' / 'paper'), overrides applied."""
    if method not in PRESETS:
        raise ValueError(f"no peer objective {method!r}; peers are {', '.join(PRESETS)} ('cgns' is CGNSModel)")
    if preset not in PRESETS[method]:
        raise ValueError(f"{method} has no preset {preset!r}; presets are {', '.join(PRESETS[method])}")
    settings = dict(PRESETS[method][preset]["objective"])
    unknown = set(overrides) - set(settings)
    if unknown:
        raise ValueError(f"{method}: unknown objective setting(s) {sorted(unknown)}; known: {sorted(settings)}")
    return {**settings, **overrides}


def loop_settings(loop, method: str, preset: str):
    """A LoopConfig (cgns.engine.pretrain) with `method`'s preset loop fields applied."""
    return dataclasses.replace(loop, **PRESETS[method][preset]["loop"])


def build_objective(method: str, image_encoder: str, image_dim: int, text_dim: int, preset: str = "demo",
                    **overrides) -> nn.Module:
    """The objective module of a peer method on encoders of widths image_dim (global and local) and text_dim.
    MGCA normalises the patch-side context only for a ResNet (as its code does), so the encoder's name is needed."""
    settings = objective_settings(method, preset, **overrides)
    if method == "mgca":
        settings["normalize_patch_context"] = image_encoder == "resnet50"
    return OBJECTIVES[method](image_dim, text_dim, **settings)
