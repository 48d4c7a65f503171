"""Meeting a budget by bisection on one knob whose measured ratio is monotone in it (token pruning's thresholds, densities)."""

from __future__ import annotations

from collections.abc import Callable

BISECTION_STEPS = 14
"""Bisection steps: the knob lands within 2⁻¹⁴ of its range."""


def bisect(measure: Callable[[float], float], target: float, low: float, high: float) -> float:
    """The knob in [low, high] whose measured ratio is closest to ``target`` without exceeding it.

    The ratio must fall as the knob rises. A budget is a ceiling, so among the
    knobs tried the closest one at or under ``target`` wins; only if none is
    under does the closest one above it.
    """
    under, over = (None, float("inf")), (high, float("inf"))
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        ratio = measure(mid)
        gap = abs(ratio - target)
        if ratio <= target and gap < under[1]:
            under = (mid, gap)
        elif ratio > target and gap <= over[1]:  # ties: the later, larger knob prunes more
            over = (mid, gap)
        if ratio > target:
            low = mid
        else:
            high = mid
    return under[0] if under[0] is not None else over[0]
