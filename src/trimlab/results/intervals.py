"""Intervals that decide whether a difference is real: paired bootstrap over test examples, Student t over seeds, both
pooled, and verdicts.

A mean over seeds hides how much a small test set alone can move a number.
The paired bootstrap resamples the test examples once for both models, so
what they share (the hard examples) cancels and only their difference varies;
the seed interval says how far another set of seeds (another calibration
sample, another training order) could move the mean; :func:`pooled_interval`
covers both.
Numpy only: no scipy in the results path.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

from trimlab.results.predictions import score

RESAMPLE_ELEMENTS = 2**22
"""Resampled predictions held in memory at once (per model); larger bootstraps run in chunks of this size."""


def paired_bootstrap(
    labels: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """``metric(b) - metric(a)`` and its percentile interval, both models scored on the same resampled examples.

    One-dimensional arrays are one run's test split. Two-dimensional arrays
    (seeds × examples) are the seeds of one cell on the same test split: each
    resample draws one set of example indices for every seed, and the statistic
    is the delta averaged over the seeds, so the interval is the test set's
    sampling noise around the seed-averaged delta (the seed spread is
    :func:`seed_interval`'s part).
    """
    labels, a, b = np.atleast_2d(labels), np.atleast_2d(a), np.atleast_2d(b)
    if not labels.shape == a.shape == b.shape or labels.shape[1] == 0:
        raise ValueError(f"labels {labels.shape}, a {a.shape} and b {b.shape} must have one non-empty shape")
    seeds, examples = labels.shape
    delta = float(np.mean(score(metric, labels, b) - score(metric, labels, a)))
    rng = np.random.default_rng(seed)
    chunk = max(1, RESAMPLE_ELEMENTS // (seeds * examples))
    deltas = []
    for start in range(0, n, chunk):
        index = rng.integers(0, examples, size=(min(chunk, n - start), examples))
        picked = labels[:, index]  # seeds × resamples × examples
        deltas.append(np.mean(score(metric, picked, b[:, index]) - score(metric, picked, a[:, index]), axis=0))
    low, high = np.nanpercentile(np.concatenate(deltas), [50 * (1 - level), 50 * (1 + level)])
    return delta, float(low), float(high)


def metric_interval(
    labels: np.ndarray, preds: np.ndarray, metric: str, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """One model's metric on one test split and its percentile bootstrap interval (the test set's sampling noise)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.shape != preds.shape or labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} must be one non-empty vector each")
    index = np.random.default_rng(seed).integers(0, len(labels), size=(n, len(labels)))
    low, high = np.nanpercentile(score(metric, labels[index], preds[index]), [50 * (1 - level), 50 * (1 + level)])
    return float(score(metric, labels, preds)), float(low), float(high)


def seed_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean over seeds and its Student-t interval; one seed gives ``(value, nan, nan)``: no spread to go by."""
    if not values:
        raise ValueError("seed_interval needs at least one value")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t_quantile((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def pooled_interval(
    delta: float, low: float, high: float, per_seed: Sequence[float], level: float = 0.95
) -> tuple[float, float, float]:
    """``delta`` with its test-set interval ``[low, high]`` widened by the spread of its per-seed values.

    The two noises are independent (the test examples are fixed by the split seed, the run seed draws the
    calibration sample and the training order), so their half-widths add in quadrature, on each side: the
    test part from the paired bootstrap, the seed part Student t over ``per_seed``. One seed leaves the
    test interval as it is: there is no spread to go by.
    """
    _, seed_low, seed_high = seed_interval(per_seed, level)
    if math.isnan(seed_low):
        return delta, low, high
    seed_half = (seed_high - seed_low) / 2
    return delta, delta - math.hypot(delta - low, seed_half), delta + math.hypot(high - delta, seed_half)


def includes_zero(low: float, high: float) -> bool:
    """The interval of a difference includes 0: the data do not tell the two sides apart."""
    return low <= 0 <= high


def verdict(low: float, high: float, threshold: float, direction: str) -> str:
    """``met``, ``not met`` or ``undecided`` for the claim ``quantity <direction> threshold`` given the quantity's interval.

    Met when the whole interval satisfies the claim, not met when none of it
    does, undecided otherwise (or when there is no interval). "The accuracy
    drops by at most 1 point" is ``verdict(low, high, -1.0, ">=")`` on the
    interval of compressed − dense.
    """
    if direction not in (">=", "<="):
        raise ValueError(f"direction must be '>=' or '<=', not {direction!r}")
    if math.isnan(low) or math.isnan(high):
        return "undecided"
    if direction == "<=":
        low, high, threshold = -high, -low, -threshold
    if low >= threshold:
        return "met"
    if high < threshold:
        return "not met"
    return "undecided"


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p ≥ 0.5) of Student's t with ``df`` degrees of freedom, by bisection on its closed-form CDF."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1 (got p={p}, df={df})")
    central = 2 * p - 1
    low, high = 0.0, 1.0
    while _central_mass(high, df) < central:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if _central_mass(middle, df) < central else (low, middle)
    return (low + high) / 2


def _central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for integer ``df`` (Abramowitz & Stegun 26.7.3–4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term = total = 1.0
        for j in range(1, df // 2):
            term *= c2 * (2 * j - 1) / (2 * j)
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = math.cos(theta)
    for j in range(1, (df - 1) // 2):
        term *= c2 * (2 * j) / (2 * j + 1)
        total += term
    return 2 / math.pi * (theta + s * total)
