"""`python -m cgns.bench.throughput [--cpu]`: samples/s and MFU of the pretraining step, and the image loader's
images/s (the run behind scripts/gpu_throughput.sh).

GPU mode: the paper configuration (ViT-B/16 at 224 px + BERT-base at 256 tokens, batch 64, bf16 autocast, fused
Adam, stage 2) at mask ratio 0 and 0.5, each without and with --compile; FLOPs of one step counted with
torch.utils.flop_counter (forward + backward, uncompiled); MFU against the bf16 dense peak (989 TFLOP/s, H100/H200
SXM). CPU mode: the same code on tiny sizes (vit_tiny@64 + a 2-layer BERT-128, batch 8, fp32, no compile), to show
that it runs. The loader row reads the preprocessed cache of the demo MIMIC-CXR copy through the training Dataset
and collate function.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

PEAK_BF16_FLOPS = 989e12


def step_flops(trainer, batch) -> float:
    """FLOPs of one forward + backward of the training step (the optimiser's elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with trainer.autocast():
            losses, _ = trainer.raw(batch, stage=trainer.progress.stage)
        sum(losses.values()).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure_step(config, batch_size: int, steps: int, device, amp: str, compile_towers: bool) -> dict:
    from cgns.bench.pretrain import fake_batch
    from cgns.distributed import DistInfo
    from cgns.engine.pretrain import LoopConfig, Pretrainer
    from cgns.models.cgns import CGNSModel

    torch.manual_seed(0)
    model = CGNSModel(config)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device(device), is_main=True)
    loop = LoopConfig(batch_size=batch_size, lr=1e-5, amp=amp, clip_grad=1.0, progress=False, validate=False,
                      log_every=10**9, compile=compile_towers)
    trainer = Pretrainer(model, train_set=[None] * batch_size, val_set=None, collate_fn=None, cfg=loop, info=info,
                         output_dir=None, model_config=config.to_dict())
    trainer.progress.stage = 2
    batch = fake_batch(batch_size, config.image_size, config.max_length, config.text_vocab_size, device)
    flops = step_flops(trainer, batch) if not compile_towers else None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3 if compile_towers else 1):     # warm-up (compilation happens here)
        trainer._optimizer_step([batch])
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        trainer._optimizer_step([batch])
    sync()
    seconds = (time.perf_counter() - start) / steps
    return {"samples_per_s": batch_size / seconds, "step_ms": seconds * 1e3, "flops_per_step": flops}


def loader_images_per_s(image_size: int, workers: int, batch_size: int, batches: int) -> float:
    from cgns.data.datasets import build, collate

    dataset = build("pretrain", "mimic_cxr", "train", image_size=image_size, augment=True, max_length=256)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         collate_fn=collate("pretrain"), pin_memory=torch.cuda.is_available(),
                                         persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                                         drop_last=True)
    iterator = iter(loader)
    next(iterator)                                   # workers started
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            seen += len(next(iterator)["image"])
        except StopIteration:
            break
    return seen / (time.perf_counter() - start)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (shows that the run works)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting (GPU 20, CPU 3)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (GPU 16, CPU 2)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    from cgns.engine.pretrain_config import DEMO, PAPER

    if args.cpu:
        device, amp, batch, compiles, image_size = "cpu", "none", 8, (False,), DEMO.model.image_size
        config = dataclasses.replace(DEMO.model, text_vocab_size=8000)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU visible: run with --cpu for the tiny CPU mode")
        device, amp, batch, compiles, image_size = "cuda", "bf16", 64, (False, True), PAPER.model.image_size
        config = PAPER.model
    steps = args.steps or (3 if args.cpu else 20)
    rows = []
    for ratio in (0.0, 0.5):
        for compiled in compiles:
            result = measure_step(dataclasses.replace(config, mask_ratio=ratio), batch, steps, device, amp, compiled)
            flops = result["flops_per_step"] or next((r["flops_per_step"] for r in rows
                                                      if r["mask_ratio"] == ratio and r["flops_per_step"]), None)
            mfu = flops * result["samples_per_s"] / batch / PEAK_BF16_FLOPS if flops and device == "cuda" else None
            rows.append({"mask_ratio": ratio, "compile": compiled, **result, "flops_per_step": flops, "mfu": mfu})
            print(f"step  R={ratio:<4} compile={str(compiled):<5} {result['samples_per_s']:9.1f} samples/s  "
                  f"{result['step_ms']:8.1f} ms/step  {flops / 1e12 if flops else float('nan'):7.3f} TFLOP/step  "
                  f"MFU {'-' if mfu is None else f'{100 * mfu:.1f}%'}", flush=True)
    workers = args.workers if args.workers is not None else (2 if args.cpu else 16)
    images = loader_images_per_s(image_size, workers, batch, batches=10 if args.cpu else 50)
    rows.append({"loader_images_per_s": images, "workers": workers})
    print(f"loader {workers} workers: {images:9.1f} images/s ({image_size} px crops from the cache)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
