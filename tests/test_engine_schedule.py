import math

import pytest

from cgns.engine.schedule import WARMUP_START_LR, lr_at


def test_warmup_is_linear_from_start_lr_per_step():
    kw = dict(base_lr=1e-3, warmup_steps=10, total_steps=100)
    assert lr_at(0, **kw) == pytest.approx(WARMUP_START_LR)
    assert lr_at(5, **kw) == pytest.approx(WARMUP_START_LR + (1e-3 - WARMUP_START_LR) * 0.5)
    steps = [lr_at(s, **kw) for s in range(11)]
    diffs = [b - a for a, b in zip(steps, steps[1:])]
    assert all(d == pytest.approx(diffs[0]) for d in diffs)  # equal increments: linear, per step
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # the peak right after warm-up


def test_cosine_after_warmup_reaches_zero():
    kw = dict(base_lr=2e-4, warmup_steps=10, total_steps=110)
    assert lr_at(60, **kw) == pytest.approx(1e-4)  # half-way through the decay: half the peak
    assert lr_at(35, **kw) == pytest.approx(2e-4 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(109, **kw) > 0
    assert lr_at(110, **kw) == 0.0 and lr_at(500, **kw) == 0.0
    decay = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_no_warmup_and_bad_input():
    assert lr_at(0, base_lr=1.0, warmup_steps=0, total_steps=4) == pytest.approx(1.0)
    # warm-up longer than the stage is capped at the stage length
    assert lr_at(3, base_lr=1.0, warmup_steps=10, total_steps=4) < 1.0
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, base_lr=1.0, warmup_steps=1, total_steps=4)
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(0, base_lr=1.0, warmup_steps=1, total_steps=0)
