"""Mean ± standard deviation over pretraining seeds, and the paired difference with its 95% t-interval.

Student's t quantile without scipy: for an integer number of degrees of freedom the two-sided probability
A(t | df) = P(|T| <= t) has a finite closed form (Abramowitz & Stegun 26.7.3 / 26.7.4), inverted by bisection.
"""
from __future__ import annotations

import math
import statistics


def t_two_sided_probability(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with `df` (a positive integer) degrees of freedom, t >= 0."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2:                          # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, series = 1.0, 0.0
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    term, series = 1.0, 0.0             # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, df // 2 + 1):
        series += term
        term *= cos2 * (2 * k - 1) / (2 * k)
    return math.sin(theta) * series


def t_quantile(p: float, df: int) -> float:
    """The p quantile of Student's t (0.5 < p < 1) with integer df >= 1, to ~1e-12."""
    if not (0.5 < p < 1) or df < 1 or int(df) != df:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and an integer df >= 1, got p={p}, df={df}")
    target, low, high = 2 * p - 1, 0.0, 1.0
    while t_two_sided_probability(high, int(df)) < target:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if t_two_sided_probability(middle, int(df)) < target:
            low = middle
        else:
            high = middle
        if high - low < 1e-13 * high:
            break
    return (low + high) / 2


def mean_std(values: list[float | None]) -> dict:
    """{"mean", "std" (sample; None with one value), "n"} over the defined values; mean None when none is."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return {"mean": statistics.fmean(kept) if kept else None,
            "std": statistics.stdev(kept) if len(kept) > 1 else None, "n": len(kept)}


def paired_difference(values: dict, reference: dict, confidence: float = 0.95) -> dict:
    """values, reference: {seed: value or None}. The differences value - reference over the seeds where both are
    defined -> {"mean", "std", "low", "high", "n", "seeds"}; low / high (the t-interval mean ± t_{(1+c)/2, n-1}
    std / sqrt(n)) are None with fewer than two pairs."""
    seeds = [s for s in values if s in reference and values[s] is not None and reference[s] is not None
             and not math.isnan(values[s]) and not math.isnan(reference[s])]
    differences = [values[s] - reference[s] for s in seeds]
    summary = mean_std(differences)
    low = high = None
    if len(differences) > 1:
        half = t_quantile((1 + confidence) / 2, len(differences) - 1) * summary["std"] / math.sqrt(len(differences))
        low, high = summary["mean"] - half, summary["mean"] + half
    return {**summary, "low": low, "high": high, "seeds": seeds}
