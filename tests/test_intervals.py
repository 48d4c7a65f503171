"""Intervals with known answers: the paired bootstrap, Student t over seeds, the two pooled, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trimlab.results.intervals import paired_bootstrap, pooled_interval, seed_interval, t_quantile, verdict

T_975 = {1: 12.706204736174694, 2: 4.302652729749462, 3: 3.1824463052837078, 4: 2.7764451051977934, 30: 2.0422724563012378}
"""Student t 0.975 quantiles (scipy.stats.t.ppf)."""


def shifted(n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a (right on half of ``n``) and b (right on the same half and on ``k`` more)."""
    labels = np.zeros(n, dtype=np.int64)
    a = np.ones(n, dtype=np.int64)
    a[: n // 2] = 0
    b = a.copy()
    b[n // 2 : n // 2 + k] = 0
    return labels, a, b


def test_identical_predictions_differ_by_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    labels, preds = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert paired_bootstrap(labels, preds, preds.copy(), "accuracy") == (0.0, 0.0, 0.0)


def test_a_fixed_shift_is_the_delta_and_its_interval_narrows_with_more_examples() -> None:
    small = paired_bootstrap(*shifted(200, 20), "accuracy")
    large = paired_bootstrap(*shifted(2000, 200), "accuracy")
    for delta, low, high in (small, large):
        assert delta == pytest.approx(0.1)
        assert low < delta < high
    assert large[2] - large[1] < (small[2] - small[1]) / 2  # about 1/sqrt(10) as wide
    assert small[1] > 0  # 20 of 200 examples, all one way: decided


def test_the_bootstrap_is_seeded_and_its_interval_widens_with_the_level() -> None:
    data = shifted(100, 5)
    assert paired_bootstrap(*data, "accuracy", seed=3) == paired_bootstrap(*data, "accuracy", seed=3)
    _, low90, high90 = paired_bootstrap(*data, "accuracy", level=0.9)
    _, low99, high99 = paired_bootstrap(*data, "accuracy", level=0.99)
    assert low99 <= low90 and high90 <= high99


def test_seeds_on_one_test_split_pool_into_the_mean_delta() -> None:
    one = shifted(400, 40)
    other = shifted(400, 20)
    pooled = paired_bootstrap(*(np.stack(parts) for parts in zip(one, other)), "accuracy")
    assert pooled[0] == pytest.approx((0.1 + 0.05) / 2)
    assert pooled[1] < pooled[0] < pooled[2]
    with pytest.raises(ValueError, match="one non-empty shape"):
        paired_bootstrap(one[0], one[1], other[2][:-1], "accuracy")


def test_the_pooled_interval_adds_the_test_and_seed_half_widths_in_quadrature() -> None:
    seed_half = T_975[2] * 1.0 / math.sqrt(3)  # per-seed values 1, 2, 3: stdev 1
    delta, low, high = pooled_interval(2.0, 1.0, 4.0, [1.0, 2.0, 3.0])
    assert delta == 2.0
    assert low == pytest.approx(2.0 - math.hypot(1.0, seed_half))  # each side keeps its own test half-width
    assert high == pytest.approx(2.0 + math.hypot(2.0, seed_half))
    assert pooled_interval(2.0, 1.0, 4.0, [2.0, 2.0, 2.0]) == (2.0, 1.0, 4.0)  # seeds that agree add nothing
    assert pooled_interval(2.0, 1.0, 4.0, [5.0]) == (2.0, 1.0, 4.0)  # one seed: no spread to go by


def test_seed_interval_is_student_t() -> None:
    mean, low, high = seed_interval([1.0, 2.0, 3.0])
    half = T_975[2] * 1.0 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert seed_interval([0.5])[0] == 0.5 and all(math.isnan(v) for v in seed_interval([0.5])[1:])
    with pytest.raises(ValueError):
        seed_interval([])


@pytest.mark.parametrize("df", sorted(T_975))
def test_t_quantile_matches_the_tables(df: int) -> None:
    assert t_quantile(0.975, df) == pytest.approx(T_975[df], rel=1e-9)


@pytest.mark.parametrize(
    "low,high,threshold,direction,expected",
    [
        (-0.8, -0.2, -1.0, ">=", "met"),  # drop of at most 1 point: the whole interval is above -1
        (-1.6, -1.2, -1.0, ">=", "not met"),
        (-1.4, -0.2, -1.0, ">=", "undecided"),
        (0.1, 0.4, 0.5, "<=", "met"),
        (0.6, 0.9, 0.5, "<=", "not met"),
        (0.4, 0.9, 0.5, "<=", "undecided"),
        (math.nan, math.nan, 0.0, ">=", "undecided"),
    ],
)
def test_verdict(low: float, high: float, threshold: float, direction: str, expected: str) -> None:
    assert verdict(low, high, threshold, direction) == expected


def test_verdict_refuses_an_unknown_direction() -> None:
    with pytest.raises(ValueError, match="direction"):
        verdict(0.0, 1.0, 0.5, ">")


def test_metric_interval_of_a_known_accuracy_contains_it_and_narrows_with_more_examples() -> None:
    from trimlab.results.intervals import metric_interval

    def interval(n: int) -> tuple[float, float, float]:
        labels = np.zeros(n, dtype=np.int64)
        return metric_interval(labels, np.where(np.arange(n) < 0.8 * n, 0, 1), "accuracy")

    value, low, high = interval(100)
    assert value == pytest.approx(0.8) and low < 0.8 < high
    assert 0.7 < low and high < 0.9  # binomial: ±1.96·0.04
    _, low_big, high_big = interval(10_000)
    assert high_big - low_big < (high - low) / 5
