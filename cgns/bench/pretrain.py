"""Pretraining throughput: optimiser steps/s and samples/s of the engine's training step (forward, backward,
clipping, Adam) for the tiny demo configuration and the paper's base configuration (ViT-B/16 + BERT-base).

On CPU the base configuration runs a single small step; on a GPU it runs batch 64 with fp16 autocast and also
reports peak memory. Inputs are random tensors shaped like real batches (no data loading: see the loader bench).
"""
from __future__ import annotations

import dataclasses
import time

import torch

from cgns.distributed import DistInfo
from cgns.engine.pretrain import LoopConfig, Pretrainer

SENTENCE_TOKENS = 10


def fake_batch(batch_size: int, image_size: int, length: int, vocab: int, device) -> dict:
    """Random pairs: images [B,3,S,S], reports of (length-2)//10 sentences of 10 tokens."""
    from cgns.data.datasets import sentence_layout

    generator = torch.Generator().manual_seed(0)
    sentence_index = torch.zeros(batch_size, length, dtype=torch.long)
    body = torch.arange(length - 2) // SENTENCE_TOKENS + 1
    sentence_index[:, 1:length - 1] = body
    input_ids = torch.randint(5, vocab, (batch_size, length), generator=generator)
    layout = sentence_layout(sentence_index, input_ids)   # as the collate function adds it
    return {"image": torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device),
            "input_ids": input_ids.to(device),
            "attention_mask": torch.ones(batch_size, length, dtype=torch.long, device=device),
            "sentence_index": sentence_index.to(device), "index": torch.arange(batch_size, device=device),
            **layout, "sentence_rows": layout["sentence_rows"].to(device)}


def measure(config, batch_size: int, steps: int, warmup: int, device, amp: str, stage: int = 2) -> dict:
    """Time `steps` optimiser steps of the engine after `warmup` untimed ones."""
    from cgns.models.cgns import CGNSModel

    torch.manual_seed(0)
    model = CGNSModel(config)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device(device), is_main=True)
    loop = LoopConfig(batch_size=batch_size, lr=1e-5, amp=amp, clip_grad=1.0, progress=False, validate=False,
                      log_every=10**9)
    trainer = Pretrainer(model, train_set=[None] * batch_size, val_set=None, collate_fn=None, cfg=loop, info=info,
                         output_dir=None, model_config=config.to_dict())
    trainer.progress.stage = stage
    batch = fake_batch(batch_size, config.image_size, config.max_length, config.text_vocab_size, device)
    sync = torch.cuda.synchronize if info.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        trainer._optimizer_step([batch])
    sync()
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        trainer._optimizer_step([batch])
    sync()
    seconds = (time.perf_counter() - start) / steps
    out = {"steps_per_s": 1.0 / seconds, "samples_per_s": batch_size / seconds}
    if info.device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _rows(name: str, result: dict, note: str) -> list[dict]:
    rows = [{"section": "pretrain", "name": f"{name} steps/s", "ours": result["steps_per_s"], "baseline": None,
             "unit": "steps/s", "ratio": None, "note": note},
            {"section": "pretrain", "name": f"{name} samples/s", "ours": result["samples_per_s"], "baseline": None,
             "unit": "samples/s", "ratio": None, "note": note}]
    if "peak_memory_gib" in result:
        rows.append({"section": "pretrain", "name": f"{name} peak memory", "ours": result["peak_memory_gib"],
                     "baseline": None, "unit": "GiB", "ratio": None, "note": note})
    return rows


def run(quick: bool = False) -> list[dict]:
    from cgns.engine.pretrain_config import DEMO, PAPER

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    rows = []
    tiny = dataclasses.replace(DEMO.model, text_vocab_size=8000)
    tiny_batch = 64 if cuda else 32
    result = measure(tiny, tiny_batch, steps=3 if quick else 10, warmup=1 if quick else 2, device=device,
                     amp="fp16" if cuda else "none")
    rows += _rows("demo (vit_tiny@64 + 2-layer BERT-128, stage 2)", result,
                  f"batch {tiny_batch}, {device}{', fp16' if cuda else ', fp32'}, {torch.get_num_threads()} threads")
    base = PAPER.model
    if cuda:
        result = measure(base, 64, steps=5 if quick else 20, warmup=2, device=device, amp="fp16")
        note = "batch 64 per GPU (paper), fp16 autocast + GradScaler, 224 px, 256 tokens"
    else:
        result = measure(base, 2, steps=1, warmup=0, device=device, amp="none")
        note = "batch 2, a single step without warm-up on CPU (indicative only), 224 px, 256 tokens"
    rows += _rows("base (ViT-B/16@224 + BERT-base, stage 2)", result, note)
    return rows
