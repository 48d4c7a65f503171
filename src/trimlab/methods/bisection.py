"""Meeting a budget by bisection on one knob whose measured ratio is monotone in it (token pruning's thresholds, densities)."""

from __future__ import annotations

from collections.abc import Callable

BISECTION_STEPS = 14
"""Bisection steps: the knob lands within 2⁻¹⁴ of its range."""


def bisect(measure: Callable[[float], float], target: float, low: float, high: float) -> float:
    """The knob in [low, high] whose measured ratio is closest to ``target``; the ratio falls as the knob rises."""
    best, best_gap = low, float("inf")
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        ratio = measure(mid)
        if abs(ratio - target) < best_gap:
            best, best_gap = mid, abs(ratio - target)
        if ratio > target:
            low = mid
        else:
            high = mid
    return best
