"""Learning rate as a pure function of the optimiser step within a stage (rebuilt for each stage)."""
from __future__ import annotations

import math

WARMUP_START_LR = 1e-7


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int,
          start_lr: float = WARMUP_START_LR, final_lr: float = 0.0) -> float:
    """Per-step linear warm-up from `start_lr` to `base_lr`, then cosine from `base_lr` to `final_lr`.

    step: optimiser steps already taken in this stage (0 = the first update). warmup_steps: steps of the warm-up
    (one epoch by default). total_steps: steps in the whole stage; at step >= total_steps the rate is final_lr.
    """
    if step < 0:
        raise ValueError(f"lr_at: step must be >= 0, got {step}")
    if total_steps <= 0:
        raise ValueError(f"lr_at: total_steps must be > 0, got {total_steps}")
    warmup_steps = max(0, min(warmup_steps, total_steps))
    if step < warmup_steps:
        return start_lr + (base_lr - start_lr) * step / warmup_steps
    if step >= total_steps:
        return final_lr
    decay_steps = total_steps - warmup_steps
    progress = (step - warmup_steps) / decay_steps
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
